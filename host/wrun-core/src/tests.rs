//! Core tests: event sequences in, exactly the expected decisions out, and
//! `sanity_check()` after every step. The `Sim` plays the workers.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::{
    Arg, ClientId, Comm, Core, CoreConfig, Failure, SubmitError, TaskId, TaskSpec, TenantId,
    TenantShare, TenantUsage, WorkerId,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Said {
    Assign(WorkerId, TaskId, Vec<(TaskId, WorkerId)>),
    Steal(WorkerId, Vec<TaskId>),
    Cancel(WorkerId, TaskId),
    Free(WorkerId, TaskId),
    Replicate(WorkerId, TaskId, WorkerId),
    Done(TaskId, WorkerId),
    Failed(TaskId, String),
}

#[derive(Default)]
struct TestComm {
    said: Vec<Said>,
}

impl Comm<()> for TestComm {
    fn assign(&mut self, worker: WorkerId, task: &TaskSpec<()>, inputs: &[(TaskId, WorkerId)]) {
        self.said
            .push(Said::Assign(worker, task.id, inputs.to_vec()));
    }
    fn steal(&mut self, worker: WorkerId, tasks: &[TaskId]) {
        self.said.push(Said::Steal(worker, tasks.to_vec()));
    }
    fn cancel(&mut self, worker: WorkerId, task: TaskId) {
        self.said.push(Said::Cancel(worker, task));
    }
    fn free(&mut self, worker: WorkerId, task: TaskId) {
        self.said.push(Said::Free(worker, task));
    }
    fn replicate(&mut self, to: WorkerId, task: TaskId, from: WorkerId) {
        self.said.push(Said::Replicate(to, task, from));
    }
    fn done(&mut self, _client: ClientId, task: TaskId, worker: WorkerId, _size: u64) {
        self.said.push(Said::Done(task, worker));
    }
    fn failed(&mut self, _client: ClientId, task: TaskId, failure: &Failure) {
        self.said.push(Said::Failed(task, failure.to_string()));
    }
}

fn spec(id: u64, deps: &[u64]) -> TaskSpec<()> {
    tenant_spec(id, deps, TenantId::default())
}

fn tenant_spec(id: u64, deps: &[u64], tenant: TenantId) -> TaskSpec<()> {
    let mut args = vec![Arg::Value(Box::new([0x01]))];
    args.extend(deps.iter().map(|d| Arg::Result(TaskId(*d))));
    TaskSpec {
        id: TaskId(id),
        client: ClientId(1),
        tenant,
        args: args.into(),
        retries: 0,
        payload: (),
    }
}

const C: ClientId = ClientId(1);
fn t(id: u64) -> TaskId {
    TaskId(id)
}
fn w(id: u64) -> WorkerId {
    WorkerId(id)
}

struct Env {
    core: Core<()>,
    comm: TestComm,
    now: Instant,
}

impl Env {
    /// A core without staging: these tests spell out the decisions of
    /// placement one round trip at a time (staging has its own below, and
    /// the random sequences run with it).
    fn new(queue_per_slot: u32) -> Env {
        Env::with(CoreConfig {
            queue_per_slot,
            staging: false,
            ..CoreConfig::default()
        })
    }

    fn with(config: CoreConfig) -> Env {
        Env {
            core: Core::new(config),
            comm: TestComm::default(),
            now: Instant::now(),
        }
    }

    /// A core with staging on (the default; `--no-staging` turns it off).
    fn staging(queue_per_slot: u32) -> Env {
        Env::with(CoreConfig {
            queue_per_slot,
            staging: true,
            ..CoreConfig::default()
        })
    }

    /// What the core said since the last call; checks invariants first.
    fn said(&mut self) -> Vec<Said> {
        self.core.sanity_check();
        std::mem::take(&mut self.comm.said)
    }

    fn submit(&mut self, batch: Vec<TaskSpec<()>>) {
        self.core.submit(batch, &mut self.comm).unwrap();
    }

    fn worker(&mut self, id: u64, slots: u32) {
        self.core.add_worker(w(id), slots, self.now, &mut self.comm);
    }

    fn finish(&mut self, worker: u64, task: u64, size: u64) {
        self.core.task_started(w(worker), t(task));
        self.core
            .task_finished(w(worker), t(task), size, &mut self.comm);
    }
}

fn error(message: &str) -> Failure {
    Failure::Error {
        kind: "panic".into(),
        message: message.into(),
    }
}

#[test]
fn a_chain_runs_in_order_and_frees_what_nobody_needs() {
    let mut env = Env::new(4);
    env.submit(vec![spec(1, &[]), spec(2, &[1]), spec(3, &[2])]);
    assert_eq!(env.said(), vec![]);
    env.worker(1, 1);
    assert_eq!(env.said(), vec![Said::Assign(w(1), t(1), vec![])]);
    env.finish(1, 1, 8);
    assert_eq!(
        env.said(),
        vec![
            Said::Done(t(1), w(1)),
            Said::Assign(w(1), t(2), vec![(t(1), w(1))])
        ]
    );
    env.core.release(t(1), &mut env.comm);
    assert_eq!(env.said(), vec![], "t2 still needs t1's result");
    env.finish(1, 2, 8);
    assert_eq!(
        env.said(),
        vec![
            Said::Done(t(2), w(1)),
            Said::Free(w(1), t(1)),
            Said::Assign(w(1), t(3), vec![(t(2), w(1))])
        ]
    );
}

#[test]
fn placement_follows_the_input_bytes_then_the_shorter_queue() {
    let mut env = Env::new(4);
    env.worker(1, 1);
    env.worker(2, 1);
    env.submit(vec![spec(1, &[]), spec(2, &[])]);
    assert_eq!(
        env.said(),
        vec![
            Said::Assign(w(1), t(1), vec![]),
            Said::Assign(w(2), t(2), vec![])
        ]
    );
    env.finish(1, 1, 1000);
    env.finish(2, 2, 10);
    env.said();
    // t3 reads 1000 bytes from w1 and 10 from w2: it goes to w1.
    env.submit(vec![spec(3, &[1, 2])]);
    assert_eq!(
        env.said(),
        vec![Said::Assign(w(1), t(3), vec![(t(1), w(1)), (t(2), w(2))])]
    );
}

