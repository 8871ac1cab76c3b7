//! Progress of long jobs (indexing, compaction, the synthetic generator): a
//! bar with rate and ETA on a terminal (indicatif), and a plain line every
//! ~10% or 30 s when stderr is a file, so that logs of bench runs show where
//! the time went.

use parking_lot::Mutex;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// One phase's progress.
pub struct Progress {
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Mutex<(Instant, u64)>,
}

impl Progress {
    /// A phase of `total` steps (0: unknown).
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = if total > 0 { ProgressBar::new(total) } else { ProgressBar::new_spinner() };
            let style =
                ProgressStyle::with_template("{msg:>22} [{bar:36}] {human_pos}/{human_len} {per_sec} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            b.set_style(style);
            b.set_message(label.to_string());
            b
        });
        Progress {
            label: label.into(),
            total,
            bar,
            started: Instant::now(),
            last_line: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Sets the steps done so far.
    pub fn set(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
            return;
        }
        let mut last = self.last_line.lock();
        if line_due(self.total, last.1, done, last.0.elapsed()) {
            *last = (Instant::now(), done);
            eprintln!("{}", self.line(done));
        }
    }

    /// The plain line for `done` steps: with the total and an ETA when the
    /// total is known, else the count and the rate.
    fn line(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        if self.total == 0 {
            return format!("{}: {done} ({secs:.0}s, {:.0}/s)", self.label, done as f64 / secs.max(1e-9));
        }
        let eta = if done > 0 && self.total > done { secs / done as f64 * (self.total - done) as f64 } else { 0.0 };
        format!("{}: {done}/{} ({secs:.0}s, ETA {eta:.0}s)", self.label, self.total)
    }

    /// Ends the phase (a line says how long it took, when that was a
    /// second or more); returns its seconds.
    pub fn finish(self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if secs >= 1.0 {
            eprintln!("{}: done in {secs:.1}s", self.label);
        }
        secs
    }
}

/// Whether a plain line is due at `done` steps, the last at `last` steps
/// `since` ago: every tenth of a known total, else (and at the latest) every
/// 30 s.
fn line_due(total: u64, last: u64, done: u64, since: Duration) -> bool {
    (total > 0 && done >= last + (total / 10).max(1)) || since >= Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase of unknown length prints a line every 30 s, not one per step
    /// (the items reader of a 10^8-item index printed 1,500 lines).
    #[test]
    fn plain_lines_every_tenth_or_thirty_seconds() {
        let now = Duration::from_secs(1);
        assert!(!line_due(0, 0, 1_000_000, now));
        assert!(line_due(0, 0, 1, Duration::from_secs(30)));
        assert!(!line_due(100, 0, 9, now));
        assert!(line_due(100, 0, 10, now));
        let p = Progress::new("reading items", 0);
        assert!(!p.line(5).contains('/') || p.line(5).contains("/s"), "{}", p.line(5));
        assert!(p.line(5).starts_with("reading items: 5 (") && !p.line(5).contains("/0"), "{}", p.line(5));
    }
}
