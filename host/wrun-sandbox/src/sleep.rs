//! `wasi_snapshot_preview1.poll_oneoff`, the one WASI call a guest can block
//! in (`std::thread::sleep` is a clock subscription), replaced so that it
//! obeys the task's limits: epoch interruption counts only while Wasm code
//! runs, so a guest sleeping in the host would escape its time limit and
//! its cancel. This sleeps in ticks, looking at the deadline and the cancel
//! flag each time, and ends the task when either says so.
//!
//! The guest has no files or sockets: stdin reads are ready at once (end
//! of file), stdout and stderr writes are ready at once, any other
//! descriptor is a bad one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::{Caller, Extern};

/// How a sleeping task was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Interrupted {
    #[error("the task's time limit passed while it slept")]
    TimeLimit,
    #[error("the task was cancelled while it slept")]
    Cancelled,
}

/// What `poll_oneoff` needs of the task.
pub(crate) struct SleepLimits {
    pub(crate) deadline: Instant,
    pub(crate) cancel: Option<Arc<AtomicBool>>,
    /// Where the guest's monotonic clock starts (for absolute timeouts).
    pub(crate) clock_origin: Instant,
    /// How often a sleep looks at the deadline and the flag.
    pub(crate) tick: Duration,
}

/// The guest's monotonic clock, starting at the task's `clock_origin`.
pub(crate) struct TaskClock {
    pub(crate) origin: Instant,
}

impl wasmtime_wasi::HostMonotonicClock for TaskClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const MAX_SUBSCRIPTIONS: u32 = 4096;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: u16 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const CLOCK_REALTIME: u32 = 0;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;

struct Subscription {
    userdata: u64,
    kind: u8,
    clock: u32,
    timeout: u64,
    flags: u16,
    fd: u32,
}

fn read_subscription(raw: &[u8]) -> Subscription {
    let u64_at = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    Subscription {
        userdata: u64_at(0),
        kind: raw[8],
        clock: u32_at(16),
        timeout: u64_at(24),
        flags: u16::from_le_bytes([raw[40], raw[41]]),
        fd: u32_at(16),
    }
}

fn event(userdata: u64, error: u16, kind: u8, nbytes: u64) -> [u8; EVENT_SIZE] {
    let mut e = [0u8; EVENT_SIZE];
    e[0..8].copy_from_slice(&userdata.to_le_bytes());
    e[8..10].copy_from_slice(&error.to_le_bytes());
    e[10] = kind;
    e[16..24].copy_from_slice(&nbytes.to_le_bytes());
    e
}

/// When a clock subscription fires.
fn wake_time(s: &Subscription, limits: &SleepLimits, now: Instant) -> Instant {
    let nanos = Duration::from_nanos(s.timeout);
    if s.flags & SUBCLOCKFLAGS_ABSTIME == 0 {
        return now + nanos;
    }
    if s.clock == CLOCK_REALTIME {
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        return now + nanos.saturating_sub(since_epoch);
    }
    limits.clock_origin + nanos
}

/// The host function. `limits` reads the task's [`SleepLimits`] from the
/// store's state.
pub(crate) fn poll_oneoff<T>(
    mut caller: Caller<'_, T>,
    limits: impl Fn(&T) -> &SleepLimits,
    (subscriptions, events, count, written): (i32, i32, i32, i32),
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export(wrun_abi::MEMORY_EXPORT) else {
        return Ok(ERRNO_FAULT);
    };
    let count = count as u32;
    if count == 0 || count > MAX_SUBSCRIPTIONS {
        return Ok(ERRNO_INVAL);
    }
    let mut raw = vec![0u8; count as usize * SUBSCRIPTION_SIZE];
    if memory
        .read(&caller, subscriptions as u32 as usize, &mut raw)
        .is_err()
    {
        return Ok(ERRNO_FAULT);
    }
    let subs: Vec<Subscription> = raw
        .chunks(SUBSCRIPTION_SIZE)
        .map(read_subscription)
        .collect();
    // Descriptors are ready (or bad) at once.
    let mut ready: Vec<[u8; EVENT_SIZE]> = subs
        .iter()
        .filter(|s| s.kind == EVENTTYPE_FD_READ || s.kind == EVENTTYPE_FD_WRITE)
        .map(|s| match (s.kind, s.fd) {
            (EVENTTYPE_FD_READ, 0) => event(s.userdata, 0, s.kind, 0),
            (EVENTTYPE_FD_WRITE, 1 | 2) => event(s.userdata, 0, s.kind, 1 << 20),
            _ => event(s.userdata, ERRNO_BADF, s.kind, 0),
        })
        .collect();
    if ready.is_empty() {
        let start = Instant::now();
        let clocks: Vec<(&Subscription, Instant)> = subs
            .iter()
            .filter(|s| s.kind == EVENTTYPE_CLOCK)
            .map(|s| (s, wake_time(s, limits(caller.data()), start)))
            .collect();
        let Some(wake) = clocks.iter().map(|(_, at)| *at).min() else {
            return Ok(ERRNO_INVAL);
        };
        sleep_until(wake, limits(caller.data()))?;
        let now = Instant::now();
        ready = clocks
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(s, _)| event(s.userdata, 0, EVENTTYPE_CLOCK, 0))
            .collect();
    }
    let bytes: Vec<u8> = ready.iter().flatten().copied().collect();
    if memory
        .write(&mut caller, events as u32 as usize, &bytes)
        .is_err()
        || memory
            .write(
                &mut caller,
                written as u32 as usize,
                &(ready.len() as u32).to_le_bytes(),
            )
            .is_err()
    {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}

/// Sleeps until `wake`, in ticks, ending the task if its deadline comes
/// first or its cancel flag is set.
fn sleep_until(wake: Instant, limits: &SleepLimits) -> Result<(), Interrupted> {
    loop {
        if limits
            .cancel
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
        {
            return Err(Interrupted::Cancelled);
        }
        let now = Instant::now();
        if now >= wake {
            return Ok(());
        }
        if now >= limits.deadline {
            return Err(Interrupted::TimeLimit);
        }
        let until = wake.min(limits.deadline).min(now + limits.tick);
        std::thread::sleep(until - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(timeout: Duration, cancel: Option<Arc<AtomicBool>>) -> SleepLimits {
        SleepLimits {
            deadline: Instant::now() + timeout,
            cancel,
            clock_origin: Instant::now(),
            tick: Duration::from_millis(5),
        }
    }

    #[test]
    fn a_sleep_ends_at_the_deadline_or_the_cancel() {
        let started = Instant::now();
        let far = started + Duration::from_secs(20);
        assert_eq!(
            sleep_until(far, &limits(Duration::from_millis(50), None)),
            Err(Interrupted::TimeLimit)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        let flag = Arc::new(AtomicBool::new(true));
        assert_eq!(
            sleep_until(far, &limits(Duration::from_secs(60), Some(flag))),
            Err(Interrupted::Cancelled)
        );
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(
            sleep_until(soon, &limits(Duration::from_secs(60), None)),
            Ok(())
        );
    }
}
