//! The guest half of the wrun ABI (see `guest-sdk/ABI.md`): the exported
//! allocator, the reply record, argument decoding with per-parameter errors,
//! result encoding and the panic hook that reports message and location to
//! the host.

use std::fmt::{self, Display};
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, Error as _, IgnoredAny, SeqAccess};
use serde::{Deserialize, Serialize};

pub use serde;

/// Reply status: the payload is the MessagePack-encoded result.
pub const STATUS_OK: u32 = 0;
/// Reply status: the payload is a UTF-8 message from a task that returned `Err`.
pub const STATUS_TASK_ERROR: u32 = 1;
/// Reply status: the payload is a UTF-8 message saying why the arguments were rejected.
pub const STATUS_BAD_ARGUMENTS: u32 = 2;

/// The record a task export returns a pointer to: three little-endian u32.
#[repr(C)]
pub struct Reply {
    status: u32,
    ptr: u32,
    len: u32,
}

/// What a task wrapper produced, before it is laid out for the host.
pub enum Outcome {
    /// Encoded result bytes.
    Value(Vec<u8>),
    /// The task's own error message.
    TaskError(String),
    /// The arguments did not decode.
    BadArguments(String),
}

/// Allocates `len` bytes for the host to write the encoded arguments into.
///
/// The instance lives for one task only, so nothing is ever freed: the host
/// never calls a deallocator and the memory goes away with the instance.
#[unsafe(no_mangle)]
pub extern "C" fn wrun_alloc(len: usize) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(len);
    let ptr = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    ptr
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wrun")]
unsafe extern "C" {
    /// Tells the host the panic message and location just before the guest
    /// aborts. Both are UTF-8 slices of guest memory.
    #[link_name = "panic"]
    fn host_panic(message: *const u8, message_len: usize, location: *const u8, location_len: usize);
}

fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let message = if let Some(text) = info.payload().downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = info.payload().downcast_ref::<String>() {
        text.clone()
    } else {
        "Box<dyn Any>".to_owned()
    };
    let location = info
        .location()
        .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()))
        .unwrap_or_default();
    #[cfg(target_arch = "wasm32")]
    // SAFETY: both pointers and lengths describe live `String`s of this guest;
    // the host copies them before returning.
    unsafe {
        host_panic(
            message.as_ptr(),
            message.len(),
            location.as_ptr(),
            location.len(),
        );
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("task panicked at {location}: {message}");
}

/// Runs one task call: installs the panic hook, hands the argument bytes to
/// `body` and lays the outcome out as a [`Reply`] for the host.
///
/// # Safety
///
/// `args_ptr` must point to `args_len` initialised bytes (the host writes
/// them into a buffer from [`wrun_alloc`]), or `args_len` must be 0.
pub unsafe fn run_task(
    args_ptr: *const u8,
    args_len: usize,
    body: impl FnOnce(&[u8]) -> Outcome,
) -> *const Reply {
    std::panic::set_hook(Box::new(report_panic));
    let args: &[u8] = if args_len == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `args_len` bytes at `args_ptr`.
        unsafe { std::slice::from_raw_parts(args_ptr, args_len) }
    };
    let (status, payload) = match body(args) {
        Outcome::Value(bytes) => (STATUS_OK, bytes),
        Outcome::TaskError(message) => (STATUS_TASK_ERROR, message.into_bytes()),
        Outcome::BadArguments(message) => (STATUS_BAD_ARGUMENTS, message.into_bytes()),
    };
    // Leaked on purpose: the host reads them after we return, and the
    // instance is discarded after the task.
    let payload: &'static [u8] = Vec::leak(payload);
    let reply = Box::leak(Box::new(Reply {
        status,
        ptr: payload.as_ptr() as usize as u32,
        len: payload.len() as u32,
    }));
    reply as *const Reply
}

/// Encodes a task's plain return value.
pub fn value_outcome<T: Serialize>(value: T) -> Outcome {
    match encode(&value) {
        Ok(bytes) => Outcome::Value(bytes),
        Err(message) => Outcome::TaskError(message),
    }
}

/// Encodes a task's `Result`: `Err` becomes a task error with its message.
pub fn result_outcome<T: Serialize, E: Display>(result: Result<T, E>) -> Outcome {
    match result {
        Ok(value) => value_outcome(value),
        Err(error) => Outcome::TaskError(error.to_string()),
    }
}

/// Encodes a value the way wrun results travel: MessagePack with struct
/// fields as maps (so the host can show field names).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|error| format!("could not encode the result: {error}"))
}

/// Decodes the argument array of a task into `Args` (a tuple struct the
/// macro generates), turning any error into [`Outcome::BadArguments`].
pub fn decode_args<Args: DeserializeOwned>(bytes: &[u8]) -> Result<Args, Outcome> {
    rmp_serde::from_slice(bytes).map_err(|error| Outcome::BadArguments(error.to_string()))
}

