//! From the park ring into the stores: each committed record goes to its
//! service's store (or overflows), or, for a service no longer parking, is
//! replayed at once behind everything older. A record is consumed only once
//! it is stored or delivered, so a killed agent loses nothing.
//!
//! Written against two small traits ([`ParkedRecords`], [`Replayer`]) so
//! that the unit tests below run it with in-memory fakes.

use std::collections::BTreeMap;

use anyhow::Result;
use migr_common::checksum::{L4Checksum, complete_partial};

use super::{
    replay::{Replayer, replay_pending},
    service::{Service, Totals},
};
use crate::{
    datapath::decode_parked,
    parkring::{ParkRing, Peek},
    spool::StoredFrame,
};

/// Records handled in one pump at most (the loop serves requests between).
const PUMP_MAX_RECORDS: usize = 4096;

/// The ring of parked records, as the pump reads it.
pub(super) trait ParkedRecords {
    fn consumer_pos(&self) -> u64;
    fn peek(&self, pos: u64) -> Peek<'_>;
    fn consume_to(&self, pos: u64);
}

impl ParkedRecords for ParkRing {
    fn consumer_pos(&self) -> u64 {
        ParkRing::consumer_pos(self)
    }
    fn peek(&self, pos: u64) -> Peek<'_> {
        ParkRing::peek(self, pos)
    }
    fn consume_to(&self, pos: u64) {
        ParkRing::consume_to(self, pos)
    }
}

/// What one pump did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pumped {
    /// Records taken from the ring (stored, replayed, dropped or skipped).
    pub(super) records: usize,
    /// Records of services this agent does not know.
    pub(super) unknown: u64,
    /// Some service's totals or store changed (the state is to be saved).
    pub(super) changed: bool,
}

/// Moves committed records from the ring into the stores (or, for a service
/// that is not parking, replays them at once), and consumes them afterwards.
pub(super) fn pump_ring(
    ring: &impl ParkedRecords,
    services: &mut BTreeMap<u32, Service>,
    replayer: &mut impl Replayer,
) -> Result<Pumped> {
    let mut pos = ring.consumer_pos();
    let mut batch: BTreeMap<u32, Vec<StoredFrame>> = BTreeMap::new();
    let mut out = Pumped::default();
    while out.records < PUMP_MAX_RECORDS {
        let (record_pos, next, parsed) = match ring.peek(pos) {
            Peek::Empty | Peek::Busy => break,
            Peek::Record(r) => (r.pos, r.next, (!r.discarded).then(|| decode_parked(r.data))),
        };
        out.records += 1;
        let frame = match parsed {
            None => {
                pos = next;
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "skipping an unreadable parked record");
                pos = next;
                continue;
            }
            Some(Ok(f)) => f,
        };
        let id = frame.header.service_id;
        let Some(svc) = services.get_mut(&id) else {
            out.unknown += 1;
            pos = next;
            continue;
        };
        let stored = StoredFrame {
            ring_pos: record_pos,
            ifindex: frame.header.ifindex,
            timestamp_ns: frame.header.timestamp_ns,
            frame: frame.frame,
        };
        // Stored already, but not consumed (the agent was killed, or a
        // write failed and the batch is being retried).
        let already = svc.spool.max_ring_pos().is_some_and(|p| p >= record_pos);
        if svc.machine.parking() {
            if !already {
                let queued = batch.get(&id).map_or((0, 0), |q| {
                    (q.len() as u64, q.iter().map(|f| f.frame.len() as u64).sum())
                });
                let len = stored.frame.len() as u64;
                if svc.has_room(queued, len) {
                    batch.entry(id).or_default().push(stored);
                } else {
                    svc.count_overflow(len);
                    out.changed = true;
                }
            }
            pos = next;
            continue;
        }
        // Not parking (replay settling or over): this record must be
        // delivered now, behind everything older, and stay in the ring
        // (keeping held services parked) until it has been.
        out.changed |= flush_batch(services, &mut batch)?;
        ring.consume_to(record_pos);
        let svc = services.get_mut(&id).expect("checked above");
        if !already {
            store(svc, vec![stored])?;
        }
        let action = svc.machine.target_action();
        replay_pending(replayer, svc, action, usize::MAX);
        ring.consume_to(next);
        if svc.spool.pending() == 0 && svc.spool.replayed_bytes() >= 1 << 20 {
            compact_if_consumed(svc, next);
        }
        out.changed = true;
        pos = next;
    }
    out.changed |= flush_batch(services, &mut batch)?;
    ring.consume_to(pos);
    Ok(out)
}

