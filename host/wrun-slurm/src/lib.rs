//! # wrun-slurm: what wrun needs from Slurm
//!
//! Worker job scripts ([`JobScript`]), the Slurm client commands (`sbatch`,
//! `squeue`, `scancel`) run as processes with their messages kept for the
//! user ([`SlurmError`]), Slurm's time formats ([`parse_duration`],
//! [`format_duration`]), a job's remaining walltime ([`time_left`]), and the
//! adaptive policy of `wrun slurm adapt` ([`plan`]), a pure function.
//!
//! It talks to Slurm only through its commands, as a user would, so it
//! works with any Slurm that has them on PATH. It must not depend on the
//! scheduler, worker or client crates: `wrun slurm` (in wrun-cli) joins
//! them.

mod adapt;
mod commands;
mod interface;
mod script;
mod time;

pub use adapt::{AdaptBounds, AdaptJob, AdaptPlan, idle_times, plan};
pub use commands::{JobState, SlurmError, job_states, sbatch, scancel, time_left};
pub use interface::{address_of_interface, default_address};
pub use script::{JobScript, WorkerCommand};
pub use time::{format_duration, parse_duration};
