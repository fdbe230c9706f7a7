//! `wrun tenant add|list|remove|rotate`: the tenants file of a shared
//! cluster. A token is printed once, as the last line, and only its hash is
//! kept; `wrun scheduler --tenants FILE` reloads the file on SIGHUP.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use wrun_abi::units::{ByteSize, HumanDuration};
use wrun_scheduler::{Quotas, TenantsFile};

use crate::exit::{CommandResult, Failure};
use crate::output::outln;

/// The tenants file.
#[derive(Debug, Args)]
pub(crate) struct TenantsPath {
    /// The tenants file (made if missing, mode 0600).
    #[arg(long, env = "WRUN_TENANTS")]
    tenants: PathBuf,
}

/// What a tenant may use.
#[derive(Debug, Args)]
pub(crate) struct QuotaArgs {
    /// Share of the slots when several tenants have queued work.
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Tasks on workers at once.
    #[arg(long)]
    max_slots: Option<u32>,
    /// Linear memory per task.
    #[arg(long)]
    max_memory: Option<ByteSize>,
    /// Wall time per task.
    #[arg(long)]
    max_timeout: Option<HumanDuration>,
    /// Bytes of results kept on workers.
    #[arg(long)]
    max_stored: Option<ByteSize>,
    /// Tasks not yet done.
    #[arg(long)]
    max_pending: Option<u64>,
    /// Bytes of modules uploaded.
    #[arg(long)]
    max_module_bytes: Option<ByteSize>,
}

/// `wrun tenant ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Add a tenant with a fresh token, printed once as the last line.
    Add {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        file: TenantsPath,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// List the tenants with their weights and quotas (never tokens).
    List {
        #[command(flatten)]
        file: TenantsPath,
    },
    /// Remove a tenant; its sessions end when the scheduler reloads the file.
    Remove {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        file: TenantsPath,
    },
    /// Give a tenant a fresh token (printed once, last line); the old one
    /// stops working when the scheduler reloads the file.
    Rotate {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        file: TenantsPath,
    },
}

const RELOAD: &str = "the scheduler applies it on SIGHUP (kill -HUP <scheduler pid>)";

impl TenantCommand {
    pub(crate) fn execute(self) -> CommandResult {
        match self {
            TenantCommand::Add { name, file, quotas } => {
                let mut tenants = TenantsFile::load(&file.tenants).map_err(Failure::input)?;
                let token = tenants
                    .add(
                        &name,
                        quotas.weight,
                        Quotas {
                            max_slots: quotas.max_slots,
                            max_memory: quotas.max_memory,
                            max_timeout: quotas.max_timeout,
                            max_stored: quotas.max_stored,
                            max_pending: quotas.max_pending,
                            max_module_bytes: quotas.max_module_bytes,
                        },
                    )
                    .map_err(Failure::input)?;
                tenants.save(&file.tenants).map_err(Failure::input)?;
                eprintln!(
                    "wrun tenant: added `{name}` to {}; {RELOAD}",
                    file.tenants.display()
                );
                eprintln!(
                    "its token follows, shown this once; give it to the tenant (WRUN_TOKEN) and keep it secret"
                );
                outln!("{token}");
            }
            TenantCommand::List { file } => {
                let tenants = TenantsFile::load(&file.tenants).map_err(Failure::input)?;
                outln!("{:<24} {:>6}  quotas", "tenant", "weight");
                for (name, entry) in &tenants.tenants {
                    let quotas = toml::to_string(&entry.quotas)
                        .unwrap_or_default()
                        .lines()
                        .collect::<Vec<_>>()
                        .join(", ");
                    outln!(
                        "{name:<24} {:>6}  {}",
                        entry.weight,
                        if quotas.is_empty() { "none" } else { &quotas }
                    );
                }
            }
            TenantCommand::Remove { name, file } => {
                let mut tenants = TenantsFile::load(&file.tenants).map_err(Failure::input)?;
                tenants.remove(&name).map_err(Failure::input)?;
                tenants.save(&file.tenants).map_err(Failure::input)?;
                outln!("wrun tenant: removed `{name}`; {RELOAD}");
            }
            TenantCommand::Rotate { name, file } => {
                let mut tenants = TenantsFile::load(&file.tenants).map_err(Failure::input)?;
                let token = tenants.rotate(&name).map_err(Failure::input)?;
                tenants.save(&file.tenants).map_err(Failure::input)?;
                eprintln!("wrun tenant: `{name}` has a new token; {RELOAD}");
                outln!("{token}");
            }
        }
        Ok(())
    }
}
