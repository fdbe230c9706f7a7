//! Sandbox-wide settings (per-task limits are `wrun_abi::TaskLimits`).

use std::path::PathBuf;
use std::time::Duration;

use wrun_abi::MIB;

/// Settings fixed for the life of a [`Sandbox`](crate::Sandbox).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// How many task instances may exist at once (pooling allocator slots).
    /// Running more tasks than this at once makes the extra ones fail to
    /// instantiate, so size it to the threads that run tasks.
    pub max_concurrent_tasks: u32,
    /// The largest linear memory any task may be given, in bytes. A task's
    /// own limit (`TaskLimits::memory_bytes`) must not exceed it.
    pub max_memory_bytes: u64,
    /// Turns on fuel metering (about 5% slower; docs/ARCHITECTURE.md, "Measured facts"). Without it a
    /// task that asks for a fuel limit is refused.
    pub fuel_metering: bool,
    /// Where compiled modules are cached on disk; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// The most bytes the disk cache keeps; the least recently used go first.
    pub cache_max_bytes: u64,
    /// The epoch tick: wall-time limits are enforced to within about one tick.
    pub epoch_tick: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_concurrent_tasks: 64,
            max_memory_bytes: 4096 * MIB,
            fuel_metering: false,
            cache_dir: default_cache_dir(),
            cache_max_bytes: 1 << 30,
            epoch_tick: Duration::from_millis(5),
        }
    }
}

/// `$WRUN_CACHE_DIR`, else the user's cache dir (`~/.cache/wrun/modules`).
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WRUN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    dirs::cache_dir().map(|dir| dir.join("wrun").join("modules"))
}
