//! Accepting connections, bounded: at most `max_connections` at once, each
//! must open a session (client or worker) within the handshake time-out or
//! it is closed, and a failing `accept` (file descriptors exhausted) backs
//! off and warns at most once a second instead of spinning.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::cluster;

use crate::cluster::ClusterImpl;
use crate::state::Shared;

/// Bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// How long a connection may take to open a session.
    pub handshake: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            handshake: Duration::from_secs(10),
        }
    }
}

/// A warning said at most once per period, with how many were held back.
pub(crate) struct RateLimited {
    period: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimited {
    pub(crate) fn new(period: Duration) -> RateLimited {
        RateLimited {
            period,
            last: None,
            held_back: 0,
        }
    }

    /// Whether to say it now; `Some(n)`: say it, and that `n` were held back.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.period)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

pub(crate) struct Acceptor {
    shared: Shared,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    live: Rc<Cell<usize>>,
    backoff: Duration,
    accept_warning: RateLimited,
    full_warning: RateLimited,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Acceptor {
    pub(crate) fn new(
        shared: Shared,
        limits: ConnectionLimits,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Acceptor {
        Acceptor {
            shared,
            limits,
            tls,
            live: Rc::new(Cell::new(0)),
            backoff: FIRST_BACKOFF,
            accept_warning: RateLimited::new(Duration::from_secs(1)),
            full_warning: RateLimited::new(Duration::from_secs(1)),
        }
    }

    /// Accepts and serves one connection (or backs off after a failure).
    /// Cancel-safe: it may be dropped at any await.
    pub(crate) async fn accept_one(&mut self, listener: &tokio::net::TcpListener) {
        match listener.accept().await {
            Ok((stream, peer)) => {
                self.backoff = FIRST_BACKOFF;
                if self.live.get() >= self.limits.max_connections {
                    if let Some(held) = self.full_warning.allow(Instant::now()) {
                        warn!(
                            %peer,
                            "{} connections are open, the most allowed; closing new ones ({held} more since the last warning)",
                            self.limits.max_connections
                        );
                    }
                    drop(stream);
                    return;
                }
                self.serve(stream, peer);
            }
            Err(error) => {
                if let Some(held) = self.accept_warning.allow(Instant::now()) {
                    warn!(
                        "accept failed: {error}; backing off {} ms ({held} more failures since the last warning)",
                        self.backoff.as_millis()
                    );
                }
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Serves the bootstrap capability on one accepted connection (over
    /// TLS when the scheduler speaks it; the TLS handshake counts against
    /// the handshake time-out too).
    pub(crate) fn serve(&self, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        debug!(%peer, "connection");
        let _ = stream.set_nodelay(true);
        let opened = Rc::new(Cell::new(false));
        let meter = Rc::new(wrun_proto::WriteMeter::default());
        let bootstrap: cluster::Client = capnp_rpc::new_client(ClusterImpl {
            shared: self.shared.clone(),
            peer,
            opened: opened.clone(),
            meter: meter.clone(),
        });
        let live = self.live.clone();
        live.set(live.get() + 1);
        let handshake = self.limits.handshake;
        let tls = self.tls.clone();
        tokio::task::spawn_local(async move {
            let stream: wrun_proto::tls::BoxStream = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(error)) => {
                            debug!(%peer, "TLS handshake failed: {error}");
                            live.set(live.get() - 1);
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "no TLS handshake within {} s", handshake.as_secs());
                            live.set(live.get() - 1);
                            return;
                        }
                    }
                }
            };
            let rpc =
                wrun_proto::rpc_system_metered(stream, Side::Server, Some(bootstrap.client), meter);
            tokio::pin!(rpc);
            let deadline = tokio::time::sleep(handshake);
            tokio::pin!(deadline);
            let mut waiting = true;
            loop {
                tokio::select! {
                    ended = &mut rpc => {
                        if let Err(error) = ended {
                            debug!(%peer, "connection ended: {error}");
                        }
                        break;
                    }
                    _ = &mut deadline, if waiting => {
                        if !opened.get() {
                            debug!(%peer, "no session within {} s; closing the connection", handshake.as_secs());
                            break;
                        }
                        waiting = false;
                    }
                }
            }
            live.set(live.get() - 1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_warning_is_said_once_per_period_with_the_count_held_back() {
        let mut warning = RateLimited::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(warning.allow(t0), Some(0));
        assert_eq!(warning.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(warning.allow(t0 + Duration::from_millis(20)), None);
        assert_eq!(warning.allow(t0 + Duration::from_secs(2)), Some(2));
    }
}
