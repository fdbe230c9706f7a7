//! Exit codes, named once: 0 success, [`TASK_FAILED`], [`USAGE`],
//! [`UNREACHABLE`]. A command fails with a [`Failure`]: the error to print
//! and the code to exit with.

use std::fmt;
use std::process::ExitCode;

/// A task ran and failed.
pub(crate) const TASK_FAILED: u8 = 1;
/// Usage or input error: a bad module, an unknown task, wrong arguments, a
/// refused request.
pub(crate) const USAGE: u8 = 2;
/// The cluster could not be reached (or the connection to it was lost).
pub(crate) const UNREACHABLE: u8 = 3;

/// A command's failure, with the exit code it means.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

impl Failure {
    /// A task ran and failed.
    pub(crate) fn task(error: impl Into<anyhow::Error>) -> Failure {
        Failure::with_code(TASK_FAILED, error)
    }

    /// The user's input is wrong.
    pub(crate) fn input(error: impl Into<anyhow::Error>) -> Failure {
        Failure::with_code(USAGE, error)
    }

    /// The cluster cannot be reached.
    pub(crate) fn unreachable(error: impl Into<anyhow::Error>) -> Failure {
        Failure::with_code(UNREACHABLE, error)
    }

    /// Another code: one a cluster's shutdown or a client command asked for.
    pub(crate) fn with_code(code: u8, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
        }
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Anything else that goes wrong is an input or environment problem.
impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::input(error)
    }
}

pub(crate) type CommandResult = Result<(), Failure>;

/// A non-zero exit code some other process asked for, as a `u8`.
pub(crate) fn clamp_code(code: i32) -> u8 {
    code.clamp(1, 255) as u8
}