#[test]
fn a_lost_worker_s_tasks_are_rescheduled_and_its_results_recomputed() {
    let mut env = Env::new(4);
    env.worker(1, 1);
    env.submit(vec![spec(1, &[]), spec(2, &[1]), spec(3, &[2])]);
    env.finish(1, 1, 8);
    env.core.task_started(w(1), t(2));
    env.said();
    env.worker(2, 1);
    env.said();
    env.core.remove_worker(w(1), &mut env.comm);
    // t1's only copy was on w1 and t2 needs it: t1 runs again, then t2.
    assert_eq!(env.said(), vec![Said::Assign(w(2), t(1), vec![])]);
    env.finish(2, 1, 8);
    assert_eq!(
        env.said(),
        vec![
            Said::Done(t(1), w(2)),
            Said::Assign(w(2), t(2), vec![(t(1), w(2))])
        ]
    );
}

#[test]
fn a_task_running_at_three_worker_deaths_fails_as_suspicious() {
    let mut env = Env::new(4);
    env.submit(vec![spec(1, &[]), spec(2, &[1])]);
    for round in 0..3u64 {
        env.worker(10 + round, 1);
        env.core.task_started(w(10 + round), t(1));
        env.said();
        env.core.remove_worker(w(10 + round), &mut env.comm);
    }
    let said = env.said();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        matches!(&said[0], Said::Failed(task, m) if *task == t(1) && m.starts_with("suspicious"))
    );
    assert!(
        matches!(&said[1], Said::Failed(task, m) if *task == t(2) && m.contains("dependency t1 failed"))
    );
}

#[test]
fn queued_but_not_started_tasks_do_not_count_deaths() {
    let mut env = Env::new(4);
    env.submit(vec![spec(1, &[])]);
    for round in 0..5u64 {
        env.worker(10 + round, 1);
        env.said();
        env.core.remove_worker(w(10 + round), &mut env.comm);
    }
    env.worker(99, 1);
    assert_eq!(env.said(), vec![Said::Assign(w(99), t(1), vec![])]);
}

#[test]
fn errors_fail_dependents_with_the_first_cause_unless_retries_are_asked() {
    let mut env = Env::new(4);
    env.worker(1, 1);
    let mut retried = spec(1, &[]);
    retried.retries = 1;
    env.submit(vec![retried, spec(2, &[1]), spec(3, &[2])]);
    env.said();
    env.core
        .task_failed(w(1), t(1), error("boom"), &mut env.comm);
    assert_eq!(
        env.said(),
        vec![Said::Assign(w(1), t(1), vec![])],
        "one retry"
    );
    env.core
        .task_failed(w(1), t(1), error("boom again"), &mut env.comm);
    assert_eq!(
        env.said(),
        vec![
            Said::Failed(t(1), "boom again".into()),
            Said::Failed(
                t(2),
                "dependency t1 failed (first failure: t1: boom again)".into()
            ),
            Said::Failed(
                t(3),
                "dependency t2 failed (first failure: t1: boom again)".into()
            ),
        ]
    );
    // A task submitted later on top of a failed one fails at once.
    env.submit(vec![spec(4, &[3])]);
    assert_eq!(
        env.said(),
        vec![Said::Failed(
            t(4),
            "dependency t3 failed (first failure: t1: boom again)".into()
        )]
    );
}

#[test]
fn an_idle_worker_steals_queued_tasks() {
    let mut env = Env::new(8);
    env.worker(1, 1);
    env.submit((1..=8).map(|i| spec(i, &[])).collect());
    assert_eq!(env.said().len(), 8);
    env.core.task_started(w(1), t(1));
    env.worker(2, 1);
    // w1 has 7 queued and not started; w2 asks for half.
    assert_eq!(env.said(), vec![Said::Steal(w(1), vec![t(8), t(7), t(6)])]);
    env.core.steal_response(w(1), t(8), true, &mut env.comm);
    env.core.steal_response(w(1), t(7), false, &mut env.comm);
    let said = env.said();
    assert_eq!(said[0], Said::Assign(w(2), t(8), vec![]));
    env.core.steal_response(w(1), t(6), true, &mut env.comm);
    assert_eq!(env.said()[0], Said::Assign(w(2), t(6), vec![]));
}

#[test]
fn a_batch_of_events_is_placed_once_at_its_end() {
    let mut env = Env::new(1);
    env.worker(1, 1);
    env.submit((1..=4).map(|i| spec(i, &[])).collect());
    assert_eq!(env.said(), vec![Said::Assign(w(1), t(1), vec![])]);
    env.core.defer_placement();
    env.finish(1, 1, 8);
    // Done is said at once; the freed slot is not filled yet.
    assert_eq!(
        std::mem::take(&mut env.comm.said),
        vec![Said::Done(t(1), w(1))]
    );
    env.core.place_deferred(&mut env.comm);
    assert_eq!(env.said(), vec![Said::Assign(w(1), t(2), vec![])]);
    // Nothing asked for placement: ending a batch decides nothing.
    env.core.defer_placement();
    env.core.place_deferred(&mut env.comm);
    assert_eq!(env.said(), vec![]);
    // A batch abandoned half-way (lifted, not placed): the next event
    // that asks for placement gets it.
    env.core.defer_placement();
    env.finish(1, 2, 8);
    env.core.lift_deferral();
    assert_eq!(env.said(), vec![Said::Done(t(2), w(1))]);
    env.submit(vec![spec(5, &[])]);
    assert_eq!(env.said(), vec![Said::Assign(w(1), t(3), vec![])]);
}

#[test]
fn bad_submissions_are_refused_whole() {
    let mut env = Env::new(4);
    let err = env
        .core
        .submit(vec![spec(1, &[]), spec(2, &[7])], &mut env.comm)
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::UnknownDependency {
            task: t(2),
            dependency: t(7)
        }
    );
    assert_eq!(env.core.task_count(), 0);
    let err = env
        .core
        .submit(vec![spec(1, &[]), spec(1, &[])], &mut env.comm)
        .unwrap_err();
    assert_eq!(err, SubmitError::DuplicateId(t(1)));
    // A reference to a later task of the same batch is unknown (no cycles possible).
    let err = env
        .core
        .submit(vec![spec(1, &[2]), spec(2, &[1])], &mut env.comm)
        .unwrap_err();
    assert!(matches!(err, SubmitError::UnknownDependency { .. }));
    env.submit(vec![spec(1, &[])]);
    let mut foreign = spec(2, &[1]);
    foreign.client = ClientId(2);
    let err = env.core.submit(vec![foreign], &mut env.comm).unwrap_err();
    assert_eq!(
        err,
        SubmitError::ForeignDependency {
            task: t(2),
            dependency: t(1)
        }
    );
    env.said();
}