/// Stores the queued frames of each service; whether there were any.
fn flush_batch(
    services: &mut BTreeMap<u32, Service>,
    batch: &mut BTreeMap<u32, Vec<StoredFrame>>,
) -> Result<bool> {
    let mut any = false;
    for (id, frames) in std::mem::take(batch) {
        if let Some(svc) = services.get_mut(&id) {
            store(svc, frames)?;
            any = true;
        }
    }
    Ok(any)
}

fn store(svc: &mut Service, mut frames: Vec<StoredFrame>) -> Result<()> {
    complete_checksums(&mut svc.totals, &mut frames);
    svc.totals.stored_frames += frames.len() as u64;
    svc.totals.stored_bytes += frames.iter().map(|f| f.frame.len() as u64).sum::<u64>();
    svc.spool.append(frames)
}

/// Empties a fully replayed store, but only once the ring has been consumed
/// past every record in it (else a restarted agent would store them again).
pub(super) fn compact_if_consumed(svc: &mut Service, consumer_pos: u64) {
    if svc.spool.max_ring_pos().is_none_or(|p| p < consumer_pos)
        && let Err(e) = svc.spool.compact()
    {
        tracing::warn!(service = %svc.spec.name, error = %format!("{e:#}"), "compacting the parked-frame store failed");
    }
}

