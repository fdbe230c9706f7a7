;; A wrun task module written by hand from guest-sdk/ABI.md alone: no SDK,
;; no WASI. The test compiles it with the `wat` crate and runs it through the
;; same path as the Rust modules.
(module
  (memory (export "memory") 1)
  ;; Bump allocator: the instance lives for one task, nothing is freed.
  (global $next (mut i32) (i32.const 1024))
  (func (export "wrun_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $ptr))

  ;; Replies live at 0 (status, ptr, len: three little-endian u32).
  (func $reply (param $status i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $status))
    (i32.store (i32.const 4) (local.get $ptr))
    (i32.store (i32.const 8) (local.get $len))
    (i32.const 0))

  ;; answer() -> u64: the MessagePack positive fixint 42 (0x2a), kept at 16.
  (data (i32.const 16) "\2a")
  (func (export "wrun.task.answer") (param $args i32) (param $len i32) (result i32)
    (call $reply (i32.const 0) (i32.const 16) (i32.const 1)))

  ;; echo(value: any) -> any: the arguments are a one-element array, whose
  ;; header is one byte (0x91); the element that follows is the result.
  (func (export "wrun.task.echo") (param $args i32) (param $len i32) (result i32)
    (call $reply (i32.const 0)
      (i32.add (local.get $args) (i32.const 1))
      (i32.sub (local.get $len) (i32.const 1))))

  ;; refuse() -> unit: a task error with a UTF-8 message.
  (data (i32.const 32) "refused by hand")
  (func (export "wrun.task.refuse") (param $args i32) (param $len i32) (result i32)
    (call $reply (i32.const 1) (i32.const 32) (i32.const 15)))

  ;; liar() -> i64 that returns the string "hi" (a2 68 69): the host must
  ;; refuse a result that is not of the declared type.
  (data (i32.const 48) "\a2hi")
  (func (export "wrun.task.liar") (param $args i32) (param $len i32) (result i32)
    (call $reply (i32.const 0) (i32.const 48) (i32.const 3)))

  ;; reserved() -> any that returns the byte 0xc1, which MessagePack
  ;; reserves: not a value at all.
  (data (i32.const 56) "\c1")
  (func (export "wrun.task.reserved") (param $args i32) (param $len i32) (result i32)
    (call $reply (i32.const 0) (i32.const 56) (i32.const 1)))

  ;; The signatures, one JSON record each, concatenated.
  (@custom "wrun.tasks" "{\"abi\":1,\"name\":\"answer\",\"params\":[],\"returns\":\"u64\"}\n")
  (@custom "wrun.tasks" "{\"abi\":1,\"name\":\"echo\",\"params\":[{\"name\":\"value\",\"type\":\"any\"}],\"returns\":\"any\"}\n")
  (@custom "wrun.tasks" "{\"abi\":1,\"name\":\"refuse\",\"params\":[],\"returns\":\"unit\"}\n")
  (@custom "wrun.tasks" "{\"abi\":1,\"name\":\"liar\",\"params\":[],\"returns\":\"i64\"}\n")
  (@custom "wrun.tasks" "{\"abi\":1,\"name\":\"reserved\",\"params\":[],\"returns\":\"any\"}\n")
)
