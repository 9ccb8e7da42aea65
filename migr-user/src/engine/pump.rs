//! From the park ring into the stores: each committed record goes to its
//! service's store (or overflows), or, for a service no longer parking, is
//! replayed at once behind everything older. A record is consumed only once
//! it is stored or delivered, so a killed agent loses nothing.
//!
//! A store that cannot be written (a full filesystem) stalls the pump at
//! its first record that was not stored: that record and every one after it
//! stay in the ring, and the engine tries again after a pause. What the
//! pump counts for a record it drops (an overflow, an unknown service) is
//! counted once the ring is consumed past it, so that a record read again
//! after a stall is counted once.
//!
//! Written against two small traits ([`ParkedRecords`], [`Replayer`]) so
//! that the unit tests below run it with in-memory fakes.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Result;
use migr_common::checksum::{L4Checksum, complete_partial};

use super::{
    replay::{Replayer, replay_pending},
    service::{Bound, Service, within_agent_bound},
};
use crate::{
    datapath::decode_parked,
    parkring::{ParkRing, Peek},
    spool::StoredFrame,
};

/// Records handled in one pump at most (the loop serves requests between).
const PUMP_MAX_RECORDS: usize = 4096;

/// A store is compacted while frames are pending only once its replayed
/// frames take at least this much of its file (fewer, larger copies).
const COMPACT_MIN_BYTES: u64 = 1 << 20;

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
    /// Records read from the ring (stored, replayed, dropped or skipped;
    /// after a stall, some of them again later).
    pub(super) records: usize,
    /// Records of services this agent does not know.
    pub(super) unknown: u64,
    /// Some service's totals or store changed (the state is to be saved).
    pub(super) changed: bool,
    /// A store could not be written: the pump stopped at its first record
    /// that was not stored, which stays in the ring with all after it.
    pub(super) stalled: bool,
    /// A replay failed and waits until then; the pump stopped at its record.
    pub(super) retry_at: Option<Instant>,
}

/// What a pump has read and not applied yet: the frames to store, and the
/// records it drops, whose counts wait until the ring is consumed past them.
#[derive(Default)]
struct Batch {
    frames: BTreeMap<u32, Vec<StoredFrame>>,
    /// Bytes of the frames in `frames`.
    bytes: u64,
    overflows: Vec<Overflow>,
    /// Ring positions of records of services this agent does not know.
    unknown: Vec<u64>,
}

struct Overflow {
    service: u32,
    pos: u64,
    len: u64,
    bound: Bound,
}

impl Batch {
    /// Frames and bytes queued for one service.
    fn queued(&self, id: u32) -> (u64, u64) {
        self.frames.get(&id).map_or((0, 0), |q| {
            (q.len() as u64, q.iter().map(|f| f.frame.len() as u64).sum())
        })
    }

    fn push(&mut self, id: u32, frame: StoredFrame) {
        self.bytes += frame.frame.len() as u64;
        self.frames.entry(id).or_default().push(frame);
    }
}

