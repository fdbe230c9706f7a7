# The wire of wrun: every interface between client, scheduler and worker.
# One source of truth; host/wrun-proto compiles it (build.rs, capnpc).
@0x9fda65e99a56b452;

const protocolVersion :UInt32 = 2;

# Largest chunk of a value or module in one message (8 MiB). Every reader bounds a
# message at a few times this (traversal limit), so big values stream.
const chunkBytes :UInt32 = 8388608;

# The limits of one task call; wrun_abi::TaskLimits in Rust, read and
# written only by wrun_proto::limits.
struct Limits {
  memoryBytes @0 :UInt64;
  timeoutMs @1 :UInt64;
  fuel @2 :UInt64;          # 0: no fuel limit
  resultBytes @3 :UInt64;
  stdoutBytes @4 :UInt64;
  stderrBytes @5 :UInt64;
}

# What `status` answers; wrun_proto::status has the same in Rust (with serde
# for `wrun status --json`), and the dashboard reads it too.
struct ClusterStatus {
  workers @0 :List(WorkerStatus);
  tasks @1 :TaskCounts;
  recomputed @2 :UInt64;    # results lost with workers and computed again
  clients @3 :UInt32;       # client sessions connected
  sessionTasks @4 :UInt64;  # tasks held by the session that asked
  jobs @5 :List(JobStatus); # detached jobs
}

struct WorkerStatus {
  id @0 :UInt64;
  name @1 :Text;
  threads @2 :UInt32;
  memoryBytes @3 :UInt64;
  pid @4 :UInt32;
  peerAddress @5 :Text;
  assigned @6 :UInt32;      # tasks sent to it (queued there or running)
  running @7 :UInt32;
  retiring @8 :Bool;
  slurmJobId @9 :Text;      # "" if none
  endTimeMs @10 :UInt64;    # Unix ms; 0: no known end
  heldBytes @11 :UInt64;    # results it holds, in memory and on disk
  spilledBytes @12 :UInt64; # of them, on disk
}

# Tasks by state.
struct TaskCounts {
  total @0 :UInt64;
  waiting @1 :UInt64;       # for a dependency's result
  queued @2 :UInt64;        # ready, in the scheduler's queue
  onWorkers @3 :UInt64;     # sent to a worker (queued there or running)
  running @4 :UInt64;
  done @5 :UInt64;          # result kept until released
  failed @6 :UInt64;
}

struct JobStatus {
  name @0 :Text;
  tasks @1 :UInt64;
}

# A task argument as the client gives it.
struct Arg {
  union {
    value @0 :Data;         # one MessagePack value
    result @1 :UInt64;      # the result of the session's task with this key
    stored @2 :Data;        # SHA-256 of a value put with putValue (large literals)
  }
}

struct TaskSubmission {
  key @0 :UInt64;           # the client's id of the task, unique in its session
  module @1 :Data;          # SHA-256 digest of an uploaded module
  task @2 :Text;
  args @3 :List(Arg);
  retries @4 :UInt32;
  limits @5 :Limits;
}

# What the scheduler tells a client about its tasks.
struct TaskEvent {
  key @0 :UInt64;
  union {
    done @1 :UInt64;        # result size in bytes
    failed :group {
      kind @2 :Text;
      message @3 :Text;
    }
  }
  # With `done`: the result itself when it is small (at most
  # wrun_proto::ALWAYS_SHARED_BYTES, as its worker sent it with
  # `finished`), so the client has it without a fetch; empty otherwise.
  value @4 :Data;
}

# One value of a batched fetch. Values that would make the answer larger
# than a few MiB come back as `large` and are read in chunks instead.
struct Value {
  union {
    data @0 :Data;
    large @1 :UInt64;       # its size: fetch it in chunks
    missing @2 :Text;       # why there is no value (yet)
  }
}

struct Chunk {
  data @0 :Data;
  total @1 :UInt64;         # size of the whole value
}