#[test]
fn cancelling_a_client_s_tasks_stops_and_forgets_them() {
    let mut env = Env::new(4);
    env.worker(1, 1);
    env.submit(vec![spec(1, &[]), spec(2, &[]), spec(3, &[1, 2])]);
    env.finish(1, 1, 8);
    env.said();
    env.core.cancel(&[t(1), t(2), t(3)], &mut env.comm);
    let said = env.said();
    assert!(said.contains(&Said::Cancel(w(1), t(2))), "{said:?}");
    assert!(said.contains(&Said::Free(w(1), t(1))), "{said:?}");
    assert_eq!(env.core.task_count(), 0);
    // A late finish of a cancelled task is dropped on the worker.
    env.core.task_finished(w(1), t(2), 8, &mut env.comm);
    assert_eq!(env.said(), vec![Said::Free(w(1), t(2))]);
}

#[test]
fn silent_workers_are_removed_by_the_clock() {
    let mut env = Env::new(4);
    env.worker(1, 1);
    env.worker(2, 1);
    let later = env.now + Duration::from_secs(2);
    env.core.heartbeat(w(2), later);
    let removed = env
        .core
        .tick(env.now + Duration::from_millis(3500), &mut env.comm);
    assert_eq!(removed, vec![w(1)]);
    assert!(env.core.has_worker(w(2)));
    env.said();
}

#[test]
fn a_stall_of_the_scheduler_s_own_loop_does_not_count_as_silence() {
    let mut env = Env::new(4);
    env.worker(1, 1);
    env.worker(2, 1);
    // The loop was stuck for 3.3 s: both workers' heartbeats wait unread.
    let stuck_until = env.now + Duration::from_millis(3300);
    env.core
        .loop_stalled(Duration::from_millis(3300), stuck_until);
    assert!(env.core.tick(stuck_until, &mut env.comm).is_empty());
    // Afterwards, only worker 2 speaks: worker 1 is removed in due time.
    env.core
        .heartbeat(w(2), stuck_until + Duration::from_secs(2));
    let removed = env
        .core
        .tick(stuck_until + Duration::from_millis(3500), &mut env.comm);
    assert_eq!(removed, vec![w(1)]);
    env.said();
}

// ---- random event sequences ----

#[derive(Debug, Clone)]
enum Step {
    AddWorker(u32),
    RemoveWorker(usize),
    /// Worker (by index) runs its oldest task whose inputs are made; its
    /// report waits in the worker's outbox.
    Progress(usize),
    /// Worker (by index) delivers its oldest report: reports of different
    /// workers reach the core in any order.
    Deliver(usize),
    /// Worker (by index) delivers all its reports in one batch, placed
    /// once at its end (as the scheduler applies an `events` call).
    DeliverAll(usize),
    /// Worker fails its oldest task.
    FailOne(usize),
    /// Answer a pending steal request.
    AnswerSteal(bool),
    Release(u64),
    Tick(u64),
    /// Worker (by index) starts retiring.
    Retire(usize),
    /// Answer a pending copy request.
    AnswerReplicate(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (1u32..4).prop_map(Step::AddWorker),
        1 => (0usize..4).prop_map(Step::RemoveWorker),
        8 => (0usize..4).prop_map(Step::Progress),
        6 => (0usize..4).prop_map(Step::Deliver),
        2 => (0usize..4).prop_map(Step::DeliverAll),
        1 => (0usize..4).prop_map(Step::FailOne),
        2 => any::<bool>().prop_map(Step::AnswerSteal),
        1 => (0u64..40).prop_map(Step::Release),
        1 => (0u64..2000).prop_map(Step::Tick),
        1 => (0usize..4).prop_map(Step::Retire),
        2 => any::<bool>().prop_map(Step::AnswerReplicate),
    ]
}

/// Random DAG: task i depends on up to 3 earlier tasks.
fn graph() -> impl Strategy<Value = Vec<Vec<u64>>> {
    prop::collection::vec(
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        1..40,
    )
    .prop_map(|tasks| {
        tasks
            .iter()
            .enumerate()
            .map(|(i, deps)| {
                let mut d: Vec<u64> = if i == 0 {
                    vec![]
                } else {
                    deps.iter().map(|x| x.index(i) as u64).collect()
                };
                d.sort();
                d.dedup();
                d
            })
            .collect()
    })
}

/// The simulated workers: their queues in assignment order.
struct World {
    env: Env,
    queues: BTreeMap<WorkerId, VecDeque<TaskId>>,
    /// Each worker's reports not delivered yet: the task and whether it
    /// finished (else failed).
    outboxes: BTreeMap<WorkerId, VecDeque<(TaskId, bool)>>,
    /// Results made on a worker whose report has not reached the core: a
    /// task staged on any worker may read them (from that peer).
    made: BTreeMap<TaskId, WorkerId>,
    steals: VecDeque<(WorkerId, TaskId)>,
    copies: VecDeque<(WorkerId, TaskId)>,
    next_worker: u64,
    done: BTreeMap<TaskId, u32>,
    failed: BTreeMap<TaskId, String>,
}

impl World {
    fn absorb(&mut self) {
        for said in self.env.said() {
            match said {
                Said::Assign(worker, task, _) => self
                    .queues
                    .get_mut(&worker)
                    .expect("known worker")
                    .push_back(task),
                Said::Cancel(worker, task) => {
                    // A result made but not yet reported stays (its report
                    // is on the way), as on a real worker.
                    if let Some(q) = self.queues.get_mut(&worker) {
                        q.retain(|x| *x != task);
                    }
                }
                Said::Steal(worker, tasks) => {
                    self.steals.extend(tasks.into_iter().map(|t| (worker, t)))
                }
                Said::Done(task, _) => *self.done.entry(task).or_default() += 1,
                Said::Failed(task, message) => {
                    self.failed.insert(task, message);
                }
                Said::Replicate(to, task, _) => self.copies.push_back((to, task)),
                Said::Free(..) => {}
            }
        }
        // A retired worker leaves as soon as it may.
        let leaving = self
            .queues
            .keys()
            .copied()
            .find(|w| self.env.core.retirement_complete(*w));
        if let Some(worker) = leaving {
            self.forget_worker(worker);
            let before = self.env.core.recomputed();
            self.env.core.remove_worker(worker, &mut self.env.comm);
            // Leaving after a complete retirement loses no result a peer could take.
            let peers = self.queues.keys().any(|w| !self.env.core.is_retiring(*w));
            assert!(
                !peers || self.env.core.recomputed() == before,
                "{worker} retired but results were recomputed"
            );
            self.absorb();
        }
    }

