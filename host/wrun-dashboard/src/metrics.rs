//! `/metrics`: the cluster in Prometheus's text format, through the
//! `prometheus` crate (its text format passes `promtool check metrics`;
//! `prometheus-client` writes OpenMetrics, which promtool 2.42 flags), named as Dask names its own
//! (`dask_scheduler_workers` → `wrun_scheduler_workers`, ...).
//!
//! Counters the scheduler keeps exactly (tasks completed and failed,
//! transfers) arrive as totals and are advanced by the difference; task
//! durations are observed from the task runs of each publication.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    CounterVec, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use wrun_proto::status::{TaskCounts, WorkerStatus};

/// The figures of one publication.
#[derive(Debug, Clone, Default)]
pub struct MetricsUpdate {
    /// Every worker, with the operator's details.
    pub workers: Vec<WorkerStatus>,
    /// Client sessions connected.
    pub clients: u64,
    /// Tasks by state of each tenant, when they were counted this time.
    pub tasks: Option<Vec<(String, TaskCounts)>>,
    /// Totals since the scheduler started, per tenant.
    pub totals: Vec<(String, TenantTotals)>,
    /// Results lost with a worker and computed again.
    pub recomputed: u64,
    /// How late the scheduler's loop woke at worst since the last
    /// publication, in seconds.
    pub loop_lag_seconds: f64,
}

/// Observes one tenant's task durations into `wrun_task_duration_seconds`
/// (a few atomic adds: the scheduler calls it for every run).
#[derive(Clone)]
pub struct DurationRecorder(prometheus::Histogram);

impl DurationRecorder {
    /// One run of `micros`.
    pub fn observe_us(&self, micros: u64) {
        self.0.observe(micros as f64 / 1e6);
    }
}

/// A tenant's totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantTotals {
    /// Tasks that finished.
    pub completed: u64,
    /// Task runs that failed, by kind.
    pub failed: Vec<(String, u64)>,
    /// Input bytes workers fetched from peers for its tasks.
    pub transfer_bytes: u64,
    /// Time those fetches took, in seconds.
    pub transfer_seconds: f64,
}

/// Upper bounds of the task duration buckets: 10 µs to 100 s.
const DURATION_BUCKETS: [f64; 15] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0,
];

pub(crate) struct Metrics {
    registry: Registry,
    workers: IntGauge,
    clients: IntGauge,
    tasks: IntGaugeVec,
    completed: IntCounterVec,
    failed: IntCounterVec,
    duration: HistogramVec,
    worker_memory: IntGaugeVec,
    worker_held: IntGaugeVec,
    worker_spilled: IntGaugeVec,
    worker_threads: IntGaugeVec,
    worker_tasks: IntGaugeVec,
    transfer_bytes: IntCounterVec,
    transfer_seconds: CounterVec,
    recomputed: IntCounter,
    loop_lag: Gauge,
    viewers: IntGauge,
    /// The totals last seen, to advance counters by the difference.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    totals: HashMap<String, TenantTotals>,
    recomputed: u64,
}

