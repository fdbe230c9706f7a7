//! The invariants of the core, checked after every step of every test.

use std::collections::{BTreeMap, BTreeSet};

use crate::task::State;
use crate::{Core, TenantId, TenantUsage};

impl<P> Core<P> {
    /// Checks every invariant; panics with the first violation. Tests call
    /// it after each event.
    pub fn sanity_check(&self) {
        let mut in_queue = BTreeSet::new();
        for (tenant, task) in self.ready.iter() {
            assert!(in_queue.insert(task), "{task} queued twice");
            assert_eq!(
                self.tasks[&task].state,
                State::Ready,
                "{task} queued but not ready"
            );
            assert_eq!(
                self.tasks[&task].spec.tenant, tenant,
                "{task} in another tenant's queue"
            );
        }
        assert_eq!(self.ready.len(), in_queue.len(), "the ready count");
        self.check_indexes();
        for (id, t) in &self.tasks {
            for dep in &t.deps {
                let d = self
                    .tasks
                    .get(dep)
                    .unwrap_or_else(|| panic!("{id} depends on forgotten {dep}"));
                assert!(
                    d.dependents.contains(id),
                    "{dep} does not list dependent {id}"
                );
            }
            for dependent in &t.dependents {
                assert!(
                    self.tasks[dependent].deps.contains(id),
                    "{dependent} listed as dependent of {id}"
                );
            }
            let active_dependents = t
                .dependents
                .iter()
                .filter(|d| self.tasks[*d].state.is_active())
                .count() as u32;
            assert_eq!(t.pending, active_dependents, "{id}: pending count");
            match &t.state {
                State::Ready => {
                    assert!(in_queue.contains(id), "{id} ready but not queued");
                    assert_eq!(self.missing(*id), 0, "{id} ready with missing inputs");
                }
                State::Waiting => assert!(self.missing(*id) > 0, "{id} waiting with all inputs"),
                State::Assigned(worker) => {
                    let w = self
                        .workers
                        .get(worker)
                        .unwrap_or_else(|| panic!("{id} on unknown {worker}"));
                    assert!(w.assigned.contains(id), "{worker} does not list {id}");
                    if t.staged {
                        assert!(self.missing(*id) > 0, "{id} staged with all inputs made");
                        assert!(
                            self.inputs_on_their_way(*id),
                            "{id} staged on {worker}, but its inputs are not all being made"
                        );
                    } else {
                        assert_eq!(self.missing(*id), 0, "{id} assigned with missing inputs");
                    }
                }
                State::Done => {
                    for holder in &t.holders {
                        assert!(
                            self.workers[holder].holds.contains(id),
                            "{holder} does not hold {id}"
                        );
                    }
                    // While placement is held (a restart), results wait for
                    // their workers to rejoin.
                    if Self::needed(t) && !self.placement_held {
                        assert!(!t.holders.is_empty(), "{id} needed but its result is gone");
                    }
                }
                State::Failed(_) => assert!(t.holders.is_empty(), "failed {id} has holders"),
            }
            if !matches!(t.state, State::Done) {
                assert!(t.holders.is_empty(), "{id} not done but held");
            }
            if t.staged {
                assert!(
                    matches!(t.state, State::Assigned(_)),
                    "{id} staged but not assigned"
                );
            }
        }
        for (task, (from, to)) in &self.handoffs {
            assert!(
                self.workers.get(from).is_some_and(|w| w.retiring),
                "{task} handed off from {from}, which is not retiring"
            );
            assert!(
                self.workers.contains_key(to),
                "{task} handed to unknown {to}"
            );
        }
        for task in self.early_finishes.keys() {
            let t = &self.tasks[task];
            assert!(
                t.staged && matches!(t.state, State::Assigned(_)) && self.missing(*task) > 0,
                "{task} finished early but is not a staged task waiting for inputs"
            );
        }
        for (id, w) in &self.workers {
            for task in &w.assigned {
                assert_eq!(
                    self.tasks[task].state,
                    State::Assigned(*id),
                    "{id} lists {task} wrongly"
                );
            }
            assert!(
                w.running.is_subset(&w.assigned),
                "{id}: running but not assigned"
            );
            assert_eq!(
                w.being_stolen,
                w.assigned
                    .iter()
                    .filter(|t| self.tasks[*t].stealing)
                    .count(),
                "{id}: tasks asked back miscounted"
            );
            assert_eq!(
                w.staged,
                w.assigned.iter().filter(|t| self.tasks[*t].staged).count(),
                "{id}: staged tasks miscounted"
            );
            for task in &w.holds {
                assert!(
                    self.tasks[task].holders.contains(id),
                    "{id} holds {task} unknown to it"
                );
            }
            assert!(
                w.assigned.len() <= w.slots as usize * self.config.queue_per_slot.max(1) as usize
            );
        }
    }
}

impl<P> Core<P> {
    /// The load index holds exactly the staying workers with their keys,
    /// and each tenant's counters match its tasks.
    fn check_indexes(&self) {
        let expected: BTreeSet<_> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring)
            .map(|(id, w)| (w.load_key(), *id))
            .collect();
        assert_eq!(self.by_load, expected, "the load index");
        let mut usage: BTreeMap<TenantId, TenantUsage> = BTreeMap::new();
        for t in self.tasks.values() {
            let u = usage.entry(t.spec.tenant).or_default();
            if t.state.is_active() {
                u.active += 1;
            }
            if matches!(t.state, State::Assigned(_)) {
                u.on_workers += 1;
            }
            if t.state == State::Done && !t.holders.is_empty() {
                u.stored_bytes += t.size;
            }
        }
        for (tenant, load) in &self.tenants {
            let expected = usage.remove(tenant).unwrap_or_default();
            assert_eq!(load.usage, expected, "{tenant:?}'s usage");
        }
        for (tenant, expected) in usage {
            assert_eq!(expected, TenantUsage::default(), "{tenant:?} uncounted");
        }
    }
}