/// Moves committed records from the ring into the stores (or, for a service
/// that is not parking, replays them at once), and consumes them afterwards.
/// `max_total_bytes` bounds what all stores hold pending together.
pub(super) fn pump_ring(
    ring: &impl ParkedRecords,
    services: &mut BTreeMap<u32, Service>,
    replayer: &mut impl Replayer,
    max_total_bytes: u64,
) -> Pumped {
    let mut pos = ring.consumer_pos();
    let mut batch = Batch::default();
    let mut out = Pumped::default();
    // Pending in all stores, for the agent-wide bound (without `batch`).
    let mut held: u64 = services.values().map(|s| s.spool.pending_bytes()).sum();
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
            batch.unknown.push(record_pos);
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
        // write failed and the pump stalled).
        let already = svc.spool.max_ring_pos().is_some_and(|p| p >= record_pos);
        if svc.machine.parking() {
            if !already {
                let len = stored.frame.len() as u64;
                let bound = if !svc.has_room(batch.queued(id), len) {
                    Some(Bound::Service)
                } else if !within_agent_bound(
                    held.saturating_add(batch.bytes),
                    len,
                    max_total_bytes,
                ) {
                    Some(Bound::Agent(max_total_bytes))
                } else {
                    None
                };
                match bound {
                    None => batch.push(id, stored),
                    Some(bound) => batch.overflows.push(Overflow {
                        service: id,
                        pos: record_pos,
                        len,
                        bound,
                    }),
                }
            }
            pos = next;
            continue;
        }
        // Not parking (replay settling or over): this record must be
        // delivered now, behind everything older, and stay in the ring
        // (keeping held services parked) until it has been.
        let flushed = flush_batch(services, &mut batch, &mut out);
        held += flushed.bytes;
        consume(
            ring,
            services,
            &mut batch,
            flushed.stop.unwrap_or(record_pos),
            &mut out,
        );
        let svc = services.get_mut(&id).expect("checked above");
        let before = svc.spool.pending_bytes();
        if flushed.stop.is_some() || (!already && store(svc, vec![stored]).is_err()) {
            out.stalled = true;
            out.changed = true;
            return out;
        }
        let action = svc.machine.target_action();
        replay_pending(replayer, svc, action, usize::MAX);
        if svc.spool.pending() > 0 {
            // The replay failed and waits to try again: the record stays in
            // the ring, so a held service's fresh frames queue behind it.
            out.retry_at = svc.replay_retry.map(|r| r.not_before);
            out.changed = true;
            return out;
        }
        ring.consume_to(next);
        reclaim_if_worth(svc, next);
        held = (held + svc.spool.pending_bytes()).saturating_sub(before);
        out.changed = true;
        pos = next;
    }
    let flushed = flush_batch(services, &mut batch, &mut out);
    out.stalled |= flushed.stop.is_some();
    consume(
        ring,
        services,
        &mut batch,
        flushed.stop.unwrap_or(pos),
        &mut out,
    );
    out
}

/// What storing the queued frames did.
#[derive(Default)]
struct Flushed {
    /// Bytes stored.
    bytes: u64,
    /// Ring position of the first frame that could not be stored.
    stop: Option<u64>,
}

/// Stores the queued frames of each service.
fn flush_batch(
    services: &mut BTreeMap<u32, Service>,
    batch: &mut Batch,
    out: &mut Pumped,
) -> Flushed {
    let mut flushed = Flushed::default();
    batch.bytes = 0;
    for (id, frames) in std::mem::take(&mut batch.frames) {
        let Some(svc) = services.get_mut(&id) else {
            continue;
        };
        let first = frames.first().map(|f| f.ring_pos);
        let bytes: u64 = frames.iter().map(|f| f.frame.len() as u64).sum();
        out.changed = true;
        match store(svc, frames) {
            Ok(()) => flushed.bytes += bytes,
            // The other services' frames are stored still: a stalled pump
            // reads them again, and skips them by position.
            Err(()) => flushed.stop = [flushed.stop, first].into_iter().flatten().min(),
        }
    }
    flushed
}

/// Consumes the ring up to `to`, and counts the records the pump dropped
/// that will not be read again: those before `to`, and those a store's
/// position covers (skipped when read again).
fn consume(
    ring: &impl ParkedRecords,
    services: &mut BTreeMap<u32, Service>,
    batch: &mut Batch,
    to: u64,
    out: &mut Pumped,
) {
    for o in std::mem::take(&mut batch.overflows) {
        let Some(svc) = services.get_mut(&o.service) else {
            continue;
        };
        if o.pos < to || svc.spool.max_ring_pos().is_some_and(|p| p >= o.pos) {
            svc.count_overflow(o.len, o.bound);
            out.changed = true;
        }
    }
    out.unknown += std::mem::take(&mut batch.unknown)
        .into_iter()
        .filter(|p| *p < to)
        .count() as u64;
    ring.consume_to(to);
}

/// Stores frames, and counts them once they are (frames that could not be
/// are read from the ring again). A failure is counted and logged.
fn store(svc: &mut Service, mut frames: Vec<StoredFrame>) -> Result<(), ()> {
    let (completed, bad) = complete_checksums(&mut frames);
    let n = frames.len() as u64;
    let bytes: u64 = frames.iter().map(|f| f.frame.len() as u64).sum();
    let oldest = frames.iter().map(|f| f.timestamp_ns).min();
    if let Err(e) = svc.spool.append(frames) {
        let t = &mut svc.totals;
        t.store_failures += 1;
        if t.store_failures.is_power_of_two() {
            tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"),
                store_failures = t.store_failures,
                "storing parked frames failed; they stay in the ring and are stored when a retry succeeds");
        }
        return Err(());
    }
    svc.first_parked_ns = svc.first_parked_ns.or(oldest);
    let t = &mut svc.totals;
    t.stored_frames += n;
    t.stored_bytes += bytes;
    t.checksums_completed += completed;
    t.checksums_bad += bad;
    Ok(())
}