    /// Where in its queue the worker's first task whose inputs are all
    /// made is (reported, or made on a worker that has not reported them).
    fn runnable(&self, worker: WorkerId) -> Option<usize> {
        let core = &self.env.core;
        self.queues[&worker].iter().position(|task| {
            core.spec(*task).is_some_and(|spec| {
                spec.dependencies()
                    .iter()
                    .all(|d| matches!(core.outcome(*d), Some(Ok(_))) || self.made.contains_key(d))
            })
        })
    }

    /// The worker died: its queue, its reports not sent and the results it
    /// made are gone.
    fn forget_worker(&mut self, worker: WorkerId) {
        self.queues.remove(&worker);
        self.outboxes.remove(&worker);
        self.made.retain(|_, on| *on != worker);
    }

    fn worker_at(&self, index: usize) -> Option<WorkerId> {
        self.queues
            .keys()
            .nth(index % self.queues.len().max(1))
            .copied()
    }

    fn apply(&mut self, step: &Step) {
        let chosen = match *step {
            Step::RemoveWorker(i) | Step::Progress(i) | Step::FailOne(i) | Step::Retire(i) => {
                self.worker_at(i)
            }
            _ => None,
        };
        let runnable = chosen.and_then(|worker| self.runnable(worker));
        let env = &mut self.env;
        match *step {
            Step::AddWorker(slots) => {
                self.next_worker += 1;
                self.queues.insert(w(self.next_worker), VecDeque::new());
                env.core
                    .add_worker(w(self.next_worker), slots, env.now, &mut env.comm);
            }
            Step::RemoveWorker(_) => {
                if let Some(worker) = chosen {
                    self.queues.remove(&worker);
                    self.outboxes.remove(&worker);
                    self.made.retain(|_, on| *on != worker);
                    env.core.remove_worker(worker, &mut env.comm);
                }
            }
            Step::Progress(_) | Step::FailOne(_) => {
                let Some(worker) = chosen else { return };
                // A worker runs a queued task once its inputs are made (a
                // staged one waits for them).
                let Some(at) = runnable else {
                    return;
                };
                let task = self
                    .queues
                    .get_mut(&worker)
                    .expect("known")
                    .remove(at)
                    .expect("found");
                env.core.task_started(worker, task);
                let finished = !matches!(step, Step::FailOne(_));
                if finished {
                    self.made.insert(task, worker);
                }
                self.outboxes
                    .entry(worker)
                    .or_default()
                    .push_back((task, finished));
            }
            Step::Deliver(i) | Step::DeliverAll(i) => {
                let Some(worker) = self
                    .outboxes
                    .keys()
                    .nth(i % self.outboxes.len().max(1))
                    .copied()
                else {
                    return;
                };
                let outbox = self.outboxes.get_mut(&worker).expect("listed");
                let reports = match step {
                    Step::DeliverAll(_) => std::mem::take(outbox),
                    _ => outbox.pop_front().into_iter().collect(),
                };
                env.core.defer_placement();
                for (task, finished) in reports {
                    if self.made.get(&task) == Some(&worker) {
                        self.made.remove(&task);
                    }
                    if finished {
                        env.core.task_finished(worker, task, 16, &mut env.comm);
                    } else {
                        env.core
                            .task_failed(worker, task, error("random failure"), &mut env.comm);
                    }
                }
                env.core.place_deferred(&mut env.comm);
            }
            Step::AnswerSteal(give) => {
                if let Some((worker, task)) = self.steals.pop_front() {
                    let queued = self.queues.get(&worker).is_some_and(|q| q.contains(&task));
                    let given = give && queued;
                    if given {
                        self.queues
                            .get_mut(&worker)
                            .expect("known")
                            .retain(|x| *x != task);
                    }
                    env.core.steal_response(worker, task, given, &mut env.comm);
                }
            }
            Step::Release(id) => env.core.release(t(id), &mut env.comm),
            Step::Retire(_) => {
                if let Some(worker) = chosen {
                    env.core.retire_worker(worker, &mut env.comm);
                }
            }
            Step::AnswerReplicate(ok) => {
                if let Some((worker, task)) = self.copies.pop_front() {
                    let ok = ok && self.queues.contains_key(&worker);
                    env.core.replicated(worker, task, ok, &mut env.comm);
                }
            }
            Step::Tick(ms) => {
                env.now += Duration::from_millis(ms);
                for worker in self.queues.keys().copied().collect::<Vec<_>>() {
                    env.core.heartbeat(worker, env.now);
                }
                env.core.tick(env.now, &mut env.comm);
            }
        }
        self.absorb();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any event sequence keeps the invariants; afterwards, with one worker
    /// left that runs everything, every task ends done or failed.
    #[test]
    fn random_event_sequences_keep_invariants_and_finish(graph in graph(), steps in prop::collection::vec(step(), 0..120), staging in any::<bool>()) {
        run_world(&graph, &steps, staging)?;
    }
}

/// Plays `steps` on `graph`, checking the invariants at every step; then,
/// with one worker left that runs everything, every task ends done or
/// failed.
fn run_world(graph: &[Vec<u64>], steps: &[Step], staging: bool) -> Result<(), TestCaseError> {
    {
        let mut world = World {
            env: if staging {
                Env::staging(2)
            } else {
                Env::new(2)
            },
            queues: BTreeMap::new(),
            outboxes: BTreeMap::new(),
            made: BTreeMap::new(),
            steals: VecDeque::new(),
            copies: VecDeque::new(),
            next_worker: 0,
            done: BTreeMap::new(),
            failed: BTreeMap::new(),
        };
        // Three tenants: equal, weighted 3, and one with a slot quota of 1.
        let env = &mut world.env;
        env.core.set_tenant(
            TenantId(1),
            TenantShare {
                weight: 3,
                max_slots: None,
            },
            &mut env.comm,
        );
        env.core.set_tenant(
            TenantId(2),
            TenantShare {
                weight: 1,
                max_slots: Some(1),
            },
            &mut env.comm,
        );
        let batch: Vec<_> = graph
            .iter()
            .enumerate()
            .map(|(i, deps)| tenant_spec(i as u64, deps, TenantId((i % 3) as u32)))
            .collect();
        world.env.submit(batch);
        world.absorb();
        for step in steps {
            world.apply(step);
        }
        // Drain: answer steals, then keep one healthy worker busy until quiet.
        while !world.steals.is_empty() {
            world.apply(&Step::AnswerSteal(false));
        }
        world.apply(&Step::AddWorker(2));
        for _ in 0..10_000 {
            // A worker with a task it can run (a staged task may wait for
            // one on another worker).
            let busy: Vec<usize> = (0..world.queues.len())
                .filter(|i| {
                    world
                        .worker_at(*i)
                        .is_some_and(|wk| world.runnable(wk).is_some())
                })
                .collect();
            let reporting = world.outboxes.values().position(|o| !o.is_empty());
            if let Some(i) = reporting {
                world.apply(&Step::Deliver(i));
            } else if let Some(i) = busy.first() {
                world.apply(&Step::Progress(*i));
            } else if !world.steals.is_empty() {
                world.apply(&Step::AnswerSteal(false));
            } else if !world.copies.is_empty() {
                world.apply(&Step::AnswerReplicate(true));
            } else {
                break;
            }
        }
        prop_assert_eq!(world.env.core.queued_count(), 0);
        for i in 0..graph.len() as u64 {
            let task = t(i);
            let finished = world.done.contains_key(&task) || world.failed.contains_key(&task);
            if !finished {
                let mut deps: Vec<String> = Vec::new();
                let mut stack = graph[i as usize].clone();
                while let Some(d) = stack.pop() {
                    deps.push(world.env.core.describe(t(d)));
                    stack.extend(graph[d as usize].iter().copied());
                }
                let queues: Vec<_> = world.queues.iter().map(|(w, q)| (*w, q.clone())).collect();
                prop_assert!(
                    finished,
                    "neither done nor failed: {}; deps: {:?}; queues {:?}",
                    world.env.core.describe(task),
                    deps,
                    queues
                );
            }
        }
        // Tasks that failed name a cause; no task is reported failed twice.
        for (task, message) in &world.failed {
            prop_assert!(!message.is_empty(), "{} failed without a message", task);
        }
        let _ = C;
    }
    Ok(())
}

/// A sequence the random test found: a staged task ran on inputs not yet
/// reported, on a cluster whose workers came and went.
#[test]
fn a_staged_task_finished_before_its_inputs_were_reported_ends_done() {
    use Step::*;
    let graph: Vec<Vec<u64>> = vec![
        vec![],
        vec![],
        vec![],
        vec![1],
        vec![1],
        vec![],
        vec![],
        vec![0, 6],
        vec![],
        vec![],
        vec![],
        vec![2],
        vec![0],
        vec![3],
        vec![],
        vec![1],
        vec![11],
        vec![],
        vec![3],
        vec![],
        vec![],
        vec![1],
        vec![11],
        vec![],
        vec![],
    ];
    let steps = [
        AddWorker(3),
        Progress(0),
        Progress(0),
        FailOne(0),
        Deliver(0),
        Progress(0),
        Deliver(0),
        Deliver(0),
        Progress(0),
        Progress(0),
        Retire(0),
        Progress(0),
        Deliver(0),
        AddWorker(3),
        Progress(1),
        Deliver(0),
        Progress(0),
        AnswerReplicate(false),
        Progress(1),
        Deliver(0),
        Progress(1),
        RemoveWorker(2),
        Progress(0),
        AddWorker(1),
        Progress(1),
        Progress(0),
        Progress(2),
        Progress(2),
        Progress(1),
        Deliver(1),
        Deliver(1),
    ];
    run_world(&graph, &steps, true).unwrap();
}

#[test]
fn cancelling_many_queued_tasks_is_one_pass() {
    let mut env = Env::new(4);
    let batch: Vec<_> = (0..100_000).map(|i| spec(i, &[])).collect();
    env.submit(batch);
    assert_eq!(env.core.queued_count(), 100_000);
    let started = Instant::now();
    let all: Vec<TaskId> = (0..100_000).map(t).collect();
    env.core.cancel(&all, &mut env.comm);
    // Quadratic removal took minutes here; one pass takes milliseconds.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        started.elapsed()
    );
    assert_eq!(env.core.task_count(), 0);
    env.said();
}

