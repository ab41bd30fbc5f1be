//! The progress line of a long copy (`volume import`, `volume export`): drawn on stderr when
//! it is a terminal, nothing otherwise (a log or a pipe gets only the final summary).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::size::format_size;

/// A progress line on a terminal; nothing otherwise.
pub struct Progress {
    total: u64,
    started: Instant,
    tty: bool,
    last: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            started: now,
            tty: std::io::stderr().is_terminal(),
            last: now,
        }
    }

    pub fn update(&mut self, done: u64) {
        if !self.tty || (self.last.elapsed() < Duration::from_millis(200) && done < self.total) {
            return;
        }
        self.last = Instant::now();
        let pct = (done * 100).checked_div(self.total).unwrap_or(100).min(100);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let width = 40usize;
        let filled = (pct as usize * width) / 100;
        eprint!(
            "\r[{}{}] {pct:>3}% {} / {} {:.1} MiB/s",
            "#".repeat(filled),
            " ".repeat(width - filled),
            format_size(done),
            format_size(self.total),
            done as f64 / secs / (1 << 20) as f64
        );
        if done >= self.total {
            eprintln!();
        }
    }
}
