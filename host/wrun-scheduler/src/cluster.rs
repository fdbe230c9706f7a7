//! `Cluster`, the bootstrap capability: it hands out sessions (a client's,
//! or a worker's for the holder of the cluster secret) and stops the
//! cluster for the holder of the secret.

use std::collections::HashMap;
use std::time::Instant;

use capnp::capability::Rc as CapRc;
use tracing::{info, warn};
use wrun_core::{ClientId, WorkerId};
use wrun_proto::failed;
use wrun_proto::wrun_capnp::cluster;

use crate::client_session::ClientSessionImpl;
use crate::encode::{flush, spawn_call};
use crate::state::{ClientConn, Shared, WorkerConn};
use crate::tenants::{OPERATOR, OPERATOR_ID, same_secret};
use crate::worker_session::WorkerSessionImpl;

/// The bootstrap capability of one connection (so that what it does is
/// logged with where it came from).
pub(crate) struct ClusterImpl {
    pub(crate) shared: Shared,
    pub(crate) peer: std::net::SocketAddr,
    /// Set once the connection has a session: the handshake time-out no
    /// longer applies.
    pub(crate) opened: std::rc::Rc<std::cell::Cell<bool>>,
    /// What the connection has written, for backpressure on big answers.
    pub(crate) meter: std::rc::Rc<wrun_proto::WriteMeter>,
}

fn wrong_secret() -> capnp::Error {
    capnp::Error::failed("wrong cluster secret".to_owned())
}

/// The one answer to a token that opens nothing, whether no tenant has it
/// or it is wrong: no oracle for which tenants exist.
fn refused_token() -> capnp::Error {
    capnp::Error::failed(
        "the scheduler refused the token: it is not a valid token of this cluster".to_owned(),
    )
}

impl ClusterImpl {
    /// Answers `connectClient` with the session (and, for a new one, the
    /// ticket that resumes it after a restart).
    async fn hand_out_session(
        &self,
        client: ClientId,
        ticket_secret: Option<String>,
        mut results: cluster::ConnectClientResults,
    ) -> Result<(), capnp::Error> {
        let (deferred, journaled) = {
            let state = self.shared.borrow();
            (state.deferred.clone(), state.journaled.is_some())
        };
        self.opened.set(true);
        let mut r = results.get();
        r.set_journaled(journaled);
        if let Some(secret) = ticket_secret {
            let mut ticket = r.reborrow().init_ticket();
            ticket.set_id(client.0);
            ticket.set_secret(secret.as_bytes());
        }
        r.set_session(capnp_rpc::new_client(ClientSessionImpl {
            shared: self.shared.clone(),
            client,
            deferred,
            meter: self.meter.clone(),
            in_flight: std::cell::Cell::new(0),
        }));
        Ok(())
    }
}

impl cluster::Server for ClusterImpl {
    async fn shutdown(
        self: CapRc<Self>,
        params: cluster::ShutdownParams,
        _: cluster::ShutdownResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let mut state = self.shared.borrow_mut();
        if !same_secret(params.get_secret()?.as_bytes(), state.secret.as_bytes()) {
            warn!(target: "wrun::audit", peer = %self.peer, "a shutdown request presented a wrong cluster secret; refused");
            return Err(wrong_secret());
        }
        info!(target: "wrun::audit", peer = %self.peer, "shutdown requested with the cluster secret");
        if let Some(shutdown) = state.shutdown.take() {
            let _ = shutdown.send(params.get_exit_code());
        }
        Ok(())
    }

    async fn info(
        self: CapRc<Self>,
        _: cluster::InfoParams,
        mut results: cluster::InfoResults,
    ) -> Result<(), capnp::Error> {
        let workers = self.shared.borrow().workers.len() as u32;
        let mut r = results.get();
        r.set_protocol_version(wrun_proto::PROTOCOL_VERSION);
        r.set_workers(workers);
        Ok(())
    }