#[test]
fn state_counts_follow_the_tasks() {
    let mut env = Env::new(1);
    env.worker(1, 1);
    // 0 runs, 1 queues in the scheduler, 2 waits on 0, 3 will fail.
    env.submit(vec![
        spec(0, &[]),
        spec(3, &[]),
        spec(1, &[]),
        spec(2, &[0]),
    ]);
    env.said();
    env.core.task_started(w(1), t(0));
    let counts = env.core.state_counts();
    assert_eq!(
        (
            counts.waiting,
            counts.queued,
            counts.on_workers,
            counts.running
        ),
        (1, 2, 1, 1)
    );
    env.core.task_finished(w(1), t(0), 8, &mut env.comm);
    env.said();
    env.core.task_started(w(1), t(3));
    env.core
        .task_failed(w(1), t(3), error("boom"), &mut env.comm);
    env.said();
    let counts = env.core.state_counts();
    assert_eq!((counts.done, counts.failed), (1, 1));
    assert_eq!(counts.waiting + counts.queued + counts.on_workers, 2);
}

#[test]
fn a_retiring_worker_gives_back_its_queue_and_hands_its_results_to_a_peer() {
    let mut env = Env::new(4);
    env.worker(1, 1);
    // 0 and 1 are inputs of 2; 3..=5 queue up behind them on worker 1.
    env.submit(vec![
        spec(0, &[]),
        spec(1, &[]),
        spec(2, &[0, 1]),
        spec(3, &[]),
        spec(4, &[]),
    ]);
    env.said();
    env.finish(1, 0, 100);
    env.core.task_started(w(1), t(1));
    env.said();
    env.worker(2, 1);
    env.said();
    env.core.retire_worker(w(1), &mut env.comm);
    let said = env.said();
    // The queued tasks are asked back (4 was stolen when worker 2 joined),
    // the result only it holds is copied.
    assert!(said.contains(&Said::Steal(w(1), vec![t(3)])), "{said:?}");
    assert!(
        said.contains(&Said::Replicate(w(2), t(0), w(1))),
        "{said:?}"
    );
    assert!(!env.core.retirement_complete(w(1)));
    env.core.steal_response(w(1), t(3), true, &mut env.comm);
    env.core.steal_response(w(1), t(4), true, &mut env.comm);
    let said = env.said();
    // Given-back work goes to the staying worker only.
    assert!(
        said.iter()
            .all(|s| !matches!(s, Said::Assign(w, ..) if *w == WorkerId(1))),
        "{said:?}"
    );
    env.core.replicated(w(2), t(0), true, &mut env.comm);
    assert_eq!(env.core.holders(t(0)), &[w(1), w(2)]);
    // The running task finishes; its result is copied too.
    env.core.task_finished(w(1), t(1), 8, &mut env.comm);
    let said = env.said();
    assert!(
        said.contains(&Said::Replicate(w(2), t(1), w(1))),
        "{said:?}"
    );
    assert!(!env.core.retirement_complete(w(1)));
    env.core.replicated(w(2), t(1), true, &mut env.comm);
    assert!(env.core.retirement_complete(w(1)));
    env.core.remove_worker(w(1), &mut env.comm);
    env.said();
    assert_eq!(env.core.recomputed(), 0);
    assert!(!env.core.is_active(t(0)) && !env.core.is_active(t(1)));
}