/// Whether a store whose file spends `replayed` bytes on replayed frames
/// and holds `pending` bytes not replayed is worth compacting while frames
/// are pending. The copy of the pending frames costs no more than what it
/// gives back, so compaction copies each stored byte at most once, and the
/// file holds at most about twice what is pending, plus [`COMPACT_MIN_BYTES`].
pub(super) fn worth_compacting(replayed: u64, pending: u64) -> bool {
    replayed >= COMPACT_MIN_BYTES && replayed >= pending
}

/// Compacts the store if that is worth it ([`worth_compacting`]) and
/// allowed ([`compact_if_consumed`]). Not while a backlog replays into a
/// file no larger than it was when the replay began: nothing grows then,
/// and each compaction would copy the pending frames once more (during an
/// unpaced replay of 20,000 frames the copies took 30 of its 70 ms). The
/// replay's end compacts the store (`replay.rs`), and frames that arrive
/// meanwhile make it worth it again.
fn reclaim_if_worth(svc: &mut Service, consumer_pos: u64) {
    if svc
        .replay_run
        .as_ref()
        .is_some_and(|run| svc.spool.file_bytes() <= run.file_bytes_before)
    {
        return;
    }
    let replayed = svc.spool.replayed_bytes();
    if replayed >= svc.compact_after && worth_compacting(replayed, svc.spool.pending_bytes()) {
        compact_if_consumed(svc, consumer_pos);
    }
}

/// Compacts every store that is worth it: the engine calls this each turn,
/// so that a store whose backlog replays while frames keep arriving holds
/// about what is pending, not everything since the replay began.
pub(super) fn reclaim_stores(services: &mut BTreeMap<u32, Service>, consumer_pos: u64) {
    for svc in services.values_mut() {
        reclaim_if_worth(svc, consumer_pos);
    }
}

/// Gives a store's replayed frames back (all of the file when nothing is
/// pending), but only once the ring has been consumed past every record in
/// it: a record still in the ring must stay known as stored (the store's
/// header keeps the highest position too).
pub(super) fn compact_if_consumed(svc: &mut Service, consumer_pos: u64) {
    if svc.spool.max_ring_pos().is_some_and(|p| p >= consumer_pos) {
        return;
    }
    let replayed = svc.spool.replayed_bytes();
    match svc.spool.compact() {
        Ok(()) => svc.compact_after = 0,
        Err(e) => {
            // Not again before twice as much is to be given back.
            svc.compact_after = replayed.saturating_mul(2);
            tracing::warn!(service = %svc.spec.name, error = %format!("{e:#}"), replayed_bytes = replayed,
                "compacting the parked-frame store failed; it stays as it was");
        }
    }
}

