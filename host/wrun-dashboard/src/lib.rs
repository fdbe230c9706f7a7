//! # wrun-dashboard: the cluster seen from a browser and from Prometheus
//!
//! The scheduler serves, on `--dashboard ADDR` (default `127.0.0.1:8787`,
//! as Dask's), a live page (task stream, progress by task name, workers,
//! the graph when small) and `/metrics` in Prometheus's format. This crate
//! is the HTTP side: [`serve`] binds and runs the server on a thread of its
//! own, so a viewer never slows the scheduler's loop; the scheduler feeds
//! it through a [`Hub`] a few times a second ([`Hub::publish`]).
//!
//! Who may look ([`Access`]): on loopback a cluster without a tenants file
//! needs no token; otherwise a token is asked for (a tenant's shows that
//! tenant's work, the cluster secret shows everything), and off loopback
//! the server speaks only TLS, with the scheduler's certificate.
//!
//! The page's script and style are built into the binary (`assets/`); no
//! library, Node or CDN is used at run time.

mod http;
mod hub;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

pub use hub::{Access, Hub, NameProgress, PAGE_RECORDS, RECENT_RECORDS, Update, View, Viewer};
pub use metrics::{DurationRecorder, MetricsUpdate, TenantTotals};

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The address could not be bound.
    #[error("cannot serve the dashboard on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server thread could not start.
    #[error("starting the dashboard's thread: {0}")]
    Thread(std::io::Error),
    /// Off loopback the dashboard needs TLS.
    #[error("the dashboard on {0} is off loopback and needs TLS: none was given")]
    NeedsTls(SocketAddr),
}

/// The running server; stops when dropped.
pub struct Dashboard {
    addr: SocketAddr,
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dashboard {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.addr)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves the dashboard of `hub` on `addr` (port 0: any free one). Off
/// loopback `tls` must be given; with it, every viewer needs a token.
pub fn serve(
    addr: SocketAddr,
    hub: Arc<Hub>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<Dashboard, DashboardError> {
    if !addr.ip().is_loopback() && tls.is_none() {
        return Err(DashboardError::NeedsTls(addr));
    }
    // Only plain loopback may let viewers in without a token: over TLS the
    // server is meant to be reached from elsewhere.
    let loopback = addr.ip().is_loopback() && tls.is_none();
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|source| DashboardError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| DashboardError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| DashboardError::Bind { addr, source })?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let tls_on = tls.is_some();
    let thread = std::thread::Builder::new()
        .name("wrun-dashboard".into())
        .spawn(move || http::run(listener, hub, loopback, tls, stopped))
        .map_err(DashboardError::Thread)?;
    Ok(Dashboard {
        addr: bound,
        tls: tls_on,
        stop: Some(stop),
        thread: Some(thread),
    })
}