    async fn connect_client(
        self: CapRc<Self>,
        params: cluster::ConnectClientParams,
        results: cluster::ConnectClientResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let token = params.get_token()?.as_bytes();
        let listener = params.get_listener()?;
        let (tenant, name) = {
            let state = self.shared.borrow();
            if same_secret(token, state.secret.as_bytes()) {
                (OPERATOR_ID, OPERATOR.to_owned())
            } else {
                match std::str::from_utf8(token)
                    .ok()
                    .and_then(|t| state.tenants.authenticate(t))
                {
                    Some(t) => (t.id, t.name.clone()),
                    None => {
                        warn!(target: "wrun::audit", peer = %self.peer, "a client presented a token that opens nothing; refused");
                        return Err(refused_token());
                    }
                }
            }
        };
        let resume = params.get_resume()?;
        if resume.get_id() != 0 {
            let client = ClientId(resume.get_id());
            let resumed = self.shared.borrow_mut().resume_session(
                client,
                tenant,
                resume.get_secret()?,
                listener,
            );
            if let Err(why) = resumed {
                warn!(target: "wrun::audit", peer = %self.peer, tenant = %name, session = client.0, "a client could not resume its session: {why}");
                return Err(failed(why));
            }
            info!(target: "wrun::audit", peer = %self.peer, tenant = %name, session = client.0, "client session resumed after a restart");
            flush(&self.shared);
            return self.hand_out_session(client, None, results).await;
        }
        let (client, secret, durable) = {
            let mut state = self.shared.borrow_mut();
            let client = ClientId(state.next_id().map_err(|e| failed(e.to_string()))?);
            let secret = wrun_proto::new_secret();
            let ticket_hash = crate::tenants::hash_token(&secret);
            state.clients.insert(
                client,
                ClientConn {
                    tenant,
                    listener: Some(listener),
                    keys: HashMap::new(),
                    ticket_hash,
                    orphaned_until: None,
                    resumed: false,
                    events: Default::default(),
                },
            );
            state.journal(|state| {
                crate::recovery::session_record(client, state.tenants.name_of(tenant), &ticket_hash)
            });
            (client, secret, state.journal_hand_over())
        };
        if let Some(durable) = durable {
            durable.await.map_err(|e| failed(e.to_string()))?;
        }
        info!(target: "wrun::audit", peer = %self.peer, tenant = %name, session = client.0, "client session opened");
        self.hand_out_session(client, Some(secret), results).await
    }

    async fn register_worker(
        self: CapRc<Self>,
        params: cluster::RegisterWorkerParams,
        mut results: cluster::RegisterWorkerResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let mut state = self.shared.borrow_mut();
        if !same_secret(params.get_secret()?.as_bytes(), state.secret.as_bytes()) {
            warn!(target: "wrun::audit", peer = %self.peer, "a worker presented a wrong cluster secret; refused");
            return Err(wrong_secret());
        }
        let info = params.get_info()?;
        let worker = WorkerId(state.next_id().map_err(|e| failed(e.to_string()))?);
        let name = info.get_name()?.to_str()?.to_owned();
        let conn = WorkerConn {
            control: params.get_control()?,
            label: crate::task_stream::worker_label(&name, worker).into(),
            name,
            threads: info.get_threads().max(1),
            memory_bytes: info.get_memory_bytes(),
            peer_address: info.get_peer_address()?.to_str()?.to_owned(),
            pid: info.get_pid(),
            slurm_job_id: info.get_slurm_job_id()?.to_str()?.to_owned(),
            end_time_ms: info.get_end_time_ms(),
            peer_certificate: info.get_peer_certificate()?.to_vec(),
            held_bytes: 0,
            spilled_bytes: 0,
        };
        info!(target: "wrun::audit", peer = %self.peer, %worker, name = %conn.name, threads = conn.threads, "worker joined");
        self.opened.set(true);
        let threads = conn.threads;
        if state.shutting_down {
            spawn_call(
                format!("shutdown of {worker}"),
                conn.control.shutdown_request().send().promise,
            );
        }
        state.workers.insert(worker, conn);
        let state_ref = &mut *state;
        state_ref
            .core
            .add_worker(worker, threads, Instant::now(), &mut state_ref.outbox);
        let held = crate::worker_session::held_results(params.get_held()?);
        if !held.is_empty() {
            info!(%worker, results = held.len(), "the worker rejoined with results it kept");
            state.results_held(worker, &held);
        }
        let deferred = state.deferred.clone();
        let journaled = state.journaled.is_some();
        drop(state);
        let mut r = results.get();
        r.set_journaled(journaled);
        r.set_session(capnp_rpc::new_client(WorkerSessionImpl {
            shared: self.shared.clone(),
            worker,
            deferred,
        }));
        // Queued tasks may have gone to the new worker.
        flush(&self.shared);
        Ok(())
    }
}
