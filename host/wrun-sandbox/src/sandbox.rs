//! The [`Sandbox`]: one engine, compiled modules, and task runs in fresh instances.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use wasmtime::{
    Caller, Config, Enabled, Engine, Extern, ExternType, InstanceAllocationStrategy, InstancePre,
    Linker, Module, ModuleExport, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
    UpdateDeadline, ValType,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wrun_abi::{ModuleDigest, TaskLimits, TaskSignature};

use crate::cache::{CacheMiss, DiskCache};
use crate::capture::{CapturePipe, Captured};
use crate::config::SandboxConfig;
use crate::error::{LoadError, TaskError};
use crate::sleep::{Interrupted, SleepLimits, TaskClock};

/// Dirty linear-memory bytes reset in place (not returned to the kernel)
/// when a pooled slot is reused. A no-op Rust task dirties about 100 KiB.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// Longest panic message or task error message kept from a guest.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Where a loaded module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled from its bytes now.
    Compiled,
    /// Deserialized from the disk cache.
    DiskCache,
    /// Already in this sandbox's memory.
    Memory,
}

/// A validated, compiled, pre-linked task module, ready to instantiate.
pub struct CompiledModule {
    digest: ModuleDigest,
    tasks: Vec<TaskSignature>,
    task_exports: HashMap<String, (usize, ModuleExport)>,
    alloc_export: ModuleExport,
    memory_export: ModuleExport,
    initialize_export: Option<ModuleExport>,
    pre: InstancePre<TaskState>,
}

impl CompiledModule {
    /// The SHA-256 of the module's bytes.
    pub fn digest(&self) -> ModuleDigest {
        self.digest
    }

    /// The tasks the module declares, in name order.
    pub fn tasks(&self) -> &[TaskSignature] {
        &self.tasks
    }

    /// The signature of one task.
    pub fn task(&self, name: &str) -> Option<&TaskSignature> {
        self.task_exports
            .get(name)
            .map(|(index, _)| &self.tasks[*index])
    }
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("digest", &self.digest)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// What a task run used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Wall time from instantiation to result.
    pub wall: Duration,
    /// The largest linear memory the task had, in bytes.
    pub peak_memory_bytes: u64,
    /// Fuel consumed, when fuel is metered.
    pub fuel_consumed: Option<u64>,
}

/// The outcome of one task run: the result or error, and what it printed.
#[derive(Debug, Clone)]
pub struct TaskRun {
    /// The MessagePack-encoded result, or why there is none.
    pub result: Result<Vec<u8>, TaskError>,
    /// Captured stdout.
    pub stdout: Captured,
    /// Captured stderr.
    pub stderr: Captured,
    /// Resources used.
    pub usage: Usage,
}

impl TaskRun {
    fn rejected(error: TaskError) -> TaskRun {
        TaskRun {
            result: Err(error),
            stdout: Captured::default(),
            stderr: Captured::default(),
            usage: Usage::default(),
        }
    }
}

/// Per-task state owned by the `Store`: WASI, limits, and what the guest told us.
pub(crate) struct TaskState {
    wasi: WasiP1Ctx,
    limiter: TaskLimiter,
    panic: Option<(String, String)>,
    /// The run was stopped by its cancel flag (not by its time limit).
    cancelled: bool,
    /// What a sleeping guest must still obey (`sleep.rs`).
    sleep: SleepLimits,
}

struct TaskLimiter {
    memory_limit: u64,
    peak_memory: u64,
    memory_denied: bool,
}

impl ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            self.memory_denied = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired as u64);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// Increments the engine's epoch every tick until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("wrun-epoch".to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs wrun tasks, each in a fresh wasmtime instance.
///
/// One per process: it owns the engine (with the pooling allocator), the
/// linker with WASI preview 1 and the `wrun` host functions, the compiled
/// modules, and the epoch ticker that enforces wall-time limits. It is
/// `Send + Sync`; run tasks on as many threads as
/// [`SandboxConfig::max_concurrent_tasks`] allows.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<TaskState>,
    config: SandboxConfig,
    modules: Mutex<HashMap<ModuleDigest, Arc<CompiledModule>>>,
    disk_cache: Option<DiskCache>,
    _ticker: EpochTicker,
}

