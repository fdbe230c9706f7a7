//! Standard output that a closed pipe ends quietly (`wrun status | head -1`):
//! `println!` would panic on the broken pipe.

use std::fmt;
use std::io::Write;

/// Prints one line to stdout; exits quietly (code 0, as `head` wanted no
/// more) if the reader has gone.
pub(crate) fn line(args: fmt::Arguments<'_>) {
    write(format_args!("{args}\n"));
}

/// Prints to stdout without a newline; like [`line`] otherwise.
pub(crate) fn write(args: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Any other failure to print is not worth a panic either; say so once.
        eprintln!("wrun: cannot write to stdout: {error}");
        std::process::exit(crate::exit::USAGE.into());
    }
}

/// `println!` for the `wrun` command: see [`line`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*)) };
}

/// `print!` for the `wrun` command: see [`write`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};
