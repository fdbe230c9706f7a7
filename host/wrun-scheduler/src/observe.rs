//! Feeds the dashboard (`wrun-dashboard`): every second, or twice a second
//! while a page is open, or at once when a scrape asks, the task
//! runs since the last time, the figures for `/metrics`, and (when asked
//! or watched) each viewer's view: the status, progress by task name,
//! and the live graph when it is small enough to draw.
//!
//! Views take one pass over the tasks, so they are made only while
//! someone looks; the rest is a handful of numbers per worker and tenant.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wrun_core::{Arg, Phase, TaskId, TenantId};
use wrun_dashboard::{
    Access, Hub, MetricsUpdate, NameProgress, TenantTotals, Update, View, Viewer,
};
use wrun_proto::status::TaskCounts;

use crate::state::{Shared, State};
use crate::status::status_with_counts;
use crate::tenants::{OPERATOR_ID, Tenants};

/// Between publications while a page is open.
const WATCHED: Duration = Duration::from_millis(500);
/// Between publications otherwise (the task runs and counters only).
const IDLE: Duration = Duration::from_secs(1);
/// The live graph is drawn while the cluster has at most this many tasks.
pub(crate) const GRAPH_LIMIT: usize = 300;

/// Views cost a pass over the tasks: a page gets new ones only as often
/// as keeps that pass under 1/VIEW_SHARE of the scheduler's time.
const VIEW_SHARE: u32 = 50;

/// Publishes until the scheduler's loop ends.
pub(crate) async fn publish(shared: Shared, hub: Arc<Hub>) {
    let mut next_views = Instant::now();
    loop {
        let interval = if hub.watched() { WATCHED } else { IDLE };
        let asleep = Instant::now();
        let asked = hub.refresh_wanted(interval).await;
        // A wake-up later than asked for is time this loop could not run.
        let lag = if asked {
            Duration::ZERO
        } else {
            asleep.elapsed().saturating_sub(interval)
        };
        let views = asked || (hub.watched() && Instant::now() >= next_views);
        let started = Instant::now();
        let update = build(&mut shared.borrow_mut(), views, lag);
        if views {
            next_views = Instant::now() + started.elapsed() * VIEW_SHARE;
        }
        hub.publish(update);
    }
}

fn build(state: &mut State, views_due: bool, lag: Duration) -> Update {
    let (runs, records_dropped) = state.stream.take_page();
    let mut tenant_names: HashMap<TenantId, String> = HashMap::new();
    let mut name_of = |state: &State, id: TenantId| {
        tenant_names
            .entry(id)
            .or_insert_with(|| state.tenants.name_of(id).to_owned())
            .clone()
    };
    let records = runs
        .iter()
        .map(|run| (name_of(state, run.tenant), run.record()))
        .collect();
    let pass = views_due.then(|| count(state));
    let operator = status_with_counts(
        state,
        OPERATOR_ID,
        pass.as_ref().map(|p| p.total.counts).unwrap_or_default(),
        0,
    );
    let totals = state
        .stream
        .totals
        .iter()
        .map(|(id, t)| {
            (
                state.tenants.name_of(*id).to_owned(),
                TenantTotals {
                    completed: t.completed,
                    failed: t.failed.iter().map(|(k, c)| (k.to_string(), *c)).collect(),
                    transfer_bytes: t.transfer_bytes,
                    transfer_seconds: t.transfer_us as f64 / 1e6,
                },
            )
        })
        .collect();
    let metrics = MetricsUpdate {
        workers: operator.workers.clone(),
        clients: state.clients.len() as u64,
        tasks: pass.as_ref().map(|p| {
            p.tenants
                .iter()
                .map(|(id, t)| (state.tenants.name_of(*id).to_owned(), t.counts))
                .collect()
        }),
        totals,
        recomputed: state.core.recomputed(),
        loop_lag_seconds: lag.as_secs_f64(),
    };
    let views = pass.map(|pass| views(state, pass, operator));
    Update {
        views,
        records,
        records_dropped,
        metrics,
        access: access(&state.tenants, &state.secret),
    }
}

