//! Peers: this worker serves its results to other workers on its peer
//! address, and fetches inputs (and copies from retiring peers) from
//! theirs, over one connection per peer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::{chunk, peer};
use wrun_proto::{CHUNK_BYTES, TaskId, chunk_at, failed, fetch_chunked};

use crate::results::Held;
use crate::state::WorkerState;

/// Answers a chunked fetch of one of our results (from the scheduler or a
/// peer). A spilled result's chunk is read on tokio's blocking pool, so a
/// slow spill disk does not hold up this thread (and its heartbeats).
pub(crate) async fn fill_chunk(
    state: &WorkerState,
    task: TaskId,
    offset: u64,
    mut chunk: chunk::Builder<'_>,
) -> Result<(), capnp::Error> {
    let held = state
        .results
        .get(task)
        .ok_or_else(|| failed("no such result on this worker"))?;
    let total = held.len();
    match held {
        Held::Memory(bytes) => chunk.set_data(chunk_at(&bytes, offset)?),
        Held::Disk { .. } => {
            if offset > total {
                return Err(failed(format!(
                    "offset {offset} is past the end ({total} bytes)"
                )));
            }
            let bytes = tokio::task::spawn_blocking(move || held.read_at(offset, CHUNK_BYTES))
                .await
                .map_err(failed)?
                .map_err(|e| failed(format!("reading the result back from disk: {e}")))?;
            chunk.set_data(&bytes);
        }
    }
    chunk.set_total(total);
    Ok(())
}

/// How long a peer may take to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves `Peer` on the listener (over TLS when `tls` is given): other
/// workers fetch our results.
pub(crate) fn serve_peers(
    listener: tokio::net::TcpListener,
    state: Arc<WorkerState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let server: peer::Client = capnp_rpc::new_client(PeerImpl { state });
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let server = server.clone();
            let tls = tls.clone();
            tokio::task::spawn_local(async move {
                let stream: wrun_proto::tls::BoxStream = match tls {
                    None => Box::new(stream),
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => Box::new(tls),
                            _ => return,
                        }
                    }
                };
                let rpc = wrun_proto::rpc_system(stream, Side::Server, Some(server.client));
                let _ = rpc.await;
            });
        }
    });
}

struct PeerImpl {
    state: Arc<WorkerState>,
}

impl peer::Server for PeerImpl {
    async fn fetch(
        self: CapRc<Self>,
        params: peer::FetchParams,
        mut results: peer::FetchResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let task = TaskId(params.get_task());
        let Some(secret) = self.state.secret.get() else {
            return Err(failed("this worker has not joined a cluster yet"));
        };
        if !wrun_proto::tickets::check(secret, task, params.get_ticket()?) {
            // The same answer as for a result that is not here: a wrong
            // ticket tells nothing about which results exist.
            return Err(failed("no such result on this worker"));
        }
        let offset = params.get_offset();
        let wait = Duration::from_millis(u64::from(params.get_wait_ms())).min(MAX_WAIT);
        if !wait.is_zero() && !self.state.results.contains(task) {
            wait_until_made(&self.state, task, wait).await;
        }
        fill_chunk(&self.state, task, offset, results.get().init_chunk()).await
    }
}

/// The longest a peer may wait for a result being made here.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Waits until `task` ends here (made or not), at most `wait`.
async fn wait_until_made(state: &WorkerState, task: TaskId, wait: Duration) {
    let Some(ended) = state.awaited.wait_for(task) else {
        return; // too many waiting: answered as it stands
    };
    // Made between the first look and the registration: no wake-up comes.
    if state.results.contains(task) {
        return;
    }
    let _ = tokio::time::timeout(wait, ended).await;
}

type PeerConnect = Shared<LocalBoxFuture<'static, Result<peer::Client, String>>>;

/// One connection per peer, reused by every fetch from it (a new
/// connection per fetch left one open socket behind each time).
#[derive(Clone, Default)]
pub(crate) struct Peers {
    connections: Rc<RefCell<HashMap<String, PeerConnect>>>,
}

impl Peers {
    fn connect(&self, address: &str, certificate: &[u8]) -> PeerConnect {
        if let Some(connect) = self.connections.borrow().get(address) {
            return connect.clone();
        }
        let key = address.to_owned();
        let connections = self.connections.clone();
        let certificate = (!certificate.is_empty()).then(|| certificate.to_vec());
        let connect = async move {
            let connected = async {
                let stream = wrun_proto::connect_with_retry(&key, Duration::from_secs(5)).await?;
                wrun_proto::tls::secure(stream, certificate.as_deref()).await
            };
            let stream = match connected.await {
                Ok(stream) => stream,
                Err(error) => {
                    connections.borrow_mut().remove(&key);
                    return Err(error.to_string());
                }
            };
            let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
            let client: peer::Client = rpc.bootstrap(Side::Server);
            tokio::task::spawn_local(async move {
                let _ = rpc.await;
                // The connection is gone: the next fetch connects again.
                connections.borrow_mut().remove(&key);
            });
            Ok(client)
        }
        .boxed_local()
        .shared();
        // Concurrent fetches from the same peer share one connection attempt.
        self.connections
            .borrow_mut()
            .insert(address.to_owned(), connect.clone());
        connect
    }

    /// Fetches `task`'s result from the peer at `address`, waiting up to
    /// `wait` for the peer to make it. After a lost connection the next
    /// fetch connects again.
    pub(crate) async fn fetch(
        &self,
        (address, certificate): (&str, &[u8]),
        task: TaskId,
        ticket: &[u8],
        wait: Duration,
    ) -> Result<Vec<u8>, String> {
        let peer = self.connect(address, certificate).await?;
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let value = fetch_chunked(|offset| {
            let mut request = peer.fetch_request();
            request.get().set_task(task.0);
            request.get().set_offset(offset);
            request.get().set_ticket(ticket);
            request.get().set_wait_ms(wait_ms);
            request.send().promise
        })
        .await;
        value.map_err(|error| {
            // A result that is not there (or not made in time) leaves the
            // connection to the other fetches on it.
            if error.kind == capnp::ErrorKind::Disconnected {
                self.connections.borrow_mut().remove(address);
            }
            error.to_string()
        })
    }
}
