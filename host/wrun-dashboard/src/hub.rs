//! What the scheduler hands the dashboard, and what the dashboard's
//! handlers read: the newest snapshot of each view, the recent task
//! stream, who may look, and the metrics.
//!
//! The scheduler's thread never waits on a viewer: it replaces the
//! snapshot under a mutex held only for the swap (a few times a second),
//! and the HTTP thread encodes and sends from its own copy.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wrun_proto::status::ClusterStatus;
use wrun_proto::stream::TaskRecord;

use crate::metrics::{Metrics, MetricsUpdate};

/// How many recent task runs the dashboard keeps to show a new viewer.
pub const RECENT_RECORDS: usize = 20_000;
/// The most task runs one update carries to the pages (the newest): a
/// page draws the newest 2,000 it has had.
pub const PAGE_RECORDS: usize = 500;

/// Who looks: everything (the operator, or a cluster's only tenant), or
/// one tenant's work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Viewer {
    /// The whole cluster.
    All,
    /// One tenant, by name.
    Tenant(String),
}

/// Who may look, and as whom.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Viewers on loopback need no token (a cluster without a tenants
    /// file: whoever can reach loopback can read the scheduler file).
    pub open_on_loopback: bool,
    /// SHA-256 of each accepted token, and whom it shows.
    pub tokens: HashMap<[u8; 32], Viewer>,
}

impl Access {
    /// The viewer a token shows, if it is one.
    pub fn viewer(&self, token: &str) -> Option<Viewer> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens.get(&hash).cloned()
    }
}

/// Progress of the tasks of one name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NameProgress {
    /// The task function.
    pub name: String,
    /// Waiting for dependencies.
    pub waiting: u64,
    /// Ready, in the scheduler's queue.
    pub queued: u64,
    /// On a worker (queued there or running).
    pub running: u64,
    /// Done.
    pub done: u64,
    /// Failed for good.
    pub failed: u64,
}

/// What one viewer sees besides the task stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    /// The status as this viewer's session would see it.
    pub status: ClusterStatus,
    /// Tasks by name.
    pub progress: Vec<NameProgress>,
    /// The live graph, drawn, when it is small enough to draw.
    #[serde(skip)]
    pub graph_svg: Option<String>,
    /// How many tasks the live graph has (drawn or not).
    pub graph_tasks: u64,
    /// Bumped whenever `graph_svg` changes.
    pub graph_version: u64,
}

/// One publication of the scheduler.
#[derive(Debug, Default)]
pub struct Update {
    /// New views, when they were computed this time (`None`: unchanged).
    pub views: Option<Vec<(Viewer, View)>>,
    /// The newest task runs since the last update (at most
    /// [`PAGE_RECORDS`]), each with its tenant's name.
    pub records: Vec<(String, TaskRecord)>,
    /// Runs since the last update left out of `records`.
    pub records_dropped: u64,
    /// Figures for `/metrics`.
    pub metrics: MetricsUpdate,
    /// Who may look.
    pub access: Access,
}

#[derive(Default)]
pub(crate) struct Published {
    pub(crate) views: HashMap<Viewer, View>,
    /// (sequence, tenant, run), oldest first.
    pub(crate) records: VecDeque<(u64, String, TaskRecord)>,
    pub(crate) next_seq: u64,
    pub(crate) access: Access,
}

/// The meeting point of the scheduler and the dashboard's thread.
pub struct Hub {
    pub(crate) published: Mutex<Published>,
    /// Bumped on every publication; handlers wait on it.
    pub(crate) version: tokio::sync::watch::Sender<u64>,
    /// Asked for a fresh publication (a scrape, a new viewer).
    refresh: tokio::sync::Notify,
    viewers: AtomicUsize,
    pub(crate) metrics: Metrics,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            published: Mutex::new(Published::default()),
            version: tokio::sync::watch::Sender::new(0),
            refresh: tokio::sync::Notify::new(),
            viewers: AtomicUsize::new(0),
            metrics: Metrics::default(),
        }
    }
}

impl Hub {
    /// A hub that lets in whom `access` names until the first publication.
    pub fn new(access: Access) -> Hub {
        let hub = Hub::default();
        hub.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .access = access;
        hub
    }

    /// Takes the scheduler's newest figures.
    pub fn publish(&self, update: Update) {
        self.metrics
            .update(&update.metrics, self.viewers.load(Ordering::Relaxed));
        {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(views) = update.views {
                published.views = views.into_iter().collect();
            }
            for (tenant, record) in update.records {
                let seq = published.next_seq;
                published.next_seq += 1;
                published.records.push_back((seq, tenant, record));
            }
            let excess = published.records.len().saturating_sub(RECENT_RECORDS);
            published.records.drain(..excess);
            published.access = update.access;
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// Where one tenant's task durations go (`wrun_task_duration_seconds`).
    pub fn durations(&self, tenant: &str) -> crate::metrics::DurationRecorder {
        self.metrics.durations(tenant)
    }

    /// Whether a dashboard page is open (the scheduler then computes the
    /// views often; otherwise only when asked).
    pub fn watched(&self) -> bool {
        self.viewers.load(Ordering::Relaxed) > 0
    }

    /// Waits until someone asks for a fresh publication, or `at_most`.
    pub async fn refresh_wanted(&self, at_most: Duration) -> bool {
        tokio::time::timeout(at_most, self.refresh.notified())
            .await
            .is_ok()
    }

    pub(crate) fn ask_refresh(&self) {
        self.refresh.notify_one();
    }

    pub(crate) fn viewer_joined(self: &Arc<Hub>) -> ViewerGuard {
        self.viewers.fetch_add(1, Ordering::Relaxed);
        self.ask_refresh();
        ViewerGuard(self.clone())
    }
}

/// Counts an open live stream while it lives.
pub(crate) struct ViewerGuard(Arc<Hub>);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}