/// Who may look: the cluster secret sees everything, a tenant's token its
/// own work (all of it, for the one tenant of a cluster without a tenants
/// file); that cluster's viewers on loopback need no token.
pub(crate) fn access(tenants: &Tenants, secret: &str) -> Access {
    let mut tokens = HashMap::new();
    let single = tenants.all().all(|t| t.sees_all);
    for tenant in tenants.all() {
        let viewer = if tenant.sees_all {
            Viewer::All
        } else {
            Viewer::Tenant(tenant.name.clone())
        };
        tokens.insert(tenant.token_hash, viewer);
    }
    tokens.insert(crate::tenants::hash_token(secret), Viewer::All);
    Access {
        open_on_loopback: single,
        tokens,
    }
}

#[derive(Default)]
struct Tally {
    counts: TaskCounts,
    names: BTreeMap<String, NameProgress>,
}

impl Tally {
    fn add(&mut self, name: &str, phase: Phase, n: u64) {
        let c = &mut self.counts;
        c.total += n;
        let p = match self.names.get_mut(name) {
            Some(p) => p,
            None => self.names.entry(name.to_owned()).or_insert(NameProgress {
                name: name.to_owned(),
                ..NameProgress::default()
            }),
        };
        match phase {
            Phase::Waiting => {
                c.waiting += n;
                p.waiting += n;
            }
            Phase::Queued => {
                c.queued += n;
                p.queued += n;
            }
            Phase::OnWorker | Phase::Running => {
                c.on_workers += n;
                if phase == Phase::Running {
                    c.running += n;
                }
                p.running += n;
            }
            Phase::Done => {
                c.done += n;
                p.done += n;
            }
            Phase::Failed => {
                c.failed += n;
                p.failed += n;
            }
        }
    }
}

/// A task of the live graph.
struct GraphTask {
    id: TaskId,
    tenant: TenantId,
    name: String,
    args: String,
    phase: Phase,
    deps: Vec<TaskId>,
}

struct Pass {
    total: Tally,
    tenants: HashMap<TenantId, Tally>,
    /// Every task, when there are few enough to draw.
    graph: Option<Vec<GraphTask>>,
}

fn count(state: &State) -> Pass {
    let drawable = state.core.task_count() <= GRAPH_LIMIT;
    let mut pass = Pass {
        total: Tally::default(),
        tenants: HashMap::new(),
        graph: drawable.then(Vec::new),
    };
    // Counted per (tenant, submission) first: tasks of one submission
    // share a template, so most tasks land in the group of the one before
    // and nothing is hashed for them; names are summed per group after.
    let mut groups: Vec<(TenantId, &str, [u64; PHASES.len()])> = Vec::new();
    let mut index: HashMap<(TenantId, *const crate::state::Template), usize> = HashMap::new();
    let mut last: Option<((TenantId, *const crate::state::Template), usize)> = None;
    for (spec, phase, deps) in state.core.task_phases() {
        let key = (spec.tenant, Rc::as_ptr(&spec.payload.template));
        let group = match last {
            Some((k, i)) if k == key => i,
            _ => {
                let i = *index.entry(key).or_insert_with(|| {
                    groups.push((spec.tenant, &*spec.payload.template.name, [0; PHASES.len()]));
                    groups.len() - 1
                });
                last = Some((key, i));
                i
            }
        };
        groups[group].2[phase_index(phase)] += 1;
        if let Some(graph) = &mut pass.graph {
            let name = &*spec.payload.template.name;
            graph.push(GraphTask {
                id: spec.id,
                tenant: spec.tenant,
                name: name.to_owned(),
                args: argument_text(&spec.args),
                phase,
                deps: deps.to_vec(),
            });
        }
    }
    for (tenant, name, counts) in groups {
        for (phase, n) in PHASES.iter().zip(counts) {
            if n > 0 {
                pass.total.add(name, *phase, n);
                pass.tenants.entry(tenant).or_default().add(name, *phase, n);
            }
        }
    }
    pass
}