#[test]
fn a_retiring_worker_does_not_count_deaths_and_a_lost_copy_is_asked_again() {
    let mut env = Env::new(4);
    env.worker(1, 1);
    env.worker(2, 1);
    env.worker(3, 1);
    env.submit(vec![spec(0, &[])]);
    env.said();
    env.finish(1, 0, 10);
    env.said();
    env.core.retire_worker(w(1), &mut env.comm);
    let said = env.said();
    let target = said
        .iter()
        .find_map(|s| match s {
            Said::Replicate(to, task, _) if *task == t(0) => Some(*to),
            _ => None,
        })
        .expect("a copy asked");
    // The target dies: the copy is asked of the other peer.
    env.core.remove_worker(target, &mut env.comm);
    let said = env.said();
    let other = if target == w(2) { w(3) } else { w(2) };
    assert!(
        said.contains(&Said::Replicate(other, t(0), w(1))),
        "{said:?}"
    );
    env.core.replicated(other, t(0), true, &mut env.comm);
    assert!(env.core.retirement_complete(w(1)));
    assert_eq!(env.core.recomputed(), 0);
}

fn assigned_per_tenant(said: &[Said], split: u64) -> (usize, usize) {
    let count = |low: bool| {
        said.iter()
            .filter(|s| matches!(s, Said::Assign(_, task, _) if (task.0 < split) == low))
            .count()
    };
    (count(true), count(false))
}

#[test]
fn slots_are_shared_by_weight_between_tenants_with_queued_work() {
    // One worker of 4 slots, one task per slot: 4 tasks on workers at a time.
    let mut env = Env::new(1);
    let (light, heavy) = (TenantId(1), TenantId(2));
    env.core.set_tenant(
        heavy,
        TenantShare {
            weight: 3,
            max_slots: None,
        },
        &mut env.comm,
    );
    let batch: Vec<_> = (0..20)
        .map(|i| tenant_spec(i, &[], if i < 10 { light } else { heavy }))
        .collect();
    env.submit(batch);
    env.worker(1, 4);
    let said = env.said();
    assert_eq!(assigned_per_tenant(&said, 10), (1, 3), "{said:?}");
    // A heavy task ends: the freed slot goes back to the heavy tenant (1:3
    // again), and a light one's slot to the light tenant.
    let heavy_task = said
        .iter()
        .find_map(|s| match s {
            Said::Assign(_, task, _) if task.0 >= 10 => Some(task.0),
            _ => None,
        })
        .unwrap();
    env.finish(1, heavy_task, 1);
    let said = env.said();
    assert_eq!(assigned_per_tenant(&said, 10), (0, 1), "{said:?}");
    env.finish(1, 0, 1);
    let said = env.said();
    assert_eq!(assigned_per_tenant(&said, 10), (1, 0), "{said:?}");
    assert_eq!(env.core.tenant_usage(light).on_workers, 1);
    assert_eq!(env.core.tenant_usage(heavy).on_workers, 3);
}

#[test]
fn a_tenant_at_its_slot_quota_waits_and_the_others_use_the_slots() {
    let mut env = Env::new(1);
    let (capped, free) = (TenantId(1), TenantId(2));
    env.core.set_tenant(
        capped,
        TenantShare {
            weight: 1,
            max_slots: Some(1),
        },
        &mut env.comm,
    );
    let batch: Vec<_> = (0..8)
        .map(|i| tenant_spec(i, &[], if i < 4 { capped } else { free }))
        .collect();
    env.submit(batch);
    env.worker(1, 4);
    let said = env.said();
    assert_eq!(assigned_per_tenant(&said, 4), (1, 3), "{said:?}");
    // The capped tenant's task ends: its next one takes the slot.
    env.finish(1, 0, 1);
    let said = env.said();
    assert_eq!(assigned_per_tenant(&said, 4), (1, 0), "{said:?}");
}

#[test]
fn a_tenant_s_usage_counts_its_active_tasks_and_stored_bytes() {
    let mut env = Env::new(4);
    let tenant = TenantId(5);
    env.submit(vec![
        tenant_spec(1, &[], tenant),
        tenant_spec(2, &[1], tenant),
    ]);
    assert_eq!(
        env.core.tenant_usage(tenant),
        TenantUsage {
            active: 2,
            on_workers: 0,
            stored_bytes: 0
        }
    );
    env.worker(1, 1);
    env.said();
    env.finish(1, 1, 100);
    env.said();
    assert_eq!(
        env.core.tenant_usage(tenant),
        TenantUsage {
            active: 1,
            on_workers: 1,
            stored_bytes: 100
        }
    );
    env.finish(1, 2, 7);
    env.core.release(t(1), &mut env.comm);
    env.said();
    assert_eq!(
        env.core.tenant_usage(tenant),
        TenantUsage {
            active: 0,
            on_workers: 0,
            stored_bytes: 7
        }
    );
    env.core.release(t(2), &mut env.comm);
    env.said();
    assert_eq!(env.core.tenant_usage(tenant), TenantUsage::default());
}