/// Registers `metric` (names and labels here are fixed and valid).
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<M, prometheus::Error>,
) -> M {
    let metric = metric.expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

impl Default for Metrics {
    fn default() -> Metrics {
        let registry = Registry::new_custom(Some("wrun".to_owned()), None).expect("a valid prefix");
        let r = &registry;
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(r, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        Metrics {
            workers: registered(
                r,
                IntGauge::new("scheduler_workers", "Workers connected to the scheduler"),
            ),
            clients: registered(
                r,
                IntGauge::new("scheduler_clients", "Client sessions connected"),
            ),
            tasks: gauge(
                "tasks",
                "Tasks the scheduler knows, by tenant and state",
                &["tenant", "state"],
            ),
            completed: counter("tasks_completed_total", "Tasks that finished", &["tenant"]),
            failed: counter(
                "tasks_failed_total",
                "Task runs that failed, by kind",
                &["tenant", "kind"],
            ),
            duration: registered(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "task_duration_seconds",
                        "How long task runs took on their worker",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["tenant"],
                ),
            ),
            worker_memory: gauge(
                "worker_memory_bytes",
                "A worker's memory limit",
                &["worker"],
            ),
            worker_held: gauge(
                "worker_held_bytes",
                "Result bytes a worker holds, in memory and on disk",
                &["worker"],
            ),
            worker_spilled: gauge(
                "worker_spilled_bytes",
                "Result bytes a worker holds on disk",
                &["worker"],
            ),
            worker_threads: gauge("worker_threads", "A worker's task threads", &["worker"]),
            worker_tasks: gauge(
                "worker_tasks",
                "Tasks sent to a worker (queued there or running)",
                &["worker"],
            ),
            transfer_bytes: counter(
                "transfer_bytes_total",
                "Input bytes workers fetched from peers",
                &["tenant"],
            ),
            transfer_seconds: registered(
                r,
                CounterVec::new(
                    Opts::new(
                        "transfer_seconds_total",
                        "Time workers spent fetching inputs from peers",
                    ),
                    &["tenant"],
                ),
            ),
            recomputed: registered(
                r,
                IntCounter::new(
                    "recomputed_total",
                    "Results lost with a worker and computed again",
                ),
            ),
            loop_lag: registered(
                r,
                Gauge::new(
                    "scheduler_loop_lag_seconds",
                    "How late the scheduler's loop woke at worst in the last interval",
                ),
            ),
            viewers: registered(
                r,
                IntGauge::new("dashboard_viewers", "Dashboard pages open (live streams)"),
            ),
            seen: Mutex::new(Seen::default()),
            registry,
        }
    }
}

impl Metrics {
    pub(crate) fn update(&self, update: &MetricsUpdate, viewers: usize) {
        self.viewers.set(viewers as i64);
        self.workers.set(update.workers.len() as i64);
        self.clients.set(update.clients as i64);
        // Workers come and go: the families hold only the current ones.
        for family in [
            &self.worker_memory,
            &self.worker_held,
            &self.worker_spilled,
            &self.worker_threads,
            &self.worker_tasks,
        ] {
            family.reset();
        }
        for worker in &update.workers {
            let set = |family: &IntGaugeVec, value: u64| {
                family
                    .with_label_values(&[worker.name.as_str()])
                    .set(value as i64);
            };
            set(&self.worker_memory, worker.memory_bytes);
            set(&self.worker_held, worker.held_bytes);
            set(&self.worker_spilled, worker.spilled_bytes);
            set(&self.worker_threads, u64::from(worker.threads));
            set(&self.worker_tasks, u64::from(worker.assigned));
        }
        if let Some(tasks) = &update.tasks {
            self.tasks.reset();
            for (tenant, counts) in tasks {
                for (state, value) in [
                    ("waiting", counts.waiting),
                    ("queued", counts.queued),
                    ("processing", counts.on_workers),
                    ("running", counts.running),
                    ("done", counts.done),
                    ("failed", counts.failed),
                ] {
                    self.tasks
                        .with_label_values(&[tenant.as_str(), state])
                        .set(value as i64);
                }
            }
        }
        self.loop_lag.set(update.loop_lag_seconds);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        self.recomputed
            .inc_by(update.recomputed.saturating_sub(seen.recomputed));
        seen.recomputed = seen.recomputed.max(update.recomputed);
        for (tenant, totals) in &update.totals {
            let label = [tenant.as_str()];
            let before = seen.totals.entry(tenant.clone()).or_default();
            self.completed
                .with_label_values(&label)
                .inc_by(totals.completed.saturating_sub(before.completed));
            for (kind, count) in &totals.failed {
                let was = before
                    .failed
                    .iter()
                    .find(|(k, _)| k == kind)
                    .map_or(0, |(_, c)| *c);
                self.failed
                    .with_label_values(&[tenant.as_str(), kind.as_str()])
                    .inc_by(count.saturating_sub(was));
            }
            self.transfer_bytes
                .with_label_values(&label)
                .inc_by(totals.transfer_bytes.saturating_sub(before.transfer_bytes));
            let more = totals.transfer_seconds - before.transfer_seconds;
            if more > 0.0 {
                self.transfer_seconds.with_label_values(&label).inc_by(more);
            }
            *before = totals.clone();
        }
    }

    /// Where one tenant's task durations go.
    pub(crate) fn durations(&self, tenant: &str) -> DurationRecorder {
        DurationRecorder(self.duration.with_label_values(&[tenant]))
    }

    /// The text Prometheus scrapes (its text format, 0.0.4).
    pub(crate) fn encode(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_advance_by_the_difference_of_totals_and_workers_that_left_go() {
        let metrics = Metrics::default();
        let worker = |name: &str| WorkerStatus {
            name: name.into(),
            threads: 2,
            memory_bytes: 1 << 30,
            ..WorkerStatus::default()
        };
        let totals = |completed: u64| {
            vec![(
                "default".to_owned(),
                TenantTotals {
                    completed,
                    failed: vec![("trap".into(), 1)],
                    ..TenantTotals::default()
                },
            )]
        };
        metrics.update(
            &MetricsUpdate {
                workers: vec![worker("a"), worker("b")],
                totals: totals(5),
                ..MetricsUpdate::default()
            },
            0,
        );
        metrics.durations("default").observe_us(2_000);
        metrics.update(
            &MetricsUpdate {
                workers: vec![worker("b")],
                totals: totals(7),
                ..MetricsUpdate::default()
            },
            1,
        );
        let text = metrics.encode();
        assert!(text.contains("wrun_scheduler_workers 1\n"), "{text}");
        assert!(text.contains("wrun_dashboard_viewers 1\n"), "{text}");
        assert!(
            text.contains("wrun_tasks_completed_total{tenant=\"default\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("wrun_tasks_failed_total{kind=\"trap\",tenant=\"default\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("wrun_worker_memory_bytes{worker=\"b\"}"));
        assert!(!text.contains("worker=\"a\""), "{text}");
        assert!(text.contains("wrun_task_duration_seconds_count{tenant=\"default\"} 1\n"));
        assert!(text.contains("# HELP wrun_tasks_completed_total Tasks that finished"));
    }
}
