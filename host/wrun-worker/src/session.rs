//! The worker's side of its scheduler: connect (waiting for the scheduler
//! file), register, then send task events in batches and heartbeats until
//! the connection ends, the cluster shuts down, or the worker retires.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};
use wrun_proto::SchedulerFile;
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::{cluster, worker_control, worker_session};

use crate::config::{Departure, SchedulerTarget, WorkerConfig, WorkerError};
use crate::control::ControlImpl;
use crate::outbox::{EVENT_BATCH, EVENT_COALESCE};
use crate::peers::{Peers, serve_peers};
use crate::state::WorkerState;

/// How often a worker tells the scheduler it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);

/// Serves one scheduler until the worker leaves.
pub(crate) async fn serve(
    config: WorkerConfig,
    state: Arc<WorkerState>,
) -> Result<Departure, WorkerError> {
    // Peers fetch our results here.
    let peer_listener = tokio::net::TcpListener::bind((config.peer_host.as_str(), 0))
        .await
        .map_err(|e| WorkerError::Setup(format!("cannot listen for peers: {e}")))?;
    let peer_address = peer_listener
        .local_addr()
        .map_err(|e| WorkerError::Setup(e.to_string()))?
        .to_string();
    let peer_identity = if config.peer_tls {
        Some(
            wrun_proto::tls::TlsIdentity::generate(&[config.peer_host.clone(), "wrun".to_owned()])
                .map_err(|e| WorkerError::Setup(format!("making the peer certificate: {e}")))?,
        )
    } else {
        None
    };
    let acceptor = peer_identity
        .as_ref()
        .map(|i| i.acceptor())
        .transpose()
        .map_err(|e| WorkerError::Setup(e.to_string()))?;
    serve_peers(peer_listener, state.clone(), acceptor);
    let peer_certificate = peer_identity
        .as_ref()
        .map(|i| i.certificate_der().to_vec())
        .unwrap_or_default();

    let shutdown = Rc::new(tokio::sync::Notify::new());
    // Set once a scheduler that keeps a journal is lost: until then this
    // worker waits for it to come back, keeping its results.
    let mut rejoin_by: Option<tokio::time::Instant> = None;
    loop {
        let joined = join(
            &config,
            &state,
            (&peer_address, &peer_certificate),
            &shutdown,
            rejoin_by.is_some(),
        )
        .await;
        let (session, ended, journaled) = match (joined, rejoin_by) {
            (Ok(joined), _) => joined,
            (Err(error), None) => return Err(error),
            (Err(error), Some(deadline)) => {
                if tokio::time::Instant::now() >= deadline {
                    warn!(
                        "the scheduler did not come back within {} s; leaving",
                        config.rejoin_timeout.as_secs()
                    );
                    return Err(error);
                }
                debug!("the scheduler is not back yet: {error}");
                tokio::time::sleep(REJOIN_POLL).await;
                continue;
            }
        };
        let reason = tokio::select! {
            reason = ended => reason.unwrap_or_else(|_| "closed".to_owned()),
            reason = send_events(&session, &state) => reason,
            reason = heartbeats(&session, &state) => reason,
            departure = retirement(&config, &session) => return Ok(departure),
            _ = shutdown.notified() => {
                info!("the cluster is shutting down");
                return Ok(Departure::Shutdown);
            }
        };
        info!("scheduler connection ended: {reason}");
        if !journaled {
            return Err(WorkerError::Disconnected(reason));
        }
        abandon_work(&state).await;
        warn!(
            results = state.results.held().len(),
            "lost the scheduler, which keeps a journal: keeping the results and waiting up to {} s for it to come back",
            config.rejoin_timeout.as_secs()
        );
        rejoin_by = Some(tokio::time::Instant::now() + config.rejoin_timeout);
    }
}

/// How often a worker that lost its scheduler tries it again.
const REJOIN_POLL: Duration = Duration::from_millis(200);
/// Results a rejoining worker names per message.
const HELD_PER_MESSAGE: usize = 100_000;

/// Connects and registers (naming the results kept from before, when
/// rejoining); returns the session, what fires when the connection ends,
/// and whether the scheduler keeps a journal.
async fn join(
    config: &WorkerConfig,
    state: &Arc<WorkerState>,
    peer: (&str, &[u8]),
    shutdown: &Rc<tokio::sync::Notify>,
    rejoining: bool,
) -> Result<
    (
        worker_session::Client,
        tokio::sync::oneshot::Receiver<String>,
        bool,
    ),
    WorkerError,