#[test]
fn a_restored_core_waits_for_rejoining_workers_and_recomputes_only_what_none_kept() {
    // Before the restart: 1 and 2 finished, 3 failed, 4 (needs 1 and 2)
    // and 5 (needs 3) waited, 6 was forgotten.
    let mut env = Env::new(4);
    env.core.hold_placement();
    env.submit(vec![
        spec(1, &[]),
        spec(2, &[]),
        spec(3, &[]),
        spec(4, &[1, 2]),
        spec(5, &[3]),
        spec(6, &[]),
    ]);
    env.core.restore_done(t(1), 10, &mut env.comm);
    env.core.restore_done(t(2), 20, &mut env.comm);
    env.core.restore_failed(t(3), error("boom"), &mut env.comm);
    env.core.restore_forgotten(t(6), &mut env.comm);
    let said = env.said();
    assert!(
        said.contains(&Said::Failed(t(3), "boom".into())),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|s| matches!(s, Said::Failed(task, _) if *task == t(5)))
    );
    assert_eq!(env.core.task_count(), 5);
    let mut awaited = env.core.results_awaited();
    awaited.sort();
    assert_eq!(awaited, vec![t(1), t(2)]);
    // A worker rejoins with 1's result and one the core never knew: the
    // unknown one is freed, nothing is placed while the hold lasts.
    env.worker(7, 1);
    env.core
        .results_held(w(7), &[(t(1), 10), (t(99), 5)], &mut env.comm);
    assert_eq!(env.said(), vec![Said::Free(w(7), t(99))]);
    assert_eq!(env.core.holders(t(1)), &[w(7)]);
    assert_eq!(env.core.results_awaited(), vec![t(2)]);
    // 2's worker never comes back: resuming recomputes 2 alone, then 4.
    env.core.resume_placement(&mut env.comm);
    assert_eq!(env.said(), vec![Said::Assign(w(7), t(2), vec![])]);
    assert_eq!(env.core.recomputed(), 1);
    env.finish(7, 2, 20);
    assert_eq!(
        env.said(),
        vec![
            Said::Done(t(2), w(7)),
            Said::Assign(w(7), t(4), vec![(t(1), w(7)), (t(2), w(7))])
        ]
    );
}

#[test]
fn a_rejoining_worker_s_result_completes_a_task_that_was_queued_again() {
    let mut env = Env::new(4);
    env.core.hold_placement();
    env.submit(vec![spec(1, &[]), spec(2, &[1])]);
    // The journal lost 1's `finished`: it is queued, yet a worker has it.
    env.worker(3, 1);
    env.core.results_held(w(3), &[(t(1), 8)], &mut env.comm);
    assert_eq!(env.said(), vec![Said::Done(t(1), w(3))]);
    env.core.resume_placement(&mut env.comm);
    assert_eq!(
        env.said(),
        vec![Said::Assign(w(3), t(2), vec![(t(1), w(3))])]
    );
    assert_eq!(env.core.recomputed(), 0);
}

// ---- staging ----

#[test]
fn a_chain_is_staged_on_the_worker_making_its_head_and_runs_without_round_trips() {
    let mut env = Env::staging(4);
    env.worker(1, 1);
    env.submit(vec![spec(1, &[]), spec(2, &[1]), spec(3, &[2])]);
    // All three go at once: 2 and 3 wait on the worker for their inputs.
    assert_eq!(
        env.said(),
        vec![
            Said::Assign(w(1), t(1), vec![]),
            Said::Assign(w(1), t(2), vec![(t(1), w(1))]),
            Said::Assign(w(1), t(3), vec![(t(2), w(1))]),
        ]
    );
    assert_eq!(env.core.state_counts().on_workers, 3);
    // Finishing each says nothing new to the worker: it goes on by itself.
    env.finish(1, 1, 8);
    assert_eq!(env.said(), vec![Said::Done(t(1), w(1))]);
    env.finish(1, 2, 8);
    assert_eq!(env.said(), vec![Said::Done(t(2), w(1))]);
    env.finish(1, 3, 8);
    assert_eq!(env.said(), vec![Said::Done(t(3), w(1))]);
}

#[test]
fn staging_stops_at_a_full_queue_and_goes_on_as_tasks_finish() {
    let mut env = Env::staging(2);
    env.worker(1, 1);
    let chain = (1..=5)
        .map(|i| {
            if i == 1 {
                spec(1, &[])
            } else {
                spec(i, &[i - 1])
            }
        })
        .collect();
    env.submit(chain);
    assert_eq!(
        env.said(),
        vec![
            Said::Assign(w(1), t(1), vec![]),
            Said::Assign(w(1), t(2), vec![(t(1), w(1))]),
        ]
    );
    env.finish(1, 1, 8);
    assert_eq!(
        env.said(),
        vec![
            Said::Done(t(1), w(1)),
            Said::Assign(w(1), t(3), vec![(t(2), w(1))]),
        ]
    );
}

#[test]
fn a_task_whose_inputs_are_made_on_two_workers_waits_if_neither_has_room() {
    let mut env = Env::staging(1);
    env.worker(1, 1);
    env.worker(2, 1);
    env.submit(vec![spec(1, &[]), spec(2, &[]), spec(3, &[1, 2])]);
    assert_eq!(
        env.said(),
        vec![
            Said::Assign(w(1), t(1), vec![]),
            Said::Assign(w(2), t(2), vec![]),
        ]
    );
    env.finish(1, 1, 8);
    env.finish(2, 2, 8);
    let said = env.said();
    assert!(
        said.contains(&Said::Assign(w(1), t(3), vec![(t(1), w(1)), (t(2), w(2))])),
        "{said:?}"
    );
}

