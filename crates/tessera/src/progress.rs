//! Progress of long commands, on stderr: the bar of a copy (`volume import`, `volume
//! export`), drawn only on a terminal; and the status of a background job a command waits
//! for (`backup create`, `backup copy`, `volume create --from-backup --wait`): a bar
//! redrawn on a terminal, plain lines now and then on a pipe or in a log. What a job
//! reports is formatted by its command; the bar, rates and durations here.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::size::format_size;

/// Cells of a bar.
const BAR_WIDTH: usize = 40;
/// How often a waiting command asks for the record of the job it waits for.
pub const POLL: Duration = Duration::from_millis(250);
/// How often a waiting command writes a plain line (not on a terminal) while its job moves.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

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
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r{} {} / {} {}",
            bar(done, self.total),
            format_size(done),
            format_size(self.total),
            format_rate(done as f64 / secs)
        );
        if done >= self.total {
            eprintln!();
        }
    }
}

/// `[####      ]  40%`: `done` of `total` (a total of 0 is complete).
pub fn bar(done: u64, total: u64) -> String {
    let pct = percent(done, total);
    let filled = (pct as usize * BAR_WIDTH) / 100;
    format!(
        "[{}{}] {pct:>3}%",
        "#".repeat(filled),
        " ".repeat(BAR_WIDTH - filled)
    )
}

/// Whole percent of `done` in `total`, at most 100 (a total of 0 is complete).
pub fn percent(done: u64, total: u64) -> u64 {
    let pct = (u128::from(done) * 100)
        .checked_div(u128::from(total))
        .unwrap_or(100)
        .min(100);
    pct as u64
}

/// `85.0 MiB/s`.
pub fn format_rate(bytes_per_sec: f64) -> String {
    format!("{:.1} MiB/s", bytes_per_sec / f64::from(1u32 << 20))
}

/// `45s`, `3m 20s`, `2h 05m`: a duration in its two largest units.
pub fn format_secs(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// The rate of a byte counter watched while waiting for a job: counted from the first
/// value seen (the job may have run before the command started). A counter that went
/// back (another manager took the job over and counts afresh) starts the count again.
pub struct Rate {
    since: Instant,
    base: u64,
}

impl Rate {
    pub fn new(value: u64) -> Rate {
        Rate {
            since: Instant::now(),
            base: value,
        }
    }

    /// Bytes per second since the count started; `None` until a second has passed.
    pub fn per_sec(&mut self, value: u64) -> Option<f64> {
        if value < self.base {
            *self = Rate::new(value);
        }
        rate(value - self.base, self.since.elapsed())
    }
}

/// `bytes` over `elapsed`, once there is a second to measure over.
fn rate(bytes: u64, elapsed: Duration) -> Option<f64> {
    (elapsed >= Duration::from_secs(1)).then(|| bytes as f64 / elapsed.as_secs_f64())
}

/// The status of a job a command waits for, on stderr: on a terminal, one line redrawn at
/// every poll; otherwise a plain line when the job moved, at most every [`PLAIN_EVERY`]
/// (none with `quiet`: `--output json` keeps its one document and nothing more).
pub struct Status {
    tty: bool,
    quiet: bool,
    drawn: bool,
    last_plain: Option<(Instant, String)>,
}

impl Status {
    pub fn new(quiet: bool) -> Status {
        Status {
            tty: std::io::stderr().is_terminal(),
            quiet,
            drawn: false,
            last_plain: None,
        }
    }

    /// Shows `line` (after a bar of `done`/`total` on a terminal).
    pub fn show(&mut self, done: u64, total: u64, line: &str) {
        if self.tty {
            // `\x1b[K` clears what a longer line before left.
            eprint!("\r{} {line}\x1b[K", bar(done, total));
            self.drawn = true;
            return;
        }
        let due = match &self.last_plain {
            None => true,
            Some((at, last)) => last != line && at.elapsed() >= PLAIN_EVERY,
        };
        if due && !self.quiet {
            eprintln!("{line}");
            self.last_plain = Some((Instant::now(), line.to_string()));
        }
    }

    /// Ends the redrawn line, if one was drawn.
    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_percents_rates_and_durations_read_as_people_expect() {
        assert_eq!(bar(0, 10), format!("[{}]   0%", " ".repeat(40)));
        assert_eq!(
            bar(1, 4),
            format!("[{}{}]  25%", "#".repeat(10), " ".repeat(30))
        );
        assert_eq!(bar(5, 4), format!("[{}] 100%", "#".repeat(40)));
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(format_rate(85.0 * 1048576.0), "85.0 MiB/s");
        assert_eq!(format_secs(45), "45s");
        assert_eq!(format_secs(200), "3m 20s");
        assert_eq!(format_secs(7500), "2h 05m");
        assert_eq!(rate(100, Duration::from_millis(500)), None);
        assert_eq!(rate(3 << 20, Duration::from_secs(2)), Some(1.5 * 1048576.0));
    }

    #[test]
    fn a_counter_that_goes_back_starts_the_rate_again() {
        let mut r = Rate::new(1000);
        assert_eq!(r.per_sec(2000), None);
        r.since -= Duration::from_secs(2);
        let per_sec = r.per_sec(3000).expect("two seconds");
        assert!((990.0..=1000.0).contains(&per_sec), "{per_sec}");
        assert_eq!(r.per_sec(10), None);
        assert_eq!(r.base, 10);
    }
}