/// Completes the checksums that senders left to offload, so that the frames
/// survive replay (see `migr_common::checksum`), and counts what it found.
fn complete_checksums(totals: &mut Totals, frames: &mut [StoredFrame]) {
    for f in frames {
        match complete_partial(&mut f.frame) {
            L4Checksum::Completed => totals.checksums_completed += 1,
            L4Checksum::Bad => totals.checksums_bad += 1,
            L4Checksum::Valid | L4Checksum::Absent | L4Checksum::NotApplicable => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use migr_common::maps::{Action, ParkedHeader};
    use migr_control::{
        api::ParkLimit,
        phase::{PhaseCommand, PhaseMachine, Role, Timing},
    };

    use super::*;
    use crate::{engine::service::testing::Scratch, parkring::RingRecord};

    /// Records at positions 0, 100, 200, ...; `consumed` is the consumer position.
    struct FakeRing {
        records: Vec<(Vec<u8>, bool)>,
        consumed: Cell<u64>,
    }

    impl ParkedRecords for FakeRing {
        fn consumer_pos(&self) -> u64 {
            self.consumed.get()
        }
        fn peek(&self, pos: u64) -> Peek<'_> {
            match self.records.get((pos / 100) as usize) {
                None => Peek::Empty,
                Some((data, discarded)) => Peek::Record(RingRecord {
                    pos,
                    next: pos + 100,
                    data,
                    discarded: *discarded,
                }),
            }
        }
        fn consume_to(&self, pos: u64) {
            assert!(pos >= self.consumed.get(), "the consumer never moves back");
            self.consumed.set(pos);
        }
    }

    /// Takes every batch; remembers the frames and actions it was given.
    #[derive(Default)]
    struct FakeReplayer {
        replayed: RefCell<Vec<(Vec<u8>, Action)>>,
    }

    impl Replayer for FakeReplayer {
        fn replay_batch(&mut self, frames: &[&[u8]], _ifindex: u32, action: Action) -> Result<u32> {
            let mut seen = self.replayed.borrow_mut();
            seen.extend(frames.iter().map(|f| (f.to_vec(), action)));
            Ok(frames.len() as u32)
        }
        fn replay_progress(&self) -> Result<u32> {
            Ok(0)
        }
    }

    fn record(service_id: u32, frame: &[u8]) -> (Vec<u8>, bool) {
        let header = ParkedHeader {
            service_id,
            ifindex: 2,
            frame_len: frame.len() as u32,
            copied: frame.len() as u32,
            timestamp_ns: 1,
        };
        // SAFETY: ParkedHeader is plain old data (repr(C), no padding).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&header as *const ParkedHeader).cast::<u8>(),
                size_of::<ParkedHeader>(),
            )
        };
        ([bytes, frame].concat(), false)
    }

    struct Fixture {
        services: BTreeMap<u32, Service>,
        _scratch: Scratch,
    }

    /// Service 1, frozen (parking) when `frozen`, else idle (passing).
    fn fixture(tag: &str, frozen: bool, frames: u64) -> Fixture {
        let scratch = Scratch::new(&format!("pump-{tag}"));
        let mut machine = PhaseMachine::new(Timing::default(), 0);
        if frozen {
            for cmd in [PhaseCommand::Prepare, PhaseCommand::Freeze] {
                machine.command(cmd, Some(Role::Source), None, 1).unwrap();
            }
        }
        let limit = ParkLimit {
            frames,
            bytes: 1 << 20,
        };
        let svc = scratch.service(None, machine, limit);
        Fixture {
            services: BTreeMap::from([(1, svc)]),
            _scratch: scratch,
        }
    }

    fn ring(records: Vec<(Vec<u8>, bool)>) -> FakeRing {
        FakeRing {
            records,
            consumed: Cell::new(0),
        }
    }

    #[test]
    fn a_parking_service_stores_in_order_and_overflows_at_its_limit() {
        let mut f = fixture("store", true, 3);
        let ring = ring((0..5u8).map(|i| record(1, &[i; 60])).collect());
        let mut replayer = FakeReplayer::default();
        let out = pump_ring(&ring, &mut f.services, &mut replayer).unwrap();
        assert_eq!((out.records, out.unknown, out.changed), (5, 0, true));
        assert_eq!(ring.consumed.get(), 500, "every record consumed");
        let svc = &f.services[&1];
        let stored: Vec<u8> = svc
            .spool
            .pending_frames()
            .iter()
            .map(|s| s.frame[0])
            .collect();
        assert_eq!(stored, [0, 1, 2], "the oldest kept, in order");
        assert_eq!(svc.totals.overflow_frames, 2, "the newest two dropped");
        assert!(
            replayer.replayed.borrow().is_empty(),
            "nothing replayed while parking"
        );
    }

    #[test]
    fn records_already_stored_are_not_stored_twice() {
        let mut f = fixture("twice", true, 10);
        let ring = ring((0..3u8).map(|i| record(1, &[i; 60])).collect());
        let mut replayer = FakeReplayer::default();
        pump_ring(&ring, &mut f.services, &mut replayer).unwrap();
        // A restarted agent reads the same records again (not consumed yet).
        ring.consumed.set(0);
        pump_ring(&ring, &mut f.services, &mut replayer).unwrap();
        assert_eq!(f.services[&1].spool.pending(), 3);
        assert_eq!(f.services[&1].totals.stored_frames, 3);
    }

    #[test]
    fn a_passing_service_gets_its_records_replayed_at_once() {
        let mut f = fixture("pass", false, 10);
        let ring = ring(vec![record(1, &[7; 60]), record(1, &[8; 60])]);
        let mut replayer = FakeReplayer::default();
        pump_ring(&ring, &mut f.services, &mut replayer).unwrap();
        let replayed = replayer.replayed.borrow();
        let firsts: Vec<(u8, Action)> = replayed.iter().map(|(b, a)| (b[0], *a)).collect();
        assert_eq!(firsts, [(7, Action::Pass), (8, Action::Pass)]);
        assert_eq!(f.services[&1].spool.pending(), 0);
        assert_eq!(f.services[&1].totals.replay.replayed_frames, 2);
        assert_eq!(ring.consumed.get(), 200);
    }

    #[test]
    fn unknown_discarded_and_unreadable_records_are_skipped_and_consumed() {
        let mut f = fixture("skip", true, 10);
        let ring = ring(vec![
            record(42, &[1; 60]),
            (Vec::new(), true),
            (vec![1, 2, 3], false),
            record(1, &[4; 60]),
        ]);
        let mut replayer = FakeReplayer::default();
        let out = pump_ring(&ring, &mut f.services, &mut replayer).unwrap();
        assert_eq!((out.records, out.unknown), (4, 1));
        assert_eq!(ring.consumed.get(), 400);
        assert_eq!(f.services[&1].spool.pending(), 1);
    }
}
