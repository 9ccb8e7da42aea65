//! The service's own downtime, seen from the server: for the echo workloads
//! (`migr-echo server` and the testbed's TCP and UDP servers). A server calls
//! [`AnswerGaps::answered`] after each answer; a pause between two answers
//! longer than the threshold comes back as a [`Gap`], which the server prints
//! as `answer-gap FROM TO` (wall-clock seconds, comparable with the stamps of
//! CRIU's action scripts). A checkpointed server's last answer before the
//! freeze and its first after the restore are the two ends of such a gap.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The pause the echo servers report: longer than any between two answers
/// of a busy client, far shorter than a CRIU freeze.
pub const THRESHOLD: Duration = Duration::from_millis(20);

/// A pause between two answers, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gap {
    pub from_s: f64,
    pub to_s: f64,
}

impl Gap {
    /// The line a server prints.
    pub fn line(&self) -> String {
        format!("answer-gap {:.6} {:.6}", self.from_s, self.to_s)
    }

    /// Parses [`Self::line`]'s text.
    pub fn parse(line: &str) -> Option<Self> {
        let mut f = line.strip_prefix("answer-gap ")?.split_whitespace();
        let gap = Self {
            from_s: f.next()?.parse().ok()?,
            to_s: f.next()?.parse().ok()?,
        };
        (f.next().is_none() && gap.to_s >= gap.from_s).then_some(gap)
    }

    pub fn ms(&self) -> f64 {
        (self.to_s - self.from_s) * 1e3
    }
}

/// The time of a server's last answer; safe to share between tasks.
#[derive(Debug)]
pub struct AnswerGaps {
    /// Microseconds since the epoch; 0: no answer yet.
    last_us: AtomicU64,
    threshold_us: u64,
}

impl AnswerGaps {
    pub fn new(threshold: Duration) -> Self {
        Self {
            last_us: AtomicU64::new(0),
            threshold_us: threshold.as_micros() as u64,
        }
    }

    /// Notes an answer now; the pause before it, if longer than the threshold.
    pub fn answered(&self) -> Option<Gap> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.answered_at(now)
    }

    /// [`Self::answered`] at `now_us` (microseconds since the epoch).
    pub fn answered_at(&self, now_us: u64) -> Option<Gap> {
        let last = self.last_us.fetch_max(now_us, Ordering::Relaxed);
        (last != 0 && now_us > last && now_us - last > self.threshold_us).then(|| Gap {
            from_s: last as f64 / 1e6,
            to_s: now_us as f64 / 1e6,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_over_the_threshold_is_a_gap_and_round_trips_as_a_line() {
        let g = AnswerGaps::new(Duration::from_millis(20));
        assert_eq!(g.answered_at(1_000_000), None, "the first answer");
        assert_eq!(g.answered_at(1_010_000), None, "10 ms: no gap");
        let gap = g.answered_at(1_260_000).expect("250 ms: a gap");
        assert!((gap.ms() - 250.0).abs() < 1e-6, "{gap:?}");
        assert_eq!(Gap::parse(&gap.line()), Some(gap));
        assert_eq!(
            g.answered_at(1_250_000),
            None,
            "an earlier stamp from another task"
        );
    }

    #[test]
    fn other_lines_are_no_gaps() {
        for line in [
            "listening 1.2.3.4:5",
            "answer-gap 2 1",
            "answer-gap 1",
            "answer-gap 1 2 3",
        ] {
            assert_eq!(Gap::parse(line), None, "{line}");
        }
    }
}