/// Reads argument `index` (named `name`) of `count` from the argument array,
/// naming the parameter in any error.
pub fn next_arg<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
    seq: &mut A,
    name: &str,
    index: usize,
    count: usize,
) -> Result<T, A::Error> {
    match seq.next_element::<T>() {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(A::Error::custom(format_args!(
            "expected {count} argument{}, got {index}",
            if count == 1 { "" } else { "s" }
        ))),
        Err(error) => Err(A::Error::custom(format_args!("argument `{name}`: {error}"))),
    }
}

/// Fails if the argument array has more than `count` elements.
pub fn no_more_args<'de, A: SeqAccess<'de>>(seq: &mut A, count: usize) -> Result<(), A::Error> {
    let mut extra = 0usize;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        extra += 1;
    }
    if extra == 0 {
        Ok(())
    } else {
        Err(A::Error::custom(format_args!(
            "expected {count} argument{}, got {}",
            if count == 1 { "" } else { "s" },
            count + extra
        )))
    }
}

/// A serde visitor that expects an argument array; the macro implements the
/// element reading through [`ArgsFromSeq`].
pub struct ArgsVisitor<Args>(PhantomData<Args>);

impl<Args> Default for ArgsVisitor<Args> {
    fn default() -> Self {
        ArgsVisitor(PhantomData)
    }
}

/// Implemented by the macro for each task's argument tuple struct.
pub trait ArgsFromSeq<'de>: Sized {
    /// How many parameters the task has.
    const COUNT: usize;
    /// Reads all parameters from the sequence.
    fn from_seq<A: SeqAccess<'de>>(seq: &mut A) -> Result<Self, A::Error>;
}

impl<'de, Args: ArgsFromSeq<'de>> serde::de::Visitor<'de> for ArgsVisitor<Args> {
    type Value = Args;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "an array of {} arguments", Args::COUNT)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Args, A::Error> {
        let args = Args::from_seq(&mut seq)?;
        no_more_args(&mut seq, Args::COUNT)?;
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// What the macro generates for `fn f(count: u32, names: Vec<String>)`.
    struct Args2(u32, Vec<String>);

    impl<'de> ArgsFromSeq<'de> for Args2 {
        const COUNT: usize = 2;
        fn from_seq<A: SeqAccess<'de>>(seq: &mut A) -> Result<Self, A::Error> {
            Ok(Args2(
                next_arg(seq, "count", 0, 2)?,
                next_arg(seq, "names", 1, 2)?,
            ))
        }
    }

    impl<'de> Deserialize<'de> for Args2 {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_seq(ArgsVisitor::<Args2>::default())
        }
    }

    fn bad_arguments(bytes: &[u8]) -> String {
        match decode_args::<Args2>(bytes) {
            Err(Outcome::BadArguments(message)) => message,
            Err(_) => panic!("not an argument error"),
            Ok(_) => panic!("decoded"),
        }
    }

    #[test]
    fn argument_errors_name_the_parameter_and_the_count() {
        let wrong_type = rmp_serde::to_vec(&(7u32, vec![1u8])).unwrap();
        assert!(
            bad_arguments(&wrong_type).starts_with("argument `names`: invalid type: integer `1`")
        );
        let too_few = rmp_serde::to_vec(&(7u32,)).unwrap();
        assert_eq!(bad_arguments(&too_few), "expected 2 arguments, got 1");
        let too_many = rmp_serde::to_vec(&(7u32, Vec::<String>::new(), true)).unwrap();
        assert_eq!(bad_arguments(&too_many), "expected 2 arguments, got 3");
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        id: u64,
        label: Option<String>,
        scores: HashMap<String, f64>,
        pair: (i8, bool),
    }

    proptest! {
        #[test]
        fn arguments_round_trip(count in any::<u32>(), names in prop::collection::vec(".{0,12}", 0..8)) {
            let bytes = rmp_serde::to_vec(&(count, names.clone())).unwrap();
            let Ok(Args2(c, n)) = decode_args::<Args2>(&bytes) else { panic!("decode") };
            prop_assert_eq!(c, count);
            prop_assert_eq!(n, names);
        }

        #[test]
        fn results_round_trip_with_field_names(
            id in any::<u64>(),
            label in prop::option::of(".{0,12}"),
            scores in prop::collection::hash_map(".{0,6}", -1e9f64..1e9, 0..6),
            pair in any::<(i8, bool)>(),
        ) {
            let record = Record { id, label, scores, pair };
            let Outcome::Value(bytes) = value_outcome(&record) else { panic!("encode") };
            let back: Record = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &record);
            // Field names travel, so the host can show them.
            prop_assert!(bytes.windows(6).any(|w| w == b"scores"));
        }
    }
}
