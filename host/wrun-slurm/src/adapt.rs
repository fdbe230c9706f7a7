//! The adaptive policy of `wrun slurm adapt`, as pure functions: from the
//! load and the worker jobs (pending or running, idle since when) to a plan
//! of jobs to submit and to cancel. The loop around it (in the CLI) only
//! observes the cluster and runs `sbatch` and `scancel`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A worker job as the adaptor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdaptJob {
    /// The Slurm job id.
    pub id: String,
    /// Still pending in Slurm's queue.
    pub pending: bool,
    /// Since when it has been idle (pending, or all its workers without a
    /// task); `None` while it works.
    pub idle_since: Option<Instant>,
}

/// The bounds an adaptor keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptBounds {
    /// Fewest worker jobs.
    pub min: u32,
    /// Most worker jobs.
    pub max: u32,
    /// A surplus job is cancelled only after it has been idle this long.
    pub idle_grace: Duration,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdaptPlan {
    /// Jobs to submit.
    pub submit: u32,
    /// Jobs to cancel (their workers retire on Slurm's SIGTERM).
    pub cancel: Vec<String>,
}

/// The jobs wanted for `load` tasks (queued in the scheduler plus on
/// workers) at `threads_per_job` each, within the bounds; jobs to submit
/// at once when short, and surplus jobs idle for the grace period to
/// cancel (pending ones first) when over.
pub fn plan(
    load: u64,
    threads_per_job: u32,
    jobs: &[AdaptJob],
    now: Instant,
    bounds: AdaptBounds,
) -> AdaptPlan {
    let wanted = load.div_ceil(u64::from(threads_per_job.max(1)));
    let target = u32::try_from(wanted)
        .unwrap_or(u32::MAX)
        .clamp(bounds.min, bounds.max);
    let have = jobs.len() as u32;
    if target > have {
        return AdaptPlan {
            submit: target - have,
            cancel: Vec::new(),
        };
    }
    let mut surplus: Vec<&AdaptJob> = jobs
        .iter()
        .filter(|job| {
            job.idle_since
                .is_some_and(|since| now.saturating_duration_since(since) >= bounds.idle_grace)
        })
        .collect();
    // Stable: among pending and among running ones, the given order stays.
    surplus.sort_by_key(|job| !job.pending);
    surplus.truncate((have - target) as usize);
    AdaptPlan {
        submit: 0,
        cancel: surplus.into_iter().map(|job| job.id.clone()).collect(),
    }
}

/// Carries idle times from one look to the next: a job idle now keeps the
/// moment it became idle (or starts at `now`); a working job has none.
/// Jobs no longer listed are dropped.
pub fn idle_times(
    previous: &BTreeMap<String, Instant>,
    idle_now: &[(String, bool)],
    now: Instant,
) -> BTreeMap<String, Instant> {
    idle_now
        .iter()
        .filter(|(_, idle)| *idle)
        .map(|(id, _)| (id.clone(), previous.get(id).copied().unwrap_or(now)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: AdaptBounds = AdaptBounds {
        min: 0,
        max: 3,
        idle_grace: Duration::from_secs(10),
    };

    fn job(id: &str, pending: bool, idle_for: Option<u64>, now: Instant) -> AdaptJob {
        AdaptJob {
            id: id.to_owned(),
            pending,
            idle_since: idle_for.map(|s| now - Duration::from_secs(s)),
        }
    }

    #[test]
    fn load_is_met_at_once_within_the_bounds() {
        let now = Instant::now();
        assert_eq!(plan(0, 4, &[], now, BOUNDS), AdaptPlan::default());
        assert_eq!(plan(1, 4, &[], now, BOUNDS).submit, 1);
        assert_eq!(plan(9, 4, &[], now, BOUNDS).submit, 3);
        assert_eq!(plan(1000, 4, &[], now, BOUNDS).submit, 3, "max");
        let min = AdaptBounds { min: 2, ..BOUNDS };
        assert_eq!(plan(0, 4, &[], now, min).submit, 2, "min");
        let one = [job("1", false, None, now)];
        assert_eq!(plan(5, 4, &one, now, BOUNDS).submit, 1);
        assert_eq!(
            plan(4, 0, &one, now, BOUNDS).submit,
            2,
            "0 threads count as 1"
        );
    }

    #[test]
    fn a_surplus_is_cancelled_after_the_grace_pending_jobs_first() {
        let now = Instant::now();
        let jobs = [
            job("1", false, Some(30), now),
            job("2", false, Some(5), now),
            job("3", true, Some(11), now),
        ];
        // No load: each job idle past the grace goes, the pending one first.
        assert_eq!(
            plan(0, 1, &jobs, now, BOUNDS).cancel,
            vec!["3".to_owned(), "1".to_owned()]
        );
        // Load for two jobs: one surplus, and the pending one is it.
        assert_eq!(plan(2, 1, &jobs, now, BOUNDS).cancel, vec!["3".to_owned()]);
        // Busy jobs are never cancelled, even over the target.
        let busy = [job("1", false, None, now), job("2", false, None, now)];
        assert_eq!(plan(0, 1, &busy, now, BOUNDS), AdaptPlan::default());
        // The minimum is kept.
        let min = AdaptBounds { min: 3, ..BOUNDS };
        assert_eq!(plan(0, 1, &jobs, now, min), AdaptPlan::default());
    }

    #[test]
    fn idle_times_start_when_a_job_idles_and_end_when_it_works() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(3);
        let first = idle_times(
            &BTreeMap::new(),
            &[("a".into(), true), ("b".into(), false)],
            t0,
        );
        assert_eq!(first, BTreeMap::from([("a".to_owned(), t0)]));
        let second = idle_times(
            &first,
            &[("a".into(), true), ("b".into(), true), ("c".into(), false)],
            t1,
        );
        assert_eq!(
            second,
            BTreeMap::from([("a".to_owned(), t0), ("b".to_owned(), t1)])
        );
        assert!(idle_times(&second, &[("a".into(), false)], t1).is_empty());
    }
}
