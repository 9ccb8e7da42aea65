//! What the agent reports per migration: each service's last one, and
//! histograms over all of them since the agent started, per role (`stats`,
//! `/metrics`). A migration ends on a node when the service's backlog has
//! been replayed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Upper bounds of the buckets of time histograms, in seconds.
pub const SECONDS_BOUNDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the buckets of frame-count histograms.
pub const FRAMES_BOUNDS: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];

/// A Prometheus-style histogram: `counts[i]` observations were at most
/// `bounds[i]` and above `bounds[i - 1]`; the last count is above them all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations at most each bound, then all (`le="+Inf"`).
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0, |acc, c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }
}

/// One migration of one service, as this node saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// `source` or `destination`.
    pub role: String,
    /// When the backlog was replayed (ms since the epoch).
    pub finished_at_ms: u64,
    /// From the freeze (source) or the restore's start (destination) to
    /// `restored` or `aborted`; absent if the timeline lacks either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The datapath's view of what a client waited: from the arrival of the
    /// first parked frame to the hand-over of the last replayed one. Absent
    /// if nothing was parked (or the agent restarted in between).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_gap_ms: Option<u64>,
    pub replay_ms: u64,
    /// Frames the replay handled: replayed, or given up as not replayable.
    pub parked_frames: u64,
    pub replayed_frames: u64,
}

/// Histograms of one role's migrations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationHistograms {
    pub downtime_seconds: Histogram,
    pub client_gap_seconds: Histogram,
    pub replay_seconds: Histogram,
    pub parked_frames: Histogram,
    pub replayed_frames: Histogram,
}

impl Default for MigrationHistograms {
    fn default() -> Self {
        Self {
            downtime_seconds: Histogram::new(&SECONDS_BOUNDS),
            client_gap_seconds: Histogram::new(&SECONDS_BOUNDS),
            replay_seconds: Histogram::new(&SECONDS_BOUNDS),
            parked_frames: Histogram::new(&FRAMES_BOUNDS),
            replayed_frames: Histogram::new(&FRAMES_BOUNDS),
        }
    }
}

impl MigrationHistograms {
    pub fn observe(&mut self, r: &MigrationRecord) {
        if let Some(ms) = r.downtime_ms {
            self.downtime_seconds.observe(ms as f64 / 1e3);
        }
        if let Some(ms) = r.client_gap_ms {
            self.client_gap_seconds.observe(ms as f64 / 1e3);
        }
        self.replay_seconds.observe(r.replay_ms as f64 / 1e3);
        self.parked_frames.observe(r.parked_frames as f64);
        self.replayed_frames.observe(r.replayed_frames as f64);
    }
}

/// Every role's histograms (`stats`' `migrations`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationStats {
    pub roles: BTreeMap<String, MigrationHistograms>,
}

impl MigrationStats {
    pub fn observe(&mut self, r: &MigrationRecord) {
        self.roles.entry(r.role.clone()).or_default().observe(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 3.0, 10.0, 11.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, [2, 2, 1]);
        assert_eq!(h.cumulative(), [2, 4, 5]);
        assert_eq!((h.count, h.sum), (5, 25.5));
    }

    #[test]
    fn a_record_feeds_its_roles_histograms() {
        let mut s = MigrationStats::default();
        let r = MigrationRecord {
            role: "source".into(),
            finished_at_ms: 1,
            downtime_ms: Some(300),
            client_gap_ms: None,
            replay_ms: 20,
            parked_frames: 40,
            replayed_frames: 40,
        };
        s.observe(&r);
        let h = &s.roles["source"];
        assert_eq!(h.downtime_seconds.count, 1);
        assert_eq!(h.client_gap_seconds.count, 0, "no gap known, none observed");
        assert_eq!(h.parked_frames.cumulative()[2], 1, "40 <= 100");
        assert!(!s.roles.contains_key("destination"));
    }
}
