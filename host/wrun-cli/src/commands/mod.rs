//! One file per subcommand (or family), each with its clap struct and an
//! `execute`.

pub(crate) mod bench;
pub(crate) mod build;
pub(crate) mod events;
pub(crate) mod graph;
pub(crate) mod inspect;
pub(crate) mod jobs;
pub(crate) mod local;
pub(crate) mod mpi;
pub(crate) mod new;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod scheduler;
pub(crate) mod shutdown;
pub(crate) mod slurm;
pub(crate) mod status;
pub(crate) mod submit;
pub(crate) mod tenant;
pub(crate) mod worker;
