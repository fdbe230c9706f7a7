//! [`TaskLimits`] on the wire: the one place that reads and writes the
//! schema's `Limits` (and knows that fuel 0 means no fuel limit).

use std::time::Duration;

use crate::TaskLimits;
use crate::wrun_capnp::limits;

/// Writes `limits` into a `Limits` builder.
pub fn write(limits: &TaskLimits, mut to: limits::Builder<'_>) {
    to.set_memory_bytes(limits.memory_bytes);
    to.set_timeout_ms(u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX));
    to.set_fuel(limits.fuel.unwrap_or(0));
    to.set_result_bytes(limits.result_bytes);
    to.set_stdout_bytes(limits.stdout_bytes);
    to.set_stderr_bytes(limits.stderr_bytes);
}

/// Reads a `Limits`. A time limit of 0 ms reads as 1 ms: every task has one.
pub fn read(from: limits::Reader<'_>) -> TaskLimits {
    TaskLimits {
        memory_bytes: from.get_memory_bytes(),
        timeout: Duration::from_millis(from.get_timeout_ms().max(1)),
        fuel: Some(from.get_fuel()).filter(|fuel| *fuel > 0),
        result_bytes: from.get_result_bytes(),
        stdout_bytes: from.get_stdout_bytes(),
        stderr_bytes: from.get_stderr_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_trip() {
        for limits in [
            TaskLimits::DEFAULT,
            TaskLimits {
                fuel: Some(1_000),
                timeout: Duration::from_millis(250),
                memory_bytes: 1,
                ..TaskLimits::DEFAULT
            },
        ] {
            let mut message = capnp::message::Builder::new_default();
            write(&limits, message.init_root::<limits::Builder<'_>>());
            let reader = message.get_root_as_reader::<limits::Reader<'_>>().unwrap();
            assert_eq!(read(reader), limits);
        }
    }
}