impl Sandbox {
    /// Builds the engine and linker. Fails only if wasmtime rejects the settings.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, TaskError> {
        let host = |error: wasmtime::Error| TaskError::Host(format!("{error:#}"));
        let mut pool = PoolingAllocationConfig::new();
        let slots = config.max_concurrent_tasks.max(1);
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots * 4)
            .max_tables_per_module(4)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
            // Reset a used slot by copying back only the pages the task dirtied
            // (found with Linux's PAGEMAP_SCAN, 6.7+) instead of madvise: no
            // TLB-shootdown IPIs to the other task threads and no page faults
            // on the next task. Beyond this many dirty bytes, madvise is used.
            .pagemap_scan(Enabled::Auto);
        if kernel_has_pagemap_scan() {
            // Without the scan, keep_resident would memset this many bytes
            // on every reuse, which costs more than it saves.
            pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
                .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
        }
        let mut engine_config = Config::new();
        engine_config
            .epoch_interruption(true)
            .consume_fuel(config.fuel_metering)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&engine_config).map_err(host)?;

        let mut linker: Linker<TaskState> = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |state: &mut TaskState| &mut state.wasi)
            .map_err(host)?;
        // A guest must not sleep past its time limit or its cancel.
        linker.allow_shadowing(true);
        linker
            .func_wrap(
                "wasi_snapshot_preview1",
                "poll_oneoff",
                |caller: Caller<'_, TaskState>, a: i32, b: i32, c: i32, d: i32| {
                    crate::sleep::poll_oneoff(caller, |s: &TaskState| &s.sleep, (a, b, c, d))
                },
            )
            .map_err(host)?;
        linker.allow_shadowing(false);
        linker
            .func_wrap(wrun_abi::HOST_MODULE, "panic", record_panic)
            .map_err(host)?;

        let disk_cache = config
            .cache_dir
            .clone()
            .map(|dir| DiskCache::new(dir, &engine, config.cache_max_bytes));
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick);
        Ok(Sandbox {
            engine,
            linker,
            config,
            modules: Mutex::new(HashMap::new()),
            disk_cache,
            _ticker: ticker,
        })
    }

    /// The settings this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Loads a module: from memory if known, else from the disk cache, else
    /// by validating and compiling it (then caching it).
    pub fn load(&self, bytes: &[u8]) -> Result<(Arc<CompiledModule>, LoadSource), LoadError> {
        let digest = ModuleDigest::of(bytes);
        if let Some(module) = self.loaded(&digest) {
            return Ok((module, LoadSource::Memory));
        }
        let tasks = wrun_abi::read_task_signatures(bytes)?;
        let (module, source) = self.compile_or_fetch(&digest, bytes)?;
        let compiled = Arc::new(self.link(digest, tasks, module)?);
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, compiled.clone());
        Ok((compiled, source))
    }

    /// A module already loaded into this sandbox.
    pub fn loaded(&self, digest: &ModuleDigest) -> Option<Arc<CompiledModule>> {
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Forgets a module held in memory (the disk cache keeps it).
    pub fn evict(&self, digest: &ModuleDigest) {
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }

    fn compile_or_fetch(
        &self,
        digest: &ModuleDigest,
        bytes: &[u8],
    ) -> Result<(Module, LoadSource), LoadError> {
        if let Some(cache) = &self.disk_cache {
            match cache.load(&self.engine, digest) {
                Ok(module) => return Ok((module, LoadSource::DiskCache)),
                Err(CacheMiss::Absent) => {}
                Err(CacheMiss::Corrupt(reason)) => {
                    warn!("ignoring a bad cached module: {reason}; recompiling")
                }
            }
        }
        let started = Instant::now();
        let module = Module::new(&self.engine, bytes)
            .map_err(|error| LoadError::Invalid(format!("{error:#}")))?;
        debug!(%digest, elapsed = ?started.elapsed(), "compiled module");
        if let Some(cache) = &self.disk_cache
            && let Err(reason) = cache.store(digest, &module)
        {
            warn!("could not cache the compiled module: {reason}");
        }
        Ok((module, LoadSource::Compiled))
    }

    /// Checks the module's exports against its declared tasks and pre-links it.
    fn link(
        &self,
        digest: ModuleDigest,
        tasks: Vec<TaskSignature>,
        module: Module,
    ) -> Result<CompiledModule, LoadError> {
        let not_wrun =
            |reason: String| LoadError::Module(wrun_abi::ModuleError::NotWrunModule(reason));
        let func_export = |name: &str,
                           params: usize,
                           results: usize|
         -> Result<ModuleExport, LoadError> {
            let Some(ExternType::Func(ty)) = module.get_export(name) else {
                return Err(not_wrun(format!("it does not export a function `{name}`")));
            };
            let all_i32 = |mut types: Box<dyn ExactSizeIterator<Item = ValType> + '_>| {
                types.all(|t| matches!(t, ValType::I32))
            };
            if ty.params().len() != params
                || ty.results().len() != results
                || !all_i32(Box::new(ty.params()))
                || !all_i32(Box::new(ty.results()))
            {
                return Err(not_wrun(format!(
                    "`{name}` has type {ty}, expected {params} i32 parameter(s) and {results} i32 result(s)"
                )));
            }
            Ok(module.get_export_index(name).expect("export exists"))
        };
        let alloc_export = func_export(wrun_abi::ALLOC_EXPORT, 1, 1)?;
        let mut task_exports = HashMap::with_capacity(tasks.len());
        for (index, task) in tasks.iter().enumerate() {
            let export = func_export(&task.export_name(), 2, 1).map_err(|_| {
                not_wrun(format!(
                    "it declares task `{}` but does not export `{}` as (i32, i32) -> i32",
                    task.name,
                    task.export_name()
                ))
            })?;
            task_exports.insert(task.name.clone(), (index, export));
        }
        match module.get_export(wrun_abi::MEMORY_EXPORT) {
            Some(ExternType::Memory(memory)) if !memory.is_64() && !memory.is_shared() => {}
            _ => {
                return Err(not_wrun(
                    "it does not export a 32-bit, unshared linear memory `memory`".to_owned(),
                ));
            }
        }
        let memory_export = module
            .get_export_index(wrun_abi::MEMORY_EXPORT)
            .expect("checked above");
        let initialize_export = match module.get_export(wrun_abi::INITIALIZE_EXPORT) {
            Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {
                module.get_export_index(wrun_abi::INITIALIZE_EXPORT)
            }
            _ => None,
        };
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|error| LoadError::UnknownImport(format!("{error:#}")))?;
        Ok(CompiledModule {
            digest,
            tasks,
            task_exports,
            alloc_export,
            memory_export,
            initialize_export,
            pre,
        })
    }

    /// Runs `task` of `module` with MessagePack-encoded `args` (an array) in
    /// a fresh instance. Never panics and never leaves state behind: whatever
    /// the guest does, the next run starts clean.
    pub fn run(
        &self,
        module: &CompiledModule,
        task: &str,
        args: &[u8],
        limits: &TaskLimits,
    ) -> TaskRun {
        self.run_inner(module, task, args, limits, None)
    }

    /// [`Sandbox::run`], stopped within one epoch tick (5 ms) once `cancel`
    /// is set from another thread, with [`TaskError::Cancelled`].
    pub fn run_cancellable(
        &self,
        module: &CompiledModule,
        task: &str,
        args: &[u8],
        limits: &TaskLimits,
        cancel: &Arc<AtomicBool>,
    ) -> TaskRun {
        self.run_inner(module, task, args, limits, Some(cancel))
    }

    fn run_inner(
        &self,
        module: &CompiledModule,
        task: &str,
        args: &[u8],
        limits: &TaskLimits,
        cancel: Option<&Arc<AtomicBool>>,
    ) -> TaskRun {
        let Some((index, export)) = module.task_exports.get(task) else {
            return TaskRun::rejected(TaskError::UnknownTask {
                name: task.to_owned(),
                available: module.tasks.iter().map(|t| t.name.clone()).collect(),
            });
        };
        if let Err(error) = wrun_abi::check_args(&module.tasks[*index], args) {
            return TaskRun::rejected(error.into());
        }
        if let Err(error) = self.check_limits(limits) {
            return TaskRun::rejected(error);
        }

        let stdout = CapturePipe::new("stdout", limits.stdout_bytes);
        let stderr = CapturePipe::new("stderr", limits.stderr_bytes);
        let clock_origin = Instant::now();
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .monotonic_clock(TaskClock {
                origin: clock_origin,
            })
            .build_p1();
        let limiter = TaskLimiter {
            memory_limit: limits.memory_bytes,
            peak_memory: 0,
            memory_denied: false,
        };
        let mut store = Store::new(
            &self.engine,
            TaskState {
                wasi,
                limiter,
                panic: None,
                cancelled: false,
                sleep: SleepLimits {
                    deadline: clock_origin + limits.timeout,
                    cancel: cancel.cloned(),
                    clock_origin,
                    tick: self.config.epoch_tick,
                },
            },
        );
        store.limiter(|state| &mut state.limiter);
        let tick = self.config.epoch_tick.as_nanos().max(1);
        let ticks = u64::try_from(limits.timeout.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX);
        match cancel {
            None => store.set_epoch_deadline(ticks.saturating_add(1)),
            Some(flag) => {
                // Look at the flag every tick; the time limit counts down.
                let flag = flag.clone();
                let mut left = ticks.saturating_add(1);
                store.set_epoch_deadline(1);
                store.epoch_deadline_callback(move |mut ctx| {
                    if flag.load(Ordering::Relaxed) {
                        ctx.data_mut().cancelled = true;
                        return Ok(UpdateDeadline::Interrupt);
                    }
                    left = left.saturating_sub(1);
                    if left == 0 {
                        return Ok(UpdateDeadline::Interrupt);
                    }
                    Ok(UpdateDeadline::Continue(1))
                });
            }
        }
        let fuel_given = limits.fuel.unwrap_or(u64::MAX);
        if self.config.fuel_metering
            && let Err(error) = store.set_fuel(fuel_given)
        {
            return TaskRun::rejected(TaskError::Host(format!("{error:#}")));
        }

        let started = Instant::now();
        let result = self.call(module, task, *export, args, limits, &mut store);
        let wall = started.elapsed();
        let result = result.map_err(|error| classify(error, store.data(), limits));
        // A result must be a value of the declared type: `wrun submit`
        // and the client decode it by that type.
        let result = result.map(|reply| {
            reply.and_then(|bytes| {
                wrun_abi::check_result(&module.tasks[*index], &bytes)?;
                Ok(bytes)
            })
        });
        let fuel_consumed = if self.config.fuel_metering {
            store.get_fuel().ok().map(|left| fuel_given - left)
        } else {
            None
        };
        let peak_memory_bytes = store.data().limiter.peak_memory;
        drop(store);
        TaskRun {
            result: result.and_then(|r| r),
            stdout: stdout.take(),
            stderr: stderr.take(),
            usage: Usage {
                wall,
                peak_memory_bytes,
                fuel_consumed,
            },
        }
    }

    fn check_limits(&self, limits: &TaskLimits) -> Result<(), TaskError> {
        if limits.memory_bytes > self.config.max_memory_bytes {
            return Err(TaskError::InvalidLimits(format!(
                "memory limit {} is above this sandbox's maximum of {}",
                wrun_abi::humanize_bytes(limits.memory_bytes),
                wrun_abi::humanize_bytes(self.config.max_memory_bytes)
            )));
        }
        if limits.fuel.is_some() && !self.config.fuel_metering {
            return Err(TaskError::InvalidLimits(
                "a fuel limit needs a sandbox with fuel metering on".to_owned(),
            ));
        }
        if limits.timeout.is_zero() {
            return Err(TaskError::InvalidLimits(
                "the time limit must be above zero".to_owned(),
            ));
        }
        Ok(())
    }

    /// Instantiates, passes the arguments, calls the task and reads the
    /// reply. The outer error is a wasmtime failure (trap, limit, instantiation);
    /// the inner one is what the guest's reply says.
    fn call(
        &self,
        module: &CompiledModule,
        task_name: &str,
        export: ModuleExport,
        args: &[u8],
        limits: &TaskLimits,
        store: &mut Store<TaskState>,
    ) -> wasmtime::Result<Result<Vec<u8>, TaskError>> {
        let instance = module.pre.instantiate(&mut *store)?;
        let abi = |message: String| Ok(Err(TaskError::Abi(message)));
        let Some(Extern::Memory(memory)) =
            instance.get_module_export(&mut *store, &module.memory_export)
        else {
            return abi("no memory export".to_owned());
        };
        if let Some(initialize) = &module.initialize_export
            && let Some(Extern::Func(func)) = instance.get_module_export(&mut *store, initialize)
        {
            func.typed::<(), ()>(&*store)?.call(&mut *store, ())?;
        }
        let Some(Extern::Func(alloc)) =
            instance.get_module_export(&mut *store, &module.alloc_export)
        else {
            return abi("no allocator export".to_owned());
        };
        let Some(Extern::Func(task)) = instance.get_module_export(&mut *store, &export) else {
            return abi("no task export".to_owned());
        };
        let args_len =
            u32::try_from(args.len()).map_err(|_| wasmtime::Error::msg("arguments over 4 GiB"))?;
        let args_ptr = alloc
            .typed::<u32, u32>(&*store)?
            .call(&mut *store, args_len)?;
        if memory.write(&mut *store, args_ptr as usize, args).is_err() {
            return abi(format!(
                "wrun_alloc({args_len}) returned {args_ptr:#x}, outside linear memory"
            ));
        }
        let reply_ptr = task
            .typed::<(u32, u32), u32>(&*store)?
            .call(&mut *store, (args_ptr, args_len))?;

        let mut reply = [0u8; wrun_abi::REPLY_SIZE];
        if memory
            .read(&*store, reply_ptr as usize, &mut reply)
            .is_err()
        {
            return abi(format!(
                "reply pointer {reply_ptr:#x} is outside linear memory"
            ));
        }
        let word =
            |i: usize| u32::from_le_bytes(reply[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let (status, ptr, len) = (word(0), word(1) as usize, word(2) as u64);
        let read = |max: u64| -> Result<Vec<u8>, TaskError> {
            let mut bytes = vec![0u8; len.min(max) as usize];
            memory.read(&*store, ptr, &mut bytes).map_err(|_| {
                TaskError::Abi(format!(
                    "reply payload {ptr:#x}+{len} is outside linear memory"
                ))
            })?;
            Ok(bytes)
        };
        let message =
            |max: u64| read(max).map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        Ok(match status {
            wrun_abi::STATUS_OK if len > limits.result_bytes => Err(TaskError::ResultTooLarge {
                size: len,
                limit: limits.result_bytes,
            }),
            wrun_abi::STATUS_OK => read(len),
            wrun_abi::STATUS_TASK_ERROR => {
                message(MAX_MESSAGE_BYTES as u64).and_then(|m| Err(TaskError::Failed(m)))
            }
            wrun_abi::STATUS_BAD_ARGUMENTS => {
                message(MAX_MESSAGE_BYTES as u64).and_then(|detail| {
                    Err(TaskError::Arguments(wrun_abi::ArgError::RejectedByGuest {
                        task: task_name.to_owned(),
                        detail,
                    }))
                })
            }
            other => Err(TaskError::Abi(format!("unknown reply status {other}"))),
        })
    }
}

/// The `wrun.panic(msg_ptr, msg_len, loc_ptr, loc_len)` host function: keeps
/// the message and location for the error the trap that follows becomes.
fn record_panic(
    mut caller: Caller<'_, TaskState>,
    msg_ptr: u32,
    msg_len: u32,
    loc_ptr: u32,
    loc_len: u32,
) {
    let Some(Extern::Memory(memory)) = caller.get_export(wrun_abi::MEMORY_EXPORT) else {
        return;
    };
    let data = memory.data(&caller);
    let text = |ptr: u32, len: u32| {
        let start = ptr as usize;
        let end = start.saturating_add((len as usize).min(MAX_MESSAGE_BYTES));
        data.get(start..end)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_default()
    };
    let panic = (text(msg_ptr, msg_len), text(loc_ptr, loc_len));
    caller.data_mut().panic = Some(panic);
}

/// Turns a wasmtime failure into the task error a user should see.
fn classify(error: wasmtime::Error, state: &TaskState, limits: &TaskLimits) -> TaskError {
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return TaskError::Exited(exit.0);
    }
    match error.downcast_ref::<Interrupted>() {
        Some(Interrupted::TimeLimit) => {
            return TaskError::TimeLimit {
                limit: limits.timeout,
            };
        }
        Some(Interrupted::Cancelled) => return TaskError::Cancelled,
        None => {}
    }
    let trap = error.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::Interrupt) if state.cancelled => return TaskError::Cancelled,
        Some(Trap::Interrupt) => {
            return TaskError::TimeLimit {
                limit: limits.timeout,
            };
        }
        Some(Trap::OutOfFuel) => {
            return TaskError::OutOfFuel {
                limit: limits.fuel.unwrap_or(u64::MAX),
            };
        }
        _ => {}
    }
    if state.limiter.memory_denied {
        let detail = match (&state.panic, trap) {
            (Some((message, _)), _) => format!("then panicked: {message}"),
            (None, Some(trap)) => format!("then trapped: {}", trap_kind(trap)),
            (None, None) => format!("{error:#}"),
        };
        return TaskError::MemoryLimit {
            limit_bytes: limits.memory_bytes,
            detail,
        };
    }
    if let Some((message, location)) = &state.panic {
        return TaskError::Panic {
            message: message.clone(),
            location: location.clone(),
        };
    }
    match trap {
        Some(trap) => TaskError::Trap {
            kind: trap_kind(trap),
        },
        None => TaskError::Host(format!("{error:#}")),
    }
}

/// A trap as a user should read it ("stack overflow", not "wasm trap: call stack exhausted").
fn trap_kind(trap: Trap) -> String {
    match trap {
        Trap::StackOverflow => "stack overflow (the call stack is exhausted)".to_owned(),
        Trap::MemoryOutOfBounds => "out-of-bounds memory access".to_owned(),
        Trap::UnreachableCodeReached => "unreachable code executed (an abort)".to_owned(),
        other => other
            .to_string()
            .trim_start_matches("wasm trap: ")
            .to_owned(),
    }
}

/// Whether this Linux kernel has the PAGEMAP_SCAN ioctl (6.7 and later).
fn kernel_has_pagemap_scan() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 7)
}
