//! Detached jobs: tasks a session handed to the scheduler under a name, so
//! that they outlive it (`wrun submit --detach`), until another session
//! adopts them (`wrun gather`, `wrun logs`, `wrun cancel`).

use std::collections::HashMap;

use wrun_core::{TaskId, TenantId};
use wrun_proto::TaskKey;

/// Why a job could not be detached or adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JobError {
    #[error("no task with key {0} in this session")]
    UnknownKey(TaskKey),
    #[error("no job `{name}`; the scheduler has: {known}")]
    UnknownJob { name: String, known: String },
    #[error("key {key} of job `{name}` is already used in this session")]
    KeyInUse { key: TaskKey, name: String },
}

/// The jobs no session owns, by tenant and name, each with its tasks in
/// submission order. Each tenant has its own names: another tenant's job
/// is not found, and a name may be used by several tenants.
#[derive(Default)]
pub(crate) struct Jobs {
    by_name: HashMap<(TenantId, String), Vec<(TaskKey, TaskId)>>,
}

impl Jobs {
    /// Moves `keys` out of a session's `session_keys` into the job `name`
    /// (a new `job-N` when empty, `N` drawn from `next_id`); returns the name.
    /// Nothing moves unless every key is the session's.
    pub(crate) fn detach(
        &mut self,
        tenant: TenantId,
        session_keys: &mut HashMap<TaskKey, TaskId>,
        keys: &[TaskKey],
        name: &str,
        next_id: &mut u64,
    ) -> Result<String, JobError> {
        if let Some(missing) = keys.iter().find(|k| !session_keys.contains_key(k)) {
            return Err(JobError::UnknownKey(*missing));
        }
        let name = if name.is_empty() {
            *next_id += 1;
            format!("job-{next_id}")
        } else {
            name.to_owned()
        };
        let job = self.by_name.entry((tenant, name.clone())).or_default();
        for key in keys {
            let task = session_keys.remove(key).expect("checked");
            job.push((*key, task));
        }
        Ok(name)
    }

    /// Takes the job `name` out, into a session whose keys are
    /// `session_keys`; returns its tasks in submission order.
    pub(crate) fn adopt(
        &mut self,
        tenant: TenantId,
        session_keys: &mut HashMap<TaskKey, TaskId>,
        name: &str,
    ) -> Result<Vec<(TaskKey, TaskId)>, JobError> {
        let key = (tenant, name.to_owned());
        let job = self.tasks_of(tenant, name)?;
        if let Some((key, _)) = job.iter().find(|(key, _)| session_keys.contains_key(key)) {
            return Err(JobError::KeyInUse {
                key: *key,
                name: name.to_owned(),
            });
        }
        let job = self.by_name.remove(&key).expect("checked");
        session_keys.extend(job.iter().copied());
        Ok(job)
    }