# The bootstrap capability: it only hands out sessions.
interface Cluster {
  info @0 () -> (protocolVersion :UInt32, workers :UInt32);
  # A client session. The token is checked once tenants exist; today any
  # token is accepted and the session sees only its own tasks.
  # `resume` (id 0: none) takes back a session of the scheduler's previous
  # run, restored from its journal, with the ticket that run gave. The
  # answer's ticket resumes this session after a restart; `journaled` says
  # whether there can be one.
  connectClient @1 (token :Text, listener :TaskListener, resume :SessionTicket) -> (session :ClientSession, ticket :SessionTicket, journaled :Bool);
  # A worker joins with the cluster secret and the capability the scheduler
  # uses to command it.
  # `held` lists results it keeps from before (it lost a scheduler that
  # keeps a journal, and rejoins the one restarted on it); more follow in
  # `WorkerSession.held`. `journaled`: the scheduler keeps a journal, so a
  # worker that loses it keeps its results and waits for it to come back.
  registerWorker @2 (secret :Text, info :WorkerInfo, control :WorkerControl, held :List(HeldResult)) -> (session :WorkerSession, journaled :Bool);
  # Stops the cluster: workers are told to exit, then the scheduler exits
  # with `exitCode` (`wrun mpi` ends the job with its client's code).
  # Needs the cluster secret.
  shutdown @3 (secret :Text, exitCode :Int32) -> ();
}

struct SessionTicket {
  id @0 :UInt64;
  secret @1 :Data;
}

interface TaskListener {
  events @0 (events :List(TaskEvent)) -> ();
}

interface ClientSession {
  # Whether the cluster has the module already (uploads are once per cluster).
  hasModule @0 (digest :Data) -> (known :Bool);
  # Uploads a module in chunks at increasing offsets; the last chunk makes
  # the scheduler check the digest and the task section.
  uploadModule @1 (digest :Data, offset :UInt64, total :UInt64, data :Data) -> (complete :Bool);
  submit @2 (tasks :List(TaskSubmission)) -> ();
  # Reads part of a result: the scheduler fetches it from the worker that holds it.
  fetch @3 (key :UInt64, offset :UInt64) -> (chunk :Chunk);
  release @4 (keys :List(UInt64)) -> ();
  status @5 () -> (status :ClusterStatus);
  # Captured stdout and stderr of a finished task.
  logs @6 (key :UInt64) -> (stdout :Data, stderr :Data);
  # Many small results in one round trip, in the order asked.
  fetchMany @7 (keys :List(UInt64)) -> (values :List(Value));
  # Hands these tasks to the scheduler as a named job that outlives the
  # session (an empty name makes a new one); `adopt` takes a job into a
  # session: its keys, and the events of the tasks already finished.
  detach @8 (keys :List(UInt64), job :Text) -> (job :Text);
  adopt @9 (job :Text) -> (keys :List(UInt64), finished :List(TaskEvent));
  cancel @10 (keys :List(UInt64)) -> ();
  # Puts a large literal value (one MessagePack value) in chunks at
  # increasing offsets, for tasks to take as a `stored` argument; the last
  # chunk makes the scheduler check the digest. A first chunk answers
  # `complete` at once when this tenant has put the value already.
  putValue @11 (digest :Data, offset :UInt64, total :UInt64, data :Data) -> (complete :Bool);
  # The task stream of a detached job: what the scheduler still keeps of
  # its tasks' runs (the newest `--task-stream` runs of the cluster), from
  # the `from`-th on, a page at a time (`more`: ask again from `from` +
  # the records answered); and how many of the job's finished tasks are
  # no longer kept.
  taskStream @12 (job :Text, from :UInt64) -> (records :List(TaskRecord), dropped :UInt64, more :Bool);
}

struct WorkerInfo {
  name @0 :Text;
  threads @1 :UInt32;
  memoryBytes @2 :UInt64;
  peerAddress @3 :Text;     # host:port where peers fetch results
  pid @4 :UInt32;
  slurmJobId @5 :Text;      # the Slurm job the worker runs in ("" if none)
  endTimeMs @6 :UInt64;     # when the worker will be stopped (Unix ms; 0: no known end)
  peerCertificate @7 :Data; # DER of the TLS certificate its peer port presents (empty: plain)
}

