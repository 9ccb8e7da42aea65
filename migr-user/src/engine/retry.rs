//! Retrying a replay that failed part-way.
//!
//! A replay batch can fail for a reason that passes (the kernel short of
//! memory, an interrupted call) or for good (a frame the program refuses).
//! The runs that took place are done; the frame where the batch stopped stays
//! pending, first in line, and is tried again after a backoff that doubles.
//! Only after [`REPLAY_ATTEMPTS`] failures in a row at the same frame is that
//! one frame given up (counted as failed), and the replay goes on behind it.
//! Nothing behind the frame overtakes it meanwhile: the replay waits, and for
//! a service past its backlog its ring record stays unconsumed, so the
//! datapath keeps holding fresh frames behind it.

use std::time::{Duration, Instant};

/// Failures in a row at one frame before it is given up.
pub(super) const REPLAY_ATTEMPTS: u32 = 5;
/// The first wait; each further failure doubles it (10 to 80 ms).
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// A replay waiting to try a frame again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ReplayRetry {
    /// The ring position of the frame it stopped at (its identity: store
    /// indexes move when the store is compacted).
    pub(super) frame: u64,
    /// Failures at that frame so far.
    pub(super) attempts: u32,
    /// Not before this time.
    pub(super) not_before: Instant,
}

/// What to do after a replay stopped at `frame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AfterFailure {
    Retry(ReplayRetry),
    /// Drop this frame (count it as failed) and go on.
    GiveUp,
}

/// The decision after a failure at `frame`, given the retry already under
/// way (if any).
pub(super) fn after_failure(prev: Option<ReplayRetry>, frame: u64, now: Instant) -> AfterFailure {
    let attempts = match prev {
        Some(r) if r.frame == frame => r.attempts + 1,
        _ => 1,
    };
    if attempts >= REPLAY_ATTEMPTS {
        return AfterFailure::GiveUp;
    }
    AfterFailure::Retry(ReplayRetry {
        frame,
        attempts,
        not_before: now + FIRST_BACKOFF * (1 << (attempts - 1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_retried_with_a_doubling_backoff_then_given_up() {
        let t0 = Instant::now();
        let mut retry = None;
        let mut waits = Vec::new();
        for _ in 1..REPLAY_ATTEMPTS {
            match after_failure(retry, 300, t0) {
                AfterFailure::Retry(r) => {
                    waits.push(r.not_before - t0);
                    retry = Some(r);
                }
                AfterFailure::GiveUp => panic!("given up after {} attempts", waits.len() + 1),
            }
        }
        assert_eq!(waits, [10, 20, 40, 80].map(Duration::from_millis).to_vec());
        assert_eq!(after_failure(retry, 300, t0), AfterFailure::GiveUp);
    }

    #[test]
    fn a_failure_at_another_frame_starts_counting_anew() {
        let t0 = Instant::now();
        let AfterFailure::Retry(r) = after_failure(None, 100, t0) else {
            panic!("a first failure is retried");
        };
        let r = ReplayRetry { attempts: 4, ..r };
        assert!(matches!(
            after_failure(Some(r), 200, t0),
            AfterFailure::Retry(ReplayRetry {
                frame: 200,
                attempts: 1,
                ..
            })
        ));
    }
}
