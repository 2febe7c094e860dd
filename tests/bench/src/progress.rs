//! Progress reporting on stderr: a bar on a terminal, a plain line every 10% otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts finished requests across all targets.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    state: Mutex<(u64, u64, u64)>, // (done, errors, last printed tenth)
}

impl Progress {
    /// Progress over `total` requests; `quiet` prints nothing.
    pub fn new(total: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}) {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let quiet_lines = if quiet { u64::MAX } else { 0 };
        Progress {
            bar,
            total,
            state: Mutex::new((0, 0, quiet_lines)),
        }
    }

    /// Records one finished request.
    pub fn inc(&self, failed: bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.0 += 1;
        state.1 += u64::from(failed);
        let (done, errors, printed) = *state;
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if failed {
                bar.set_message(format!("{errors} errors"));
            }
        } else if self.total > 0 && printed != u64::MAX {
            let tenth = done * 10 / self.total;
            if tenth > printed {
                state.2 = tenth;
                eprintln!("progress: {done}/{} requests, {errors} errors", self.total);
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