# An input of an assigned task.
struct Input {
  union {
    value @0 :Data;
    local @1 :UInt64;       # a result this worker holds (by task id)
    remote :group {         # a result to fetch from a peer
      task @2 :UInt64;
      address @3 :Text;
      ticket @4 :Data;      # what the peer asks to hand it over (wrun_proto::tickets)
      certificate @5 :Data; # the peer's TLS certificate (DER); empty: plain
    }
    stored @6 :Data;        # a large literal to read from the scheduler (fetchValue) by digest
  }
}

struct Assignment {
  task @0 :UInt64;          # the scheduler's task id
  module @1 :Data;
  name @2 :Text;
  inputs @3 :List(Input);
  limits @4 :Limits;
  # Whose task it is, for the worker's own fair queue: a number the
  # scheduler gives each tenant (never its name or token) and the tenant's
  # weight. A worker runs its queued tasks in weighted turns by tenant, so
  # a tenant that floods the queue does not make another one's task wait
  # behind all of its own.
  tenant @5 :UInt32;
  weight @6 :UInt32;
  # Send the result's bytes with `finished` if it is at most
  # wrun_proto::SMALL_RESULT_BYTES: a task that needs it may run on another
  # worker, and the scheduler hands it over inline instead of that worker
  # fetching it from this one (a peer round trip per dependency level).
  shareResult @7 :Bool;
  # Staged: some `local` inputs are still being made on this worker (they
  # are earlier in its queue). The worker parks the task and starts it when
  # they are in its store, with no word from the scheduler. Without this a
  # missing local input fails the task.
  waitForInputs @8 :Bool;
}

struct WorkerEvent {
  task @0 :UInt64;
  union {
    started @1 :Void;
    finished :group {
      size @2 :UInt64;
      stdout @3 :Data;
      stderr @4 :Data;
      # The result's bytes when they are at most ALWAYS_SHARED_BYTES, or at
      # most SMALL_RESULT_BYTES and the assignment asked to share them;
      # empty otherwise (a result is never empty: MessagePack).
      value @17 :Data;
    }
    failed :group {
      kind @5 :Text;
      message @6 :Text;
      stdout @7 :Data;
      stderr @8 :Data;
    }
    stolen @9 :Bool;        # answer to a steal: true if given back
    replicated @10 :Bool;   # answer to a replicate: true if the copy is here
  }
  # For `finished` and `failed`: when the task ran on the worker's clock
  # (Unix µs), on which of its threads, and the fetch of its inputs from
  # peers before it (all 0: none). The task stream is drawn from these.
  startUs @11 :UInt64;
  endUs @12 :UInt64;
  thread @13 :UInt32;
  transferStartUs @14 :UInt64;
  transferEndUs @15 :UInt64;
  transferBytes @16 :UInt64;
}

# One task of the task stream (`wrun events`, `wrun report`, the dashboard).
struct TaskRecord {
  key @0 :UInt64;           # the client's key
  name @1 :Text;            # the task function
  worker @2 :Text;          # the worker's name
  thread @3 :UInt32;
  startUs @4 :UInt64;       # Unix µs, on the worker's clock
  endUs @5 :UInt64;
  status @6 :Text;          # "done", or the failure's kind
  bytes @7 :UInt64;         # the result's size
  transferStartUs @8 :UInt64;
  transferEndUs @9 :UInt64;
  transferBytes @10 :UInt64;
}

interface WorkerSession {
  events @0 (events :List(WorkerEvent)) -> ();
  # Alive; with the result bytes it holds, and of them on disk (spilled).
  heartbeat @1 (heldBytes :UInt64, spilledBytes :UInt64) -> ();
  fetchModule @2 (digest :Data, offset :UInt64) -> (chunk :Chunk);
  # The worker is leaving (walltime ahead, or SIGTERM): the scheduler sends
  # it no more tasks, takes back its queued ones and has peers copy the
  # results only it holds. Returns once the worker can leave losing nothing.
  retire @3 () -> ();
  # More results kept from before this session (see registerWorker).
  held @4 (results :List(HeldResult)) -> ();
  # Part of a value put with putValue, by its digest.
  fetchValue @5 (digest :Data, offset :UInt64) -> (chunk :Chunk);
}

