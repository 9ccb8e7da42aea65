use super::*;

fn frame(i: u64) -> StoredFrame {
    StoredFrame {
        ring_pos: 100 + i * 8,
        ifindex: 3,
        timestamp_ns: i,
        frame: vec![i as u8; 60 + i as usize],
    }
}

fn frames(range: std::ops::Range<u64>) -> Vec<StoredFrame> {
    range.map(frame).collect()
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("migr-spool-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn replay(s: &mut Spool, n: usize) {
    s.start_batch(n).unwrap();
    s.finish_batch(n).unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn records_len(frames: &[StoredFrame]) -> u64 {
    frames.iter().map(StoredFrame::record_len).sum()
}

#[test]
fn frames_survive_reopening_in_order() {
    let d = dir("reopen");
    let (mut s, r) = Spool::open(&d, 5, 77, Some(0)).unwrap();
    assert_eq!(r, Recovered::default());
    s.append(frames(0..3)).unwrap();
    s.append(vec![frame(3)]).unwrap();
    replay(&mut s, 1);
    drop(s);
    let (s, r) = Spool::open(&d, 5, 77, Some(0)).unwrap();
    assert_eq!((r.frames, r.pending, r.uncertain), (4, 3, 0));
    assert_eq!(s.next_pending(), Some(&frame(1)));
    assert_eq!(s.max_ring_pos(), Some(124));
    assert_eq!(s.pending_bytes(), 61 + 62 + 63);
    // Another ring: positions are not comparable any more.
    drop(s);
    let (s, _) = Spool::open(&d, 5, 78, None).unwrap();
    assert_eq!(s.max_ring_pos(), None);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_torn_record_is_cut_and_an_interrupted_replay_is_not_repeated() {
    let d = dir("torn");
    let (mut s, _) = Spool::open(&d, 1, 1, None).unwrap();
    s.append(frames(0..2)).unwrap();
    s.start_batch(1).unwrap(); // killed before finish_batch
    drop(s);
    // Simulate a kill in the middle of appending a third record.
    let path = d.join("1.frames");
    let mut bytes = std::fs::read(&path).unwrap();
    let mut partial = Vec::new();
    frame(2).encode_into(&mut partial);
    bytes.extend_from_slice(&partial[..30]);
    std::fs::write(&path, &bytes).unwrap();
    // Without the datapath's run count, the marked frame is uncertain.
    let (s, r) = Spool::open(&d, 1, 1, None).unwrap();
    assert_eq!((r.torn_bytes, r.corrupt_bytes), (30, 0));
    assert_eq!(r.uncertain, 1);
    assert_eq!((r.frames, r.pending), (2, 1));
    assert_eq!(s.next_pending(), Some(&frame(1)));
    assert_eq!(file_len(&path), bytes.len() as u64 - 30, "cut in the file");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_interrupted_batch_resumes_after_the_runs_the_datapath_counted() {
    let d = dir("batch");
    let (mut s, _) = Spool::open(&d, 3, 1, Some(0)).unwrap();
    s.append(frames(0..10)).unwrap();
    replay(&mut s, 2);
    s.start_batch(6).unwrap(); // killed after 4 of its 6 runs
    drop(s);
    let (s, r) = Spool::open(&d, 3, 1, Some(4)).unwrap();
    assert_eq!((r.frames, r.pending, r.uncertain), (10, 4, 0));
    assert_eq!(s.next_pending(), Some(&frame(6)));
    assert_eq!(s.pending_frames().len(), 4);
    assert_eq!(s.pending_bytes(), (66..70).sum::<u64>());
    drop(s);
    // Reopened again: the cursor was rewritten, nothing moves twice.
    let (s, r) = Spool::open(&d, 3, 1, Some(4)).unwrap();
    assert_eq!((r.pending, r.uncertain), (4, 0));
    assert_eq!(s.next_pending(), Some(&frame(6)));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn compacting_empties_a_replayed_store() {
    let d = dir("compact");
    let (mut s, _) = Spool::open(&d, 2, 1, Some(0)).unwrap();
    s.append(vec![frame(0)]).unwrap();
    s.compact().unwrap();
    assert_eq!(s.pending(), 1, "pending frames are kept");
    replay(&mut s, 1);
    s.compact().unwrap();
    assert_eq!(s.pending(), 0);
    // The position stays known: that ring record is stored (and replayed).
    assert_eq!(s.max_ring_pos(), Some(100));
    drop(s);
    let (s, r) = Spool::open(&d, 2, 1, Some(0)).unwrap();
    assert_eq!((r.frames, s.pending(), s.max_ring_pos()), (0, 0, Some(100)));
    assert_eq!(file_len(&d.join("2.frames")), FILE_HEADER as u64);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_failed_append_leaves_exactly_the_frames_before_it() {
    let d = dir("enospc");
    let (mut s, _) = Spool::open(&d, 4, 1, Some(0)).unwrap();
    s.append(frames(0..2)).unwrap();
    // The filesystem fills up in the second record of the next batch.
    s.limit_writes(Some(100));
    assert!(s.append(frames(2..4)).is_err());
    assert_eq!(s.pending_frames(), &[frame(0), frame(1)]);
    assert_eq!(s.max_ring_pos(), Some(108));
    drop(s); // killed
    let (mut s, r) = Spool::open(&d, 4, 1, Some(0)).unwrap();
    assert_eq!(s.pending_frames(), &[frame(0), frame(1)]);
    assert_eq!((r.frames, r.torn_bytes), (2, 0), "cut back at once");
    // Not killed: the same agent stores more once there is room again.
    s.limit_writes(Some(100));
    assert!(s.append(frames(2..4)).is_err());
    s.limit_writes(None);
    s.append(vec![frame(4)]).unwrap();
    drop(s);
    let (s, _) = Spool::open(&d, 4, 1, Some(0)).unwrap();
    assert_eq!(s.pending_frames(), &[frame(0), frame(1), frame(4)]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_write_that_cannot_be_cut_back_is_cut_before_the_next() {
    let d = dir("uncut");
    let (mut s, _) = Spool::open(&d, 4, 1, Some(0)).unwrap();
    s.append(vec![frame(0)]).unwrap();
    s.limit_writes(Some(250)); // two records and part of a third
    s.fail_cuts(true);
    let e = s.append(frames(1..4)).unwrap_err();
    assert!(format!("{e:#}").contains("cutting"), "{e:#}");
    s.limit_writes(None);
    s.fail_cuts(false);
    s.append(vec![frame(4)]).unwrap();
    let expected = FILE_HEADER as u64 + records_len(&[frame(0), frame(4)]);
    assert_eq!(file_len(&d.join("4.frames")), expected, "nothing else left");
    drop(s);
    let (s, r) = Spool::open(&d, 4, 1, Some(0)).unwrap();
    assert_eq!(s.pending_frames(), &[frame(0), frame(4)]);
    assert_eq!((r.torn_bytes, r.corrupt_bytes), (0, 0));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_corrupt_record_is_cut_with_everything_after_it() {
    let d = dir("corrupt");
    let (mut s, _) = Spool::open(&d, 6, 1, Some(0)).unwrap();
    s.append(frames(0..3)).unwrap();
    drop(s);
    // One bit flips in the middle of the second frame.
    let path = d.join("6.frames");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(61).position(|w| w == [1u8; 61]).unwrap();
    bytes[at + 30] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (mut s, r) = Spool::open(&d, 6, 1, Some(0)).unwrap();
    assert_eq!(s.pending_frames(), &[frame(0)]);
    assert_eq!(r.frames, 1);
    assert_eq!(
        (r.torn_bytes, r.corrupt_bytes),
        (0, records_len(&frames(1..3)))
    );
    // Cut in the file too: what is appended next follows the good frame.
    s.append(vec![frame(3)]).unwrap();
    drop(s);
    let (s, _) = Spool::open(&d, 6, 1, Some(0)).unwrap();
    assert_eq!(s.pending_frames(), &[frame(0), frame(3)]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// 300 frames replayed, 5 pending.
fn half_replayed(d: &Path) -> Spool {
    let (mut s, _) = Spool::open(d, 7, 1, Some(0)).unwrap();
    s.append(frames(0..200)).unwrap();
    replay(&mut s, 150);
    s.append(frames(200..305)).unwrap();
    replay(&mut s, 150);
    s
}

#[test]
fn compacting_keeps_only_the_pending_frames_in_memory_and_on_disk() {
    let d = dir("compact-pending");
    let mut s = half_replayed(&d);
    assert_eq!(s.replayed_bytes(), records_len(&frames(0..300)));
    assert_eq!(s.frames.len(), 5, "replayed frames left memory already");
    s.compact().unwrap();
    assert_eq!(s.frames.len(), 5, "in memory");
    assert_eq!(s.pending_frames(), frames(300..305));
    assert_eq!(s.replayed_bytes(), 0);
    let path = d.join("7.frames");
    let on_disk = FILE_HEADER as u64 + records_len(&frames(300..305));
    assert_eq!(file_len(&path), on_disk);
    assert_eq!((s.done_seq(), s.end_seq()), (300, 305), "numbers kept");
    assert_eq!(s.max_ring_pos(), Some(frame(304).ring_pos));
    // Replay goes on, and frames keep coming, on the compacted store.
    replay(&mut s, 2);
    s.append(vec![frame(305)]).unwrap();
    drop(s);
    let (s, r) = Spool::open(&d, 7, 1, Some(0)).unwrap();
    assert_eq!((r.frames, r.pending), (6, 4));
    assert_eq!(s.pending_frames(), frames(302..306));
    assert_eq!((s.done_seq(), s.end_seq()), (302, 306));
    assert_eq!(s.frames_between(298, 304), (2, &frames(300..304)[..]));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A step of a compaction: the store file, the next file (if any) and how
/// many frames the store holds after a kill there.
type Step<'a> = (&'a str, &'a [u8], Option<&'a [u8]>, u64);

#[test]
fn a_kill_at_any_step_of_a_compaction_loses_nothing() {
    let d = dir("compact-kill");
    let mut s = half_replayed(&d);
    let path = d.join("7.frames");
    let next = d.join("7.frames.next");
    let before = std::fs::read(&path).unwrap();
    s.compact().unwrap();
    drop(s);
    let after = std::fs::read(&path).unwrap();
    // The cursor is not written by a compaction: the same for every step.
    let states: [Step; 4] = [
        (
            "next file being written",
            &before,
            Some(&after[..after.len() / 2]),
            305,
        ),
        (
            "next file written, not renamed",
            &before,
            Some(&after[..]),
            305,
        ),
        ("renamed", &after, None, 5),
        ("next file just created", &before, Some(&[][..]), 305),
    ];
    for (step, file, next_file, held) in states {
        std::fs::write(&path, file).unwrap();
        if let Some(n) = next_file {
            std::fs::write(&next, n).unwrap();
        }
        let (s, r) = Spool::open(&d, 7, 1, Some(0)).unwrap();
        assert_eq!((r.frames, r.pending), (held, 5), "{step}");
        assert_eq!(s.pending_frames(), frames(300..305), "{step}");
        assert_eq!(s.done_seq(), 300, "{step}");
        assert_eq!(s.max_ring_pos(), Some(frame(304).ring_pos), "{step}");
        assert!(!next.exists(), "{step}: the next file is removed");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            file,
            "{step}: the store is left as it was"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_compaction_without_room_leaves_the_store_as_it_was() {
    let d = dir("compact-enospc");
    let mut s = half_replayed(&d);
    s.limit_writes(Some(200));
    assert!(s.compact().is_err());
    assert!(!d.join("7.frames.next").exists());
    assert_eq!(s.pending_frames(), frames(300..305));
    s.limit_writes(None);
    s.append(vec![frame(305)]).unwrap();
    replay(&mut s, 1);
    drop(s);
    let (s, r) = Spool::open(&d, 7, 1, Some(0)).unwrap();
    assert_eq!((r.frames, r.pending), (306, 5));
    assert_eq!(s.pending_frames(), frames(301..306));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn replayed_frames_leave_memory_as_the_replay_goes() {
    let d = dir("forget");
    let (mut s, _) = Spool::open(&d, 8, 1, Some(0)).unwrap();
    s.append(frames(0..200)).unwrap();
    replay(&mut s, 64);
    assert_eq!(s.frames.len(), 200, "fewer replayed than pending: kept");
    replay(&mut s, 64);
    assert_eq!(s.frames.len(), 72, "the 128 replayed are dropped");
    assert_eq!(s.pending_frames(), frames(128..200));
    assert_eq!(s.frames_between(100, 130), (28, &frames(128..130)[..]));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_format_1_store_is_read_and_rewritten() {
    let d = dir("v1");
    let path = d.join("9.frames");
    let mut v1 = record::encode_v1(1, &frames(0..3));
    v1.extend_from_slice(&[7; 10]); // torn
    std::fs::write(&path, &v1).unwrap();
    let mut cursor = [0u8; 16];
    cursor[..8].copy_from_slice(&1u64.to_le_bytes());
    cursor[8..].copy_from_slice(&1u64.to_le_bytes());
    std::fs::write(d.join("9.cursor"), cursor).unwrap();
    let (s, r) = Spool::open(&d, 9, 1, Some(0)).unwrap();
    assert!(r.upgraded);
    assert_eq!((r.frames, r.pending, r.torn_bytes), (3, 2, 10));
    assert_eq!(s.pending_frames(), frames(1..3));
    assert_eq!(s.max_ring_pos(), Some(frame(2).ring_pos));
    // The replayed frame is still there for the count of totals.
    assert_eq!(s.frames_between(0, 3), (0, &frames(0..3)[..]));
    // Rewritten with the pending frames alone, numbered as the cursor counts.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], record::MAGIC);
    assert_eq!(
        bytes.len() as u64,
        FILE_HEADER as u64 + records_len(&frames(1..3))
    );
    drop(s);
    let (s, r) = Spool::open(&d, 9, 1, Some(0)).unwrap();
    assert!(!r.upgraded);
    assert_eq!((r.frames, r.pending, r.torn_bytes), (2, 2, 0));
    assert_eq!(s.pending_frames(), frames(1..3));
    assert_eq!((s.done_seq(), s.end_seq()), (1, 3));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_file_this_agent_cannot_read_is_started_afresh_and_reported() {
    let d = dir("unreadable");
    let path = d.join("10.frames");
    std::fs::write(&path, b"MIGRSPL9 a newer agent's store").unwrap();
    let (mut s, r) = Spool::open(&d, 10, 1, Some(0)).unwrap();
    assert_eq!((r.frames, r.corrupt_bytes), (0, 30));
    s.append(vec![frame(0)]).unwrap();
    drop(s);
    let (s, r) = Spool::open(&d, 10, 1, Some(0)).unwrap();
    assert_eq!((r.pending, r.corrupt_bytes), (1, 0));
    assert_eq!(s.pending_frames(), &[frame(0)]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn discarding_starts_the_numbers_over() {
    let d = dir("discard");
    let mut s = half_replayed(&d);
    s.discard().unwrap();
    assert_eq!((s.pending(), s.end_seq(), s.max_ring_pos()), (0, 0, None));
    drop(s);
    let (s, r) = Spool::open(&d, 7, 1, Some(0)).unwrap();
    assert_eq!((r.frames, s.done_seq()), (0, 0));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_format_1_store_without_room_for_its_pending_frames_is_kept() {
    let d = dir("v1-enospc");
    let path = d.join("11.frames");
    let v1 = record::encode_v1(1, &frames(0..3));
    std::fs::write(&path, &v1).unwrap();
    let no_room = WriteLimit {
        bytes: Some(100),
        cut_fails: false,
    };
    let e = match Spool::open_with(&d, 11, 1, Some(0), no_room) {
        Ok(_) => panic!("the rewrite cannot fit"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("format 2") && e.contains("No space"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), v1, "kept as it was");
    assert!(!d.join("11.frames.next").exists());
    // With room, the next start reads it.
    let (s, r) = Spool::open(&d, 11, 1, Some(0)).unwrap();
    assert!(r.upgraded);
    assert_eq!(s.pending_frames(), frames(0..3));
    std::fs::remove_dir_all(&d).unwrap();
}
