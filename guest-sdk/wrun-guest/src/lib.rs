//! # wrun-guest: write wrun tasks as ordinary Rust functions
//!
//! A task crate is a `cdylib` built for `wasm32-wasip1` (`wrun build` does
//! that). Mark each function the cluster may call with [`task`]:
//!
//! ```
//! use wrun_guest::task;
//!
//! #[task]
//! fn inc(x: i64) -> i64 { x + 1 }
//!
//! #[task]
//! fn mean(xs: Vec<f64>) -> Result<f64, String> {
//!     if xs.is_empty() { return Err("mean of an empty list".into()); }
//!     Ok(xs.iter().sum::<f64>() / xs.len() as f64)
//! }
//!
//! // A task stays an ordinary function, callable (and testable) as such.
//! assert_eq!(inc(41), 42);
//! assert_eq!(mean(vec![1.0, 2.0, 6.0]), Ok(3.0));
//! assert!(mean(vec![]).is_err());
//! ```
//!
//! Arguments and results are any types that implement serde's `Deserialize`
//! and `Serialize`. They travel as MessagePack; the host converts from and to
//! JSON at the shell. Returning `Result<T, E>` with `E: Display` turns `Err`
//! into a task error carrying the message; a panic becomes a task error
//! carrying the panic message and its location.
//!
//! The macro also records each task's signature in the module's `wrun.tasks`
//! custom section, which the host reads to list tasks and to reject wrong
//! arguments before running anything. `guest-sdk/ABI.md` documents the whole
//! contract, so that modules can be written in other languages too.
//!
//! This crate must stay small and dependency-light: it is linked into every
//! task module. It depends on serde and rmp-serde only.

#![deny(missing_docs)]

pub use wrun_guest_macros::task;

/// Re-exported so that task crates need no direct serde dependency for derives.
pub use serde;

/// Support code for the `#[task]` macro. Not a stable API: use the macro.
#[doc(hidden)]
pub mod __private;
