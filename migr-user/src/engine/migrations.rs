//! A migration's record, made when its backlog has been replayed: the
//! figures an operator graphs and alerts on (`migr_migration_*` in
//! /metrics). Pure: the engine passes in what it measured.

use migr_control::{api::MigrationRecord, phase::PhaseMachine};

/// What the end of a replay knows.
pub struct ReplayEnd {
    pub now_ms: u64,
    /// Kernel monotonic time now, and of the oldest frame parked.
    pub now_ns: u64,
    pub first_parked_ns: Option<u64>,
    pub replay_ms: u64,
    pub handled: u64,
    pub replayed: u64,
}

/// The record of the migration whose backlog just drained.
pub fn record(machine: &PhaseMachine, end: &ReplayEnd) -> MigrationRecord {
    MigrationRecord {
        role: machine
            .role
            .map_or("unknown".to_string(), |r| r.name().to_string()),
        finished_at_ms: end.now_ms,
        downtime_ms: downtime_ms(machine),
        client_gap_ms: end
            .first_parked_ns
            .filter(|first| *first <= end.now_ns)
            .map(|first| (end.now_ns - first) / 1_000_000),
        replay_ms: end.replay_ms,
        parked_frames: end.handled,
        replayed_frames: end.replayed,
    }
}

/// From the last freeze (or restore start) to the `restored` or `aborted`
/// that followed it.
fn downtime_ms(m: &PhaseMachine) -> Option<u64> {
    let down = [m.entered_at("frozen"), m.entered_at("restoring")]
        .into_iter()
        .flatten()
        .max()?;
    let up = [m.entered_at("restored"), m.entered_at("aborted")]
        .into_iter()
        .flatten()
        .filter(|t| *t >= down)
        .min()?;
    Some(up - down)
}

#[cfg(test)]
mod tests {
    use migr_control::phase::{PhaseCommand, Role, Timing};

    use super::*;

    fn end(first_parked_ns: Option<u64>) -> ReplayEnd {
        ReplayEnd {
            now_ms: 10_000,
            now_ns: 5_000_000_000,
            first_parked_ns,
            replay_ms: 40,
            handled: 12,
            replayed: 11,
        }
    }

    #[test]
    fn downtime_runs_from_the_freeze_to_the_restore() {
        let mut m = PhaseMachine::new(Timing::default(), 1_000);
        m.command(PhaseCommand::Freeze, None, None, 2_000).unwrap();
        m.command(PhaseCommand::Restored, Some(Role::Source), None, 2_350)
            .unwrap();
        let r = record(&m, &end(Some(4_600_000_000)));
        assert_eq!(r.role, "source");
        assert_eq!(r.downtime_ms, Some(350));
        assert_eq!(r.client_gap_ms, Some(400));
        assert_eq!(
            (r.parked_frames, r.replayed_frames, r.replay_ms),
            (12, 11, 40)
        );
    }

    #[test]
    fn what_was_not_seen_is_not_made_up() {
        let m = PhaseMachine::new(Timing::default(), 1_000);
        let r = record(&m, &end(None));
        assert_eq!((r.downtime_ms, r.client_gap_ms), (None, None));
        assert_eq!(r.role, "unknown");
        let later = record(&m, &end(Some(6_000_000_000)));
        assert_eq!(later.client_gap_ms, None, "a clock from another boot");
    }
}
