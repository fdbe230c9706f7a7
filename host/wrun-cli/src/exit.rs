//! Exit codes: 0 success, 1 a task failed, 2 usage or input error,
//! 3 cluster unreachable.

use std::fmt;
use std::process::ExitCode;

/// A command's failure, with the exit code it means.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

impl Failure {
    /// A task ran and failed (exit 1).
    pub(crate) fn task(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 1,
            error: error.into(),
        }
    }

    /// The user's input is wrong (exit 2).
    pub(crate) fn input(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 2,
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

/// Anything else that goes wrong is an input or environment problem (exit 2).
impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::input(error)
    }
}

pub(crate) type CommandResult = Result<(), Failure>;