const PHASES: [Phase; 6] = [
    Phase::Waiting,
    Phase::Queued,
    Phase::OnWorker,
    Phase::Running,
    Phase::Done,
    Phase::Failed,
];

fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::Waiting => 0,
        Phase::Queued => 1,
        Phase::OnWorker => 2,
        Phase::Running => 3,
        Phase::Done => 4,
        Phase::Failed => 5,
    }
}

/// `(1, 2, ↑)`: literal arguments as JSON, results of other tasks as ↑.
fn argument_text(args: &[Arg]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|arg| match arg {
            Arg::Value(bytes) => rmpv::decode::read_value(&mut &bytes[..])
                .map(|v| wrun_abi::value_to_json(&v).to_string())
                .unwrap_or_else(|_| "?".to_owned()),
            Arg::Result(_) => "↑".to_owned(),
            Arg::Stored(_) => "[stored]".to_owned(),
        })
        .collect();
    format!("({})", parts.join(", "))
}

fn views(
    state: &State,
    mut pass: Pass,
    operator: wrun_proto::status::ClusterStatus,
) -> Vec<(Viewer, View)> {
    let graph = pass.graph.take();
    let draw = |tenant: Option<TenantId>| {
        graph.as_ref().map(|tasks| {
            let tasks: Vec<&GraphTask> = tasks
                .iter()
                .filter(|t| tenant.is_none_or(|id| t.tenant == id))
                .collect();
            draw_graph(&tasks)
        })
    };
    let mut out = Vec::new();
    let (svg, version) = draw(None).unzip();
    out.push((
        Viewer::All,
        View {
            status: wrun_proto::status::ClusterStatus {
                tasks: pass.total.counts,
                ..operator
            },
            progress: pass.total.names.into_values().collect(),
            graph_svg: svg,
            graph_tasks: pass.total.counts.total,
            graph_version: version.unwrap_or(0),
        },
    ));
    for tenant in state.tenants.all().filter(|t| !t.sees_all) {
        let tally = pass.tenants.remove(&tenant.id).unwrap_or_default();
        let (svg, version) = draw(Some(tenant.id)).unzip();
        out.push((
            Viewer::Tenant(tenant.name.clone()),
            View {
                status: status_with_counts(state, tenant.id, tally.counts, 0),
                progress: tally.names.into_values().collect(),
                graph_svg: svg,
                graph_tasks: tally.counts.total,
                graph_version: version.unwrap_or(0),
            },
        ));
    }
    out
}

/// The graph drawn, and a fingerprint of what it shows (the page fetches
/// the picture again only when that changes).
fn draw_graph(tasks: &[&GraphTask]) -> (String, u64) {
    let mut tasks = tasks.to_vec();
    tasks.sort_by_key(|t| t.id);
    let index: HashMap<TaskId, usize> = tasks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let nodes = tasks
        .iter()
        .map(|t| {
            (t.id, t.phase).hash(&mut hasher);
            wrun_draw::Node {
                label: t.name.clone(),
                detail: t.args.clone(),
                state: match t.phase {
                    Phase::Waiting => "waiting",
                    Phase::Queued | Phase::OnWorker => "queued",
                    Phase::Running => "running",
                    Phase::Done => "done",
                    Phase::Failed => "failed",
                }
                .to_owned(),
            }
        })
        .collect();
    let edges = tasks
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            t.deps
                .iter()
                .filter_map(|d| index.get(d).map(|&from| (from, i)))
                .collect::<Vec<_>>()
        })
        .collect();
    let svg = wrun_draw::to_svg(&wrun_draw::Drawing { nodes, edges });
    (svg, hasher.finish() | 1)
}