#[test]
fn a_stencil_step_is_staged_across_the_workers_making_its_inputs() {
    // Task Bench's stencil of width 2: every task of a step reads both of
    // the step before, made on two workers.
    let mut env = Env::staging(4);
    env.worker(1, 1);
    env.worker(2, 1);
    env.submit(vec![
        spec(1, &[]),
        spec(2, &[]),
        spec(3, &[1, 2]),
        spec(4, &[1, 2]),
    ]);
    // One of the next step on each worker, each reading the other's input
    // from its peer as soon as it is made.
    assert_eq!(
        env.said(),
        vec![
            Said::Assign(w(1), t(1), vec![]),
            Said::Assign(w(2), t(2), vec![]),
            Said::Assign(w(1), t(3), vec![(t(1), w(1)), (t(2), w(2))]),
            Said::Assign(w(2), t(4), vec![(t(1), w(1)), (t(2), w(2))]),
        ]
    );
    // Worker 1 reads 2 from its peer and reports 3 before worker 2's report
    // of 2 arrives: 3 is recorded once 2 is.
    env.finish(1, 1, 8);
    assert_eq!(env.said(), vec![Said::Done(t(1), w(1))]);
    env.finish(1, 3, 8);
    assert_eq!(env.said(), vec![], "3 waits for its input's report");
    assert_eq!(env.core.state_counts().done, 1);
    env.finish(2, 2, 8);
    assert_eq!(
        env.said(),
        vec![Said::Done(t(2), w(2)), Said::Done(t(3), w(1))]
    );
    env.finish(2, 4, 8);
    assert_eq!(env.said(), vec![Said::Done(t(4), w(2))]);
}

#[test]
fn a_task_finished_early_and_taken_back_is_not_recorded() {
    let mut env = Env::staging(4);
    env.worker(1, 1);
    env.worker(2, 1);
    let mut input = spec(2, &[]);
    input.retries = 1;
    env.submit(vec![spec(1, &[]), input, spec(3, &[1, 2])]);
    env.said();
    env.finish(1, 1, 8);
    env.finish(1, 3, 8);
    env.said();
    // Its input fails on its worker (a retry): 3 waits again, and its early
    // finish is forgotten with the assignment.
    env.core.task_started(w(2), t(2));
    env.core
        .task_failed(w(2), t(2), error("flaky"), &mut env.comm);
    let said = env.said();
    assert!(said.contains(&Said::Cancel(w(1), t(3))), "{said:?}");
    assert!(env.core.early_finishes.is_empty());
    // It is staged again behind the retry; this time it runs in order.
    let (retried_on, _) = env.core.assignment(t(2)).expect("placed again");
    env.finish(retried_on.0, 2, 8);
    let said = env.said();
    assert!(said.contains(&Said::Done(t(2), retried_on)), "{said:?}");
    assert!(
        !said
            .iter()
            .any(|s| matches!(s, Said::Done(task, _) if *task == t(3))),
        "{said:?}"
    );
    let (worker, _) = env.core.assignment(t(3)).expect("assigned again");
    env.finish(worker.0, 3, 8);
    assert!(env.said().contains(&Said::Done(t(3), worker)));
}

#[test]
fn a_failed_input_fails_its_staged_dependents_and_cancels_them_on_the_worker() {
    let mut env = Env::staging(4);
    env.worker(1, 1);
    env.submit(vec![spec(1, &[]), spec(2, &[1])]);
    env.said();
    env.core.task_started(w(1), t(1));
    env.core
        .task_failed(w(1), t(1), error("boom"), &mut env.comm);
    let said = env.said();
    assert!(said.contains(&Said::Cancel(w(1), t(2))), "{said:?}");
    assert!(
        said.iter()
            .any(|s| matches!(s, Said::Failed(task, _) if *task == t(2))),
        "{said:?}"
    );
}

#[test]
fn staged_tasks_wait_again_when_their_inputs_leave_the_worker() {
    // A retried input may run elsewhere: its staged dependent is taken back.
    let mut env = Env::staging(4);
    env.worker(1, 1);
    let mut head = spec(1, &[]);
    head.retries = 1;
    env.submit(vec![head, spec(2, &[1])]);
    env.said();
    env.core.task_started(w(1), t(1));
    env.core
        .task_failed(w(1), t(1), error("flaky"), &mut env.comm);
    let said = env.said();
    assert!(said.contains(&Said::Cancel(w(1), t(2))), "{said:?}");
    // Placed again, with its dependent staged again behind it.
    assert!(said.contains(&Said::Assign(w(1), t(1), vec![])), "{said:?}");
    assert!(
        said.contains(&Said::Assign(w(1), t(2), vec![(t(1), w(1))])),
        "{said:?}"
    );
    // The worker dies: both go back, the dependent to waiting.
    env.core.remove_worker(w(1), &mut env.comm);
    env.said();
    assert_eq!(env.core.state_counts().waiting, 1);
    assert_eq!(env.core.queued_count(), 1);
    env.worker(2, 1);
    env.said();
    env.finish(2, 1, 8);
    env.finish(2, 2, 8);
    assert_eq!(env.core.state_counts().done, 2);
    env.said();
}

#[test]
fn staged_tasks_and_the_inputs_they_wait_for_are_not_stolen() {
    let mut env = Env::staging(4);
    env.worker(1, 1);
    // 1 runs; 2 is staged on it; 3 and 4 are plain queued tasks.
    env.submit(vec![
        spec(1, &[]),
        spec(2, &[1]),
        spec(3, &[]),
        spec(4, &[]),
    ]);
    env.said();
    env.core.task_started(w(1), t(1));
    env.worker(2, 1);
    let said = env.said();
    assert!(said.contains(&Said::Steal(w(1), vec![t(4)])), "{said:?}");
    assert!(
        !said
            .iter()
            .any(|s| matches!(s, Said::Steal(_, tasks) if tasks.contains(&t(2)))),
        "{said:?}"
    );
}

#[test]
fn a_second_finish_of_a_task_on_its_holder_keeps_the_result() {
    // A run cancelled too late and assigned to the same worker again ends
    // twice there: the worker keeps one copy per task, so freeing the
    // "stale" copy would free the result the core counts on.
    let mut env = Env::new(4);
    env.worker(1, 1);
    env.submit(vec![spec(1, &[]), spec(2, &[1])]);
    env.said();
    env.finish(1, 1, 8);
    assert_eq!(
        env.said(),
        vec![
            Said::Done(t(1), w(1)),
            Said::Assign(w(1), t(2), vec![(t(1), w(1))]),
        ]
    );
    env.finish(1, 1, 8);
    assert_eq!(env.said(), vec![], "the holder's copy stays");
    // A stale finish from a worker that does not hold it is dropped there.
    env.worker(2, 1);
    env.said();
    env.finish(2, 1, 8);
    assert_eq!(env.said(), vec![Said::Free(w(2), t(1))]);
    // Once nobody needs it, the holder frees it as ever.
    env.core.release(t(1), &mut env.comm);
    assert_eq!(env.said(), vec![], "2 still reads it");
    env.finish(1, 2, 8);
    let said = env.said();
    assert!(said.contains(&Said::Free(w(1), t(1))), "{said:?}");
}