/// Completes the checksums that senders left to offload, so that the frames
/// survive replay (see `migr_common::checksum`); returns how many it
/// completed and how many it found bad.
fn complete_checksums(frames: &mut [StoredFrame]) -> (u64, u64) {
    let (mut completed, mut bad) = (0, 0);
    for f in frames {
        match complete_partial(&mut f.frame) {
            L4Checksum::Completed => completed += 1,
            L4Checksum::Bad => bad += 1,
            L4Checksum::Valid | L4Checksum::Absent | L4Checksum::NotApplicable => {}
        }
    }
    (completed, bad)
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
    use crate::{
        engine::{retry::ReplayRetry, service::testing::Scratch},
        parkring::RingRecord,
        spool::Spool,
    };

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

    impl FakeReplayer {
        /// The first byte of each frame replayed, in order.
        fn firsts(&self) -> Vec<u8> {
            self.replayed.borrow().iter().map(|(b, _)| b[0]).collect()
        }
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

    /// Fails the calls listed in `fail` (by call number, from 0), as a
    /// failed BPF_PROG_TEST_RUN does: an error, and `runs` of the batch
    /// counted as taken place; takes every other batch.
    #[derive(Default)]
    struct FlakyReplayer {
        inner: FakeReplayer,
        fail: Vec<usize>,
        runs: u32,
        calls: usize,
    }

    impl Replayer for FlakyReplayer {
        fn replay_batch(&mut self, frames: &[&[u8]], ifindex: u32, action: Action) -> Result<u32> {
            self.calls += 1;
            if self.fail.contains(&(self.calls - 1)) {
                let runs = self.runs as usize;
                self.inner.replay_batch(&frames[..runs], ifindex, action)?;
                anyhow::bail!("ENOMEM (injected)");
            }
            self.inner.replay_batch(frames, ifindex, action)
        }
        fn replay_progress(&self) -> Result<u32> {
            Ok(self.runs)
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
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
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
        pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        // A restarted agent reads the same records again (not consumed yet).
        ring.consumed.set(0);
        pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert_eq!(f.services[&1].spool.pending(), 3);
        assert_eq!(f.services[&1].totals.stored_frames, 3);
    }

    #[test]
    fn a_passing_service_gets_its_records_replayed_at_once() {
        let mut f = fixture("pass", false, 10);
        let ring = ring(vec![record(1, &[7; 60]), record(1, &[8; 60])]);
        let mut replayer = FakeReplayer::default();
        pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
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
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert_eq!((out.records, out.unknown), (4, 1));
        assert_eq!(ring.consumed.get(), 400);
        assert_eq!(f.services[&1].spool.pending(), 1);
    }
    #[test]
    fn a_store_that_cannot_be_written_keeps_its_records_in_the_ring() {
        let mut f = fixture("enospc", true, 10);
        let ring = ring((0..3u8).map(|i| record(1, &[i; 60])).collect());
        let mut replayer = FakeReplayer::default();
        let svc = f.services.get_mut(&1).unwrap();
        svc.spool.limit_writes(Some(100)); // full in the second record
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert!(out.stalled);
        assert_eq!(ring.consumed.get(), 0, "nothing consumed");
        let svc = f.services.get_mut(&1).unwrap();
        assert_eq!((svc.spool.pending(), svc.totals.stored_frames), (0, 0));
        // Room again: the same records are stored, once.
        svc.spool.limit_writes(None);
        pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert_eq!(ring.consumed.get(), 300);
        let svc = &f.services[&1];
        assert_eq!(svc.totals.stored_frames, 3);
        let (spool, _) = Spool::open(&f._scratch.0, 1, 9, None).unwrap();
        let firsts: Vec<u8> = spool.pending_frames().iter().map(|s| s.frame[0]).collect();
        assert_eq!(firsts, [0, 1, 2], "stored once, in order, on disk too");
    }

    #[test]
    fn records_behind_a_failed_store_are_counted_once() {
        let mut f = fixture("enospc-counts", true, 1);
        let ring = ring(vec![
            record(1, &[0; 60]),
            record(42, &[1; 60]),
            record(1, &[2; 60]),
        ]);
        let mut replayer = FakeReplayer::default();
        f.services.get_mut(&1).unwrap().spool.limit_writes(Some(10));
        let first = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        let unknown_first = first.unknown;
        assert!(first.stalled);
        assert_eq!(ring.consumed.get(), 0);
        f.services.get_mut(&1).unwrap().spool.limit_writes(None);
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert!(!out.stalled);
        assert_eq!(ring.consumed.get(), 300);
        assert_eq!(
            unknown_first + out.unknown,
            1,
            "the unknown record counted once"
        );
        let svc = &f.services[&1];
        assert_eq!(
            (svc.totals.stored_frames, svc.totals.overflow_frames),
            (1, 1)
        );
    }
    #[test]
    fn all_stores_together_overflow_at_the_agent_bound() {
        let mut f = fixture("agent-bound", true, 100);
        let mut machine = PhaseMachine::new(Timing::default(), 0);
        for cmd in [PhaseCommand::Prepare, PhaseCommand::Freeze] {
            machine.command(cmd, Some(Role::Source), None, 1).unwrap();
        }
        let limit = ParkLimit {
            frames: 100,
            bytes: 1 << 20,
        };
        let other = f._scratch.another_service(2, machine, limit);
        f.services.insert(2, other);
        // Each service is far below its own bound; together they may hold 250 bytes.
        let ring = ring(vec![
            record(1, &[0; 100]),
            record(2, &[1; 100]),
            record(1, &[2; 60]),
            record(2, &[3; 50]),
            record(2, &[4; 50]),
        ]);
        let mut replayer = FakeReplayer::default();
        pump_ring(&ring, &mut f.services, &mut replayer, 250);
        assert_eq!(ring.consumed.get(), 500);
        let (one, two) = (&f.services[&1], &f.services[&2]);
        assert_eq!(
            (one.spool.pending(), one.totals.overflow_frames),
            (1, 1),
            "60 bytes more: 260"
        );
        assert_eq!(
            (two.spool.pending(), two.totals.overflow_frames),
            (2, 1),
            "the first 50 fits, the next not"
        );
        assert_eq!(one.totals.overflow_bytes + two.totals.overflow_bytes, 110);
        // What is stored counts at the next pump too.
        let mut more = vec![(Vec::new(), true); 5];
        more.push(record(1, &[5; 1]));
        let ring2 = FakeRing {
            records: more,
            consumed: Cell::new(500),
        };
        pump_ring(&ring2, &mut f.services, &mut replayer, 250);
        assert_eq!(f.services[&1].totals.overflow_frames, 2);
    }

    /// A backlog replayed while frames keep arriving (a parking service):
    /// the store gives back what was replayed, and a restarted agent still
    /// knows the records it held.
    #[test]
    fn a_busy_store_holds_about_what_is_pending() {
        let mut f = fixture("busy", true, 10_000);
        f.services.get_mut(&1).unwrap().limit.bytes = 16 << 20;
        let ring = ring((0..1000u32).map(|i| record(1, &[i as u8; 1100])).collect());
        let mut replayer = FakeReplayer::default();
        pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        let svc = f.services.get_mut(&1).unwrap();
        assert_eq!(replay_pending(&mut replayer, svc, Action::Pass, 950), 950);
        assert_eq!(svc.spool.replayed_bytes(), 950 * (1100 + 28));
        reclaim_stores(&mut f.services, ring.consumed.get());
        let svc = &f.services[&1];
        assert_eq!((svc.spool.replayed_bytes(), svc.spool.pending()), (0, 50));
        let on_disk = std::fs::metadata(f._scratch.0.join("1.frames"))
            .unwrap()
            .len();
        assert!(on_disk < 50 * 1200, "{on_disk} bytes");
        // Killed before the ring was consumed: no record is stored twice.
        let (spool, r) = Spool::open(&f._scratch.0, 1, 9, None).unwrap();
        assert_eq!((r.frames, r.pending), (50, 50));
        let svc = f.services.get_mut(&1).unwrap();
        svc.spool = spool;
        ring.consumed.set(0);
        pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        let svc = &f.services[&1];
        assert_eq!((svc.spool.pending(), svc.totals.stored_frames), (50, 1000));
        assert_eq!(
            svc.spool.next_pending().map(|f| f.ring_pos),
            Some(950 * 100)
        );
    }

    /// A backlog replaying with no new arrivals is not copied again and
    /// again; arrivals that grow the file make compaction worth it again.
    #[test]
    fn a_replaying_backlog_is_compacted_only_once_the_file_grows() {
        let mut f = fixture("replay-run", true, 10_000);
        f.services.get_mut(&1).unwrap().limit.bytes = 16 << 20;
        let ring1 = ring((0..1000u32).map(|i| record(1, &[i as u8; 1100])).collect());
        let mut replayer = FakeReplayer::default();
        pump_ring(&ring1, &mut f.services, &mut replayer, u64::MAX);
        let svc = f.services.get_mut(&1).unwrap();
        svc.start_replay_run(Instant::now());
        assert_eq!(replay_pending(&mut replayer, svc, Action::Pass, 950), 950);
        reclaim_stores(&mut f.services, ring1.consumed.get());
        let svc = &f.services[&1];
        assert_eq!(
            (svc.spool.replayed_bytes(), svc.spool.pending()),
            (950 * (1100 + 28), 50),
            "no compaction while the file has not grown"
        );
        // The same ring, 500 records more (the consumed ones left as gaps).
        let mut records = vec![(Vec::new(), true); 1000];
        records.extend((0..500u32).map(|i| record(1, &[i as u8; 1100])));
        let grown = FakeRing {
            records,
            consumed: Cell::new(ring1.consumed.get()),
        };
        pump_ring(&grown, &mut f.services, &mut replayer, u64::MAX);
        reclaim_stores(&mut f.services, u64::MAX);
        let svc = &f.services[&1];
        assert_eq!(
            (svc.spool.replayed_bytes(), svc.spool.pending()),
            (0, 550),
            "compacted once the file grew past its size at the replay's start"
        );
    }

    #[test]
    fn compaction_waits_until_it_is_worth_a_copy() {
        assert!(
            !worth_compacting(COMPACT_MIN_BYTES - 1, 0),
            "too little to give back"
        );
        assert!(worth_compacting(COMPACT_MIN_BYTES, COMPACT_MIN_BYTES));
        assert!(
            !worth_compacting(COMPACT_MIN_BYTES, COMPACT_MIN_BYTES + 1),
            "the copy would cost more"
        );
        assert!(worth_compacting(10 * COMPACT_MIN_BYTES, 0));
    }
    #[test]
    fn a_record_to_deliver_now_waits_in_the_ring_while_it_cannot_be_stored() {
        let mut f = fixture("pass-enospc", false, 10);
        let ring = ring(vec![record(1, &[7; 60]), record(1, &[8; 60])]);
        let mut replayer = FakeReplayer::default();
        f.services.get_mut(&1).unwrap().spool.limit_writes(Some(10));
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert!(out.stalled);
        assert_eq!(ring.consumed.get(), 0, "the record stays in the ring");
        assert!(
            replayer.replayed.borrow().is_empty(),
            "and is not delivered"
        );
        let svc = f.services.get_mut(&1).unwrap();
        assert_eq!(svc.totals.store_failures, 1);
        svc.spool.limit_writes(None);
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert!(!out.stalled);
        let firsts: Vec<u8> = replayer
            .replayed
            .borrow()
            .iter()
            .map(|(b, _)| b[0])
            .collect();
        assert_eq!(firsts, [7, 8], "each delivered once, in order");
        assert_eq!(ring.consumed.get(), 200);
    }

    #[test]
    fn a_failed_replay_keeps_its_record_and_is_tried_again_without_loss() {
        let mut f = fixture("flaky", false, 10);
        let ring = ring((0..3u8).map(|i| record(1, &[i; 60])).collect());
        let mut replayer = FlakyReplayer {
            fail: vec![0],
            ..Default::default()
        };
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        let retry_at = out.retry_at.expect("a retry is due");
        assert_eq!(ring.consumed.get(), 0, "the record stays in the ring");
        let svc = &f.services[&1];
        assert_eq!(svc.spool.pending(), 1);
        assert_eq!(
            (svc.totals.replay.failed_frames, svc.totals.replay.retries),
            (0, 1)
        );
        // Too early: nothing is tried.
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert!(out.retry_at.is_some());
        assert_eq!(replayer.calls, 1);
        std::thread::sleep(retry_at.saturating_duration_since(Instant::now()));
        let out = pump_ring(&ring, &mut f.services, &mut replayer, u64::MAX);
        assert_eq!(out.retry_at, None);
        assert_eq!(ring.consumed.get(), 300);
        let firsts = replayer.inner.firsts();
        assert_eq!(firsts, [0, 1, 2], "each once, in order");
        let svc = &f.services[&1];
        assert_eq!(svc.totals.replay.replayed_frames, 3);
        assert_eq!(svc.totals.replay.failed_frames, 0);
        assert_eq!(
            svc.totals.stored_frames, 3,
            "the retried record is not stored twice"
        );
    }

    #[test]
    fn a_frame_that_keeps_failing_is_given_up_alone_after_five_tries() {
        let mut f = fixture("hopeless", true, 10);
        let ring = ring((0..4u8).map(|i| record(1, &[i; 60])).collect());
        pump_ring(
            &ring,
            &mut f.services,
            &mut FakeReplayer::default(),
            u64::MAX,
        );
        let svc = f.services.get_mut(&1).unwrap();
        // Batch 0: frame 0 goes, frame 1 fails; then frame 1 fails four more times.
        let mut replayer = FlakyReplayer {
            fail: vec![0, 1, 2, 3, 4],
            runs: 1,
            ..Default::default()
        };
        let mut handled = replay_pending(&mut replayer, svc, Action::Pass, usize::MAX);
        replayer.runs = 0;
        while svc.spool.pending() > 0 {
            let retry = svc.replay_retry.expect("waiting to retry");
            svc.replay_retry = Some(ReplayRetry {
                not_before: Instant::now(),
                ..retry
            });
            handled += replay_pending(&mut replayer, svc, Action::Pass, usize::MAX);
            assert!(replayer.calls <= 6, "{} calls", replayer.calls);
        }
        assert_eq!(handled, 4);
        let r = svc.totals.replay;
        assert_eq!((r.replayed_frames, r.failed_frames, r.retries), (3, 1, 4));
        let firsts = replayer.inner.firsts();
        assert_eq!(firsts, [0, 2, 3], "frame 1 given up, the others in order");
    }
}