struct HeldResult {
  task @0 :UInt64;
  size @1 :UInt64;
}

# Implemented by each worker; the scheduler commands it through this.
interface WorkerControl {
  run @0 (tasks :List(Assignment)) -> ();
  steal @1 (tasks :List(UInt64)) -> ();
  cancel @2 (tasks :List(UInt64)) -> ();
  free @3 (tasks :List(UInt64)) -> ();
  fetch @4 (task :UInt64, offset :UInt64) -> (chunk :Chunk);
  fetchMany @5 (tasks :List(UInt64)) -> (values :List(Value));
  # Copy these results from retiring peers; each answered by a `replicated` event.
  replicate @6 (copies :List(Copy)) -> ();
  # The cluster is shutting down: exit (successfully, so no nanny restarts it).
  shutdown @7 () -> ();
}

struct Copy {
  task @0 :UInt64;
  address @1 :Text;         # the peer that holds it
  ticket @2 :Data;          # as for Input.remote
  certificate @3 :Data;     # as for Input.remote
}

# What a worker serves to its peers on its peer address. A result is handed
# over only for the ticket the scheduler issued for it, so whoever reaches
# the port without the cluster secret cannot read results by guessing ids.
interface Peer {
  # A chunk of one of the peer's results. With `waitMs` above 0, a result
  # the peer is still making is answered when it is made (at most that long,
  # and at most 60 s): a staged task reads an input of another worker the
  # moment it exists.
  fetch @0 (task :UInt64, offset :UInt64, ticket :Data, waitMs :UInt32) -> (chunk :Chunk);
}

# The scheduler's journal (host/wrun-scheduler/src/journal.rs): every change
# a client was told is accepted, one record each, so that a scheduler
# restarted on it serves the same tasks, jobs and modules. Results stay on
# the workers; the journal says which tasks have one, never the bytes.
struct JournalRecord {
  union {
    # The first record of every journal file: what clients and workers
    # authenticate with, so that they rejoin the restarted scheduler.
    identity :group {
      secret @0 :Text;
      token @1 :Text;           # the one tenant's, without a tenants file ("" with one)
    }
    # Ids below this may be in use: a restarted scheduler starts above it,
    # so no id names two tasks (a worker may hold a result under it).
    ids @2 :UInt64;
    module :group {
      owners @3 :List(Text);    # tenant names
      bytes @4 :Data;
    }
    tasks @5 :List(JournalTask);
    finished @6 :List(HeldResult);
    failed :group {
      task @7 :UInt64;
      kind @8 :Text;
      message @9 :Text;
    }
    forgotten @10 :List(UInt64);
    detached :group {
      tenant @11 :Text;
      job @12 :Text;
      keys @13 :List(UInt64);
      tasks @14 :List(UInt64);
    }
    # A client session, resumable after a restart with the ticket whose
    # secret hashes (SHA-256) to this.
    session :group {
      id @15 :UInt64;
      tenant @16 :Text;
      ticketHash @17 :Data;
    }
    sessionClosed @18 :UInt64;
    # A session adopted a job: its tasks are the session's now.
    adopted :group {
      tenant @19 :Text;
      job @20 :Text;
      session @21 :UInt64;
    }
    # A value put with putValue (large literal arguments), and who put it.
    value :group {
      owners @22 :List(Text);   # tenant names
      bytes @23 :Data;
    }
  }
}

struct JournalTask {
  id @0 :UInt64;
  client @1 :UInt64;
  tenant @2 :Text;
  key @3 :UInt64;
  module @4 :Data;              # digest
  name @5 :Text;
  limits @6 :Limits;
  retries @7 :UInt32;
  args @8 :List(JournalArg);
}

struct JournalArg {
  union {
    value @0 :Data;
    result @1 :UInt64;          # a task id
    stored @2 :Data;            # a value's digest (see JournalRecord.value)
  }
}