> {
    let Connected {
        cluster,
        address,
        secret,
        ended,
    } = if rejoining {
        connect_once(config).await?
    } else {
        connect(config).await?
    };
    if state.secret.get().is_some_and(|known| *known != secret) {
        return Err(WorkerError::Refused(
            "the scheduler came back with another cluster secret; this worker's results cannot be vouched for".to_owned(),
        ));
    }
    let _ = state.secret.set(secret.clone());
    let (session_tx, session_rx) = tokio::sync::watch::channel(None);
    let control: worker_control::Client = capnp_rpc::new_client(ControlImpl {
        state: state.clone(),
        session: session_rx,
        module_fetches: RefCell::new(HashMap::new()),
        peers: Peers::default(),
        shutdown: shutdown.clone(),
    });
    let held = if rejoining {
        state.results.held()
    } else {
        Vec::new()
    };
    let (first, rest) = held.split_at(held.len().min(HELD_PER_MESSAGE));
    let (session, journaled) = register(config, &cluster, &secret, peer, control, first).await?;
    for chunk in rest.chunks(HELD_PER_MESSAGE) {
        let mut request = session.held_request();
        write_held(request.get().init_results(chunk.len() as u32), chunk);
        request
            .send()
            .promise
            .await
            .map_err(|e| WorkerError::Disconnected(e.to_string()))?;
    }
    let _ = session_tx.send(Some(session.clone()));
    if rejoining {
        info!(name = %config.name, %address, results = held.len(), "worker rejoined the scheduler with the results it kept");
    } else {
        info!(name = %config.name, %address, peer_address = %peer.0, threads = config.threads, "worker registered");
    }
    Ok((session, ended, journaled))
}

fn write_held(
    mut list: capnp::struct_list::Builder<'_, wrun_proto::wrun_capnp::held_result::Owned>,
    held: &[(wrun_proto::TaskId, u64)],
) {
    for (i, (task, size)) in held.iter().enumerate() {
        let mut h = list.reborrow().get(i as u32);
        h.set_task(task.0);
        h.set_size(*size);
    }
}

/// Stops everything the lost scheduler had asked for: the queue is
/// dropped, running tasks are stopped (bounded), and unsent events go.
/// The results made stay.
async fn abandon_work(state: &WorkerState) {
    state.queue.abandon_all();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.queue.running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    state.events.clear();
}

/// A connection to the scheduler, before registering.
struct Connected {
    cluster: cluster::Client,
    address: String,
    secret: String,
    /// Fires with the reason the connection ended.
    ended: tokio::sync::oneshot::Receiver<String>,
}

