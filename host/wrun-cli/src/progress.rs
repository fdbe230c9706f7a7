//! A progress bar for maps and gathers, on a terminal only (indicatif: rate,
//! ETA, one clean line; nothing at all when stderr is piped).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar, or nothing when stderr is not a terminal or there is one task.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `total` tasks, shown if `wanted`, stderr is a terminal and
    /// there is more than one task.
    pub(crate) fn new(total: usize, wanted: bool) -> Progress {
        let show = wanted && total > 1 && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("[{bar:40}] {pos}/{len} {per_sec:.0} ETA {eta}")
                    .expect("a valid template")
                    .progress_chars("#>."),
            );
            bar.tick();
            bar
        });
        Progress { bar }
    }

    /// `done` of the tasks have finished.
    pub(crate) fn set(&self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            if Some(done as u64) == bar.length() {
                bar.finish();
            }
        }
    }
}