    /// The tasks of the job `name`, which stays detached.
    pub(crate) fn tasks_of(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<&[(TaskKey, TaskId)], JobError> {
        if let Some(job) = self.by_name.get(&(tenant, name.to_owned())) {
            return Ok(job);
        }
        let mut known: Vec<&str> = self
            .by_name
            .keys()
            .filter(|(t, _)| *t == tenant)
            .map(|(_, n)| n.as_str())
            .collect();
        known.sort_unstable();
        Err(JobError::UnknownJob {
            name: name.to_owned(),
            known: if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
        })
    }

    /// Every job: its tenant, name and tasks (for a journal snapshot).
    pub(crate) fn all(&self) -> impl Iterator<Item = (TenantId, &str, &[(TaskKey, TaskId)])> {
        self.by_name
            .iter()
            .map(|((tenant, name), tasks)| (*tenant, name.as_str(), tasks.as_slice()))
    }

    /// Adds tasks to a job, as a journal replays a detach: the tasks leave
    /// any job they were in before (a job adopted then detached again).
    pub(crate) fn restore(&mut self, tenant: TenantId, name: &str, tasks: &[(TaskKey, TaskId)]) {
        let moving: std::collections::HashSet<TaskId> = tasks.iter().map(|(_, t)| *t).collect();
        for job in self.by_name.values_mut() {
            job.retain(|(_, t)| !moving.contains(t));
        }
        self.by_name.retain(|_, job| !job.is_empty());
        self.by_name
            .entry((tenant, name.to_owned()))
            .or_default()
            .extend_from_slice(tasks);
    }

    /// Drops from every job the tasks `keep` says are gone.
    pub(crate) fn retain_tasks(&mut self, mut keep: impl FnMut(TaskId) -> bool) {
        for job in self.by_name.values_mut() {
            job.retain(|(_, t)| keep(*t));
        }
        self.by_name.retain(|_, job| !job.is_empty());
    }

    /// Each job's name and task count, by name: one tenant's, or all.
    pub(crate) fn summary(&self, tenant: Option<TenantId>) -> Vec<(String, u64)> {
        let mut jobs: Vec<(String, u64)> = self
            .by_name
            .iter()
            .filter(|((t, _), _)| tenant.is_none_or(|tenant| *t == tenant))
            .map(|((_, name), tasks)| (name.clone(), tasks.len() as u64))
            .collect();
        jobs.sort();
        jobs
    }

    /// Every job of `tenant`, taken out (the tenant was removed).
    pub(crate) fn take_all_of(&mut self, tenant: TenantId) -> Vec<TaskId> {
        let names: Vec<_> = self
            .by_name
            .keys()
            .filter(|(t, _)| *t == tenant)
            .cloned()
            .collect();
        names
            .into_iter()
            .flat_map(|key| self.by_name.remove(&key).unwrap_or_default())
            .map(|(_, task)| task)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: TenantId = TenantId(1);
    const B: TenantId = TenantId(2);

    fn keys(pairs: &[(u64, u64)]) -> HashMap<TaskKey, TaskId> {
        pairs
            .iter()
            .map(|(k, t)| (TaskKey(*k), TaskId(*t)))
            .collect()
    }

    #[test]
    fn a_detached_job_moves_whole_to_the_session_that_adopts_it() {
        let mut jobs = Jobs::default();
        let mut first = keys(&[(1, 10), (2, 11), (3, 12)]);
        let mut next = 41;
        let name = jobs
            .detach(A, &mut first, &[TaskKey(2), TaskKey(1)], "", &mut next)
            .unwrap();
        assert_eq!(name, "job-42");
        assert_eq!(first, keys(&[(3, 12)]));
        assert_eq!(jobs.summary(Some(A)), vec![("job-42".to_owned(), 2)]);
        assert_eq!(jobs.summary(None), vec![("job-42".to_owned(), 2)]);
        // Another tenant neither sees nor adopts it.
        assert!(jobs.summary(Some(B)).is_empty());
        assert_eq!(
            jobs.adopt(B, &mut HashMap::new(), "job-42")
                .unwrap_err()
                .to_string(),
            "no job `job-42`; the scheduler has: none"
        );
        let mut second = HashMap::new();
        let tasks = jobs.adopt(A, &mut second, "job-42").unwrap();
        assert_eq!(
            tasks,
            vec![(TaskKey(2), TaskId(11)), (TaskKey(1), TaskId(10))]
        );
        assert_eq!(second, keys(&[(1, 10), (2, 11)]));
        assert!(jobs.summary(None).is_empty());
    }

    #[test]
    fn bad_detaches_and_adoptions_change_nothing() {
        let mut jobs = Jobs::default();
        let mut session = keys(&[(1, 10)]);
        let mut next = 0;
        assert_eq!(
            jobs.detach(A, &mut session, &[TaskKey(1), TaskKey(9)], "x", &mut next),
            Err(JobError::UnknownKey(TaskKey(9)))
        );
        assert_eq!(session.len(), 1);
        jobs.detach(A, &mut session, &[TaskKey(1)], "x", &mut next)
            .unwrap();
        let mut clash = keys(&[(1, 99)]);
        assert_eq!(
            jobs.adopt(A, &mut clash, "x"),
            Err(JobError::KeyInUse {
                key: TaskKey(1),
                name: "x".into()
            })
        );
        assert_eq!(
            jobs.adopt(A, &mut clash, "y").unwrap_err().to_string(),
            "no job `y`; the scheduler has: x"
        );
        assert_eq!(jobs.summary(Some(A)), vec![("x".to_owned(), 1)]);
        assert_eq!(jobs.take_all_of(A), vec![TaskId(10)]);
        assert!(jobs.summary(None).is_empty());
    }
}