/// Connects to the scheduler (waiting for its file, retrying the connection).
async fn connect(config: &WorkerConfig) -> Result<Connected, WorkerError> {
    let (address, secret, certificate) = match &config.scheduler {
        SchedulerTarget::File(path) => {
            let file = SchedulerFile::wait_for(path, config.connect_timeout).await?;
            if file.secret.is_empty() {
                return Err(WorkerError::Setup(format!(
                    "{} has no cluster secret (it is the file for tenants); a worker needs the scheduler's own file",
                    path.display()
                )));
            }
            let certificate = file.certificate_der()?;
            (file.address, file.secret, certificate)
        }
        SchedulerTarget::Address {
            address,
            secret,
            certificate,
        } => (address.clone(), secret.clone(), certificate.clone()),
    };
    let connect = wrun_proto::connect_with_retry(&address, config.connect_timeout);
    let stream = match &config.scheduler {
        // A scheduler that stops removes its file: stop retrying then.
        SchedulerTarget::File(path) => {
            let gone = async {
                while path.exists() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                stream = connect => stream?,
                _ = gone => {
                    return Err(WorkerError::Disconnected(format!(
                        "the scheduler stopped (it removed {})",
                        path.display()
                    )));
                }
            }
        }
        SchedulerTarget::Address { .. } => connect.await?,
    };
    let stream = wrun_proto::tls::secure(stream, certificate.as_deref()).await?;
    let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
    let cluster: cluster::Client = rpc.bootstrap(Side::Server);
    let (disconnected_tx, disconnected_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_local(async move {
        let result = rpc.await;
        let _ = disconnected_tx.send(
            result
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_else(|| "closed".to_owned()),
        );
    });
    Ok(Connected {
        cluster,
        address,
        secret,
        ended: disconnected_rx,
    })
}

/// One attempt at the scheduler, reading its file afresh (a restarted
/// scheduler rewrites it with its new address).
async fn connect_once(config: &WorkerConfig) -> Result<Connected, WorkerError> {
    let once = WorkerConfig {
        connect_timeout: Duration::from_secs(1),
        ..config.clone()
    };
    if let SchedulerTarget::File(path) = &config.scheduler
        && !path.exists()
    {
        return Err(WorkerError::Disconnected(format!(
            "{} is not there yet",
            path.display()
        )));
    }
    connect(&once).await
}

/// Registers with the cluster secret; returns the worker's session.
async fn register(
    config: &WorkerConfig,
    cluster: &cluster::Client,
    secret: &str,
    (peer_address, peer_certificate): (&str, &[u8]),
    control: worker_control::Client,
    held: &[(wrun_proto::TaskId, u64)],
) -> Result<(worker_session::Client, bool), WorkerError> {
    let mut request = cluster.register_worker_request();
    {
        let mut p = request.get();
        p.set_secret(secret);
        p.set_control(control);
        write_held(p.reborrow().init_held(held.len() as u32), held);
        let mut info = p.init_info();
        info.set_name(&config.name);
        info.set_threads(config.threads.max(1));
        info.set_memory_bytes(config.memory_bytes);
        info.set_peer_address(peer_address);
        info.set_peer_certificate(peer_certificate);
        info.set_pid(std::process::id());
        info.set_slurm_job_id(config.slurm_job_id.as_deref().unwrap_or(""));
        info.set_end_time_ms(
            config
                .end_time
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        );
    }
    let response = request.send().promise.await.map_err(|e| {
        if e.kind == capnp::ErrorKind::Disconnected {
            WorkerError::Disconnected(e.to_string())
        } else {
            WorkerError::Refused(e.to_string())
        }
    })?;
    let r = response
        .get()
        .map_err(|e| WorkerError::Refused(e.to_string()))?;
    let session = r
        .get_session()
        .map_err(|e| WorkerError::Refused(e.to_string()))?;
    Ok((session, r.get_journaled()))
}

/// Sends whatever accumulated while the previous batch was in flight.
/// While tasks are still queued here, it waits a moment for more: the queue
/// keeps the executors busy meanwhile, and one message per millisecond
/// instead of one per task spares both sides a wake-up per task. An idle
/// worker reports at once (a chain waits on it). Returns why it stopped.
async fn send_events(session: &worker_session::Client, state: &WorkerState) -> String {
    let outbox = &state.events;
    loop {
        // What a batch had no room for goes next, without waiting.
        if outbox.len() == 0 {
            outbox.wake.notified().await;
        }
        let deadline = tokio::time::Instant::now() + EVENT_COALESCE;
        loop {
            if state.queue.is_empty() || outbox.len() >= EVENT_BATCH {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = outbox.wake.notified() => {}
            }
        }
        let batch = outbox.take();
        if batch.is_empty() {
            continue;
        }
        let mut request = session.events_request();
        let mut list = request.get().init_events(batch.len() as u32);
        for (i, event) in batch.iter().enumerate() {
            event.write(list.reborrow().get(i as u32));
        }
        if let Err(error) = request.send().promise.await {
            return error.to_string();
        }
    }
}

/// Tells the scheduler every second that this worker is alive, and how
/// many result bytes it holds and has spilled; returns why it stopped.
async fn heartbeats(session: &worker_session::Client, state: &WorkerState) -> String {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let mut request = session.heartbeat_request();
        let (held, spilled) = state.results.held_and_spilled();
        request.get().set_held_bytes(held);
        request.get().set_spilled_bytes(spilled);
        if let Err(error) = request.send().promise.await {
            return error.to_string();
        }
    }
}

/// Waits for the moment to retire (the end time minus the margin, a
/// signal, or the owner's notice), then retires: asks the scheduler to take
/// over this worker's work and waits, bounded, for it to confirm.
async fn retirement(config: &WorkerConfig, session: &worker_session::Client) -> Departure {
    let deadline = config.end_time.map(|end| {
        let left = end
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        (left.saturating_sub(config.retire_margin), left)
    });
    let at_deadline = async {
        match deadline {
            Some((wait, _)) => tokio::time::sleep(wait).await,
            None => std::future::pending().await,
        }
    };
    let signalled = async {
        if config.retire_on_signal.is_none() {
            return std::future::pending().await;
        }
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    };
    let told = async {
        match &config.retire_when {
            Some(notify) => notify.notified().await,
            None => std::future::pending().await,
        }
    };
    let asked_bound = config.retire_on_signal.unwrap_or(Duration::from_secs(20));
    let bound = tokio::select! {
        _ = at_deadline => {
            let left = deadline.map(|(_, left)| left).unwrap_or_default();
            info!("the end time is {} s away; retiring", left.as_secs());
            config.retire_margin
        }
        _ = signalled => {
            info!("asked to stop; retiring");
            asked_bound
        }
        _ = told => {
            info!("asked to retire");
            asked_bound
        }
    };
    match tokio::time::timeout(bound, session.retire_request().send().promise).await {
        Ok(Ok(_)) => {
            info!("retired: the scheduler took over this worker's tasks and results");
            Departure::Retired
        }
        Ok(Err(error)) => {
            warn!("retiring failed: {error}; leaving anyway");
            Departure::RetiredUnconfirmed
        }
        Err(_) => {
            warn!(
                "the hand-over did not finish within {} s; leaving anyway",
                bound.as_secs()
            );
            Departure::RetiredUnconfirmed
        }
    }
}
