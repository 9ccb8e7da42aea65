//! The parked-frame store of one service: an append-only file of frames in
//! arrival order, plus a replay cursor.
//!
//! The agent moves a record from the pinned `PARKED` ring into the store
//! *before* it consumes it from the ring, and every stored frame carries the
//! ring position it came from. An agent killed at any moment therefore finds
//! each frame either still in the ring or in a store (or both: then the ring
//! copy is skipped, by position), never in neither.
//!
//! The cursor file holds two counts: `started` (frames whose replay began)
//! and `done` (frames whose replay returned). The agent replays in batches:
//! it writes `started` before and `done` after it hands a batch to the
//! kernel, so after a kill a frame is never replayed twice. If the kill fell
//! between the two writes (`started > done`), the datapath's pinned
//! `REPLAY_NEXT` counter says how many runs of that batch took place; those
//! frames are done and the rest are replayed. Only if that count is unknown
//! (the maps were not kept) are the frames of the batch counted as uncertain
//! rather than replayed again.
//!
//! Files live in a directory on tmpfs (/run): the ring they back up is in
//! memory too, so they only need to survive the agent, not the machine.
//! Nothing is fsync'd.

use std::{
    fs::{File, OpenOptions},
    io::Read as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const MAGIC: &[u8; 8] = b"MIGRSPL1";
/// File header: magic, ring map id (u32), reserved (u32).
const FILE_HEADER: usize = 16;
/// Record header: frame length (u32), ingress ifindex (u32), ring position
/// (u64), arrival time (u64, `bpf_ktime_get_ns`).
const RECORD_HEADER: usize = 24;

/// One stored frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFrame {
    pub ring_pos: u64,
    pub ifindex: u32,
    pub timestamp_ns: u64,
    pub frame: Vec<u8>,
}

impl StoredFrame {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.ifindex.to_le_bytes());
        out.extend_from_slice(&self.ring_pos.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ns.to_le_bytes());
        out.extend_from_slice(&self.frame);
    }
}

/// What opening a store found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Frames in the store.
    pub frames: u64,
    /// Of those, not replayed yet.
    pub pending: u64,
    /// Bytes of a torn last record (the agent died while writing it); the
    /// frame is still in the ring.
    pub torn_bytes: u64,
    /// A frame whose replay may or may not have happened.
    pub uncertain: u64,
}

pub struct Spool {
    path: PathBuf,
    cursor_path: PathBuf,
    file: File,
    cursor: File,
    ring_id: u32,
    /// The positions in this store came from the current ring.
    same_ring: bool,
    frames: Vec<StoredFrame>,
    /// Frames whose replay has returned (index of the next to replay).
    done: usize,
    pending_bytes: u64,
    scratch: Vec<u8>,
}

impl Spool {
    /// Opens (or creates) the store of `service_id` in `dir`. `ring_id` is the
    /// kernel id of the current park ring; `batch_runs` the runs of the last
    /// replay batch as the datapath counted them, if it kept the counter.
    pub fn open(
        dir: &Path,
        service_id: u32,
        ring_id: u32,
        batch_runs: Option<u64>,
    ) -> Result<(Self, Recovered)> {
        let path = dir.join(format!("{service_id}.frames"));
        let cursor_path = dir.join(format!("{service_id}.cursor"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let cursor = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cursor_path)
            .with_context(|| format!("opening {}", cursor_path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut recovered = Recovered::default();
        let mut frames = Vec::new();
        let mut same_ring = true;
        if bytes.len() < FILE_HEADER || &bytes[..8] != MAGIC {
            // New (or unusable) store: start it.
            file.set_len(0)?;
            file.write_all_at(&file_header(ring_id), 0)?;
        } else {
            let stored_ring = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
            same_ring = stored_ring == ring_id;
            let mut at = FILE_HEADER;
            while at < bytes.len() {
                let rest = &bytes[at..];
                if rest.len() < RECORD_HEADER {
                    break;
                }
                let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
                if rest.len() < RECORD_HEADER + len {
                    break;
                }
                frames.push(StoredFrame {
                    ifindex: u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default()),
                    ring_pos: u64::from_le_bytes(rest[8..16].try_into().unwrap_or_default()),
                    timestamp_ns: u64::from_le_bytes(rest[16..24].try_into().unwrap_or_default()),
                    frame: rest[RECORD_HEADER..RECORD_HEADER + len].to_vec(),
                });
                at += RECORD_HEADER + len;
            }
            if at < bytes.len() {
                recovered.torn_bytes = (bytes.len() - at) as u64;
                file.set_len(at as u64)?;
            }
        }
        let mut c = [0u8; 16];
        let n = cursor.read_at(&mut c, 0)?;
        let (mut started, mut done) = if n == 16 {
            (
                u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()) as usize,
                u64::from_le_bytes(c[8..16].try_into().unwrap_or_default()) as usize,
            )
        } else {
            (0, 0)
        };
        if started > done {
            // Killed between marking a batch and its replay returning.
            let batch = (started - done) as u64;
            match batch_runs {
                Some(runs) => {
                    done += runs.min(batch) as usize;
                    started = done;
                }
                None => {
                    recovered.uncertain = batch;
                    done = started;
                }
            }
        }
        started = started.min(frames.len());
        done = done.min(frames.len()).max(started);
        let mut spool = Self {
            path,
            cursor_path,
            file,
            cursor,
            ring_id,
            same_ring,
            pending_bytes: frames[done..].iter().map(|f| f.frame.len() as u64).sum(),
            frames,
            done,
            scratch: Vec::new(),
        };
        spool.write_cursor(spool.done, spool.done)?;
        recovered.frames = spool.frames.len() as u64;
        recovered.pending = spool.pending() as u64;
        Ok((spool, recovered))
    }

    /// Frames in the store, replayed or not.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames stored and not replayed.
    pub fn pending(&self) -> usize {
        self.frames.len() - self.done
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Frames whose replay has returned (the cursor).
    pub fn done(&self) -> usize {
        self.done
    }

    /// Ring position of the oldest stored frame: tells a store from the one
    /// that follows it after a compaction.
    pub fn first_ring_pos(&self) -> Option<u64> {
        self.frames.first().map(|f| f.ring_pos)
    }

    /// Stored frames `from..to` (clamped), replayed or not.
    pub fn frames_in(&self, from: usize, to: usize) -> &[StoredFrame] {
        let to = to.min(self.frames.len());
        &self.frames[from.min(to)..to]
    }

    /// The next frame to replay.
    pub fn next_pending(&self) -> Option<&StoredFrame> {
        self.frames.get(self.done)
    }

    /// Highest ring position stored, if the positions belong to the current
    /// ring. A ring record of this service at or before it is stored already.
    pub fn max_ring_pos(&self) -> Option<u64> {
        if !self.same_ring {
            return None;
        }
        // Frames are appended in ring order.
        self.frames.last().map(|f| f.ring_pos)
    }

    /// Appends frames (one write).
    pub fn append(&mut self, frames: Vec<StoredFrame>) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        self.scratch.clear();
        for f in &frames {
            f.encode_into(&mut self.scratch);
        }
        // O_APPEND is not used (the header is written with pwrite); write at the end.
        let end = self.file.metadata()?.len();
        self.file
            .write_all_at(&self.scratch, end)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        for f in frames {
            self.pending_bytes += f.frame.len() as u64;
            self.frames.push(f);
        }
        Ok(())
    }

    /// The frames not replayed yet, oldest first.
    pub fn pending_frames(&self) -> &[StoredFrame] {
        &self.frames[self.done..]
    }

    /// Marks the next `n` pending frames as being replayed; call before
    /// handing them to the kernel, then [`Self::finish_batch`].
    pub fn start_batch(&mut self, n: usize) -> Result<()> {
        if n == 0 || self.done + n > self.frames.len() {
            bail!("{n} frames to replay, {} pending", self.pending());
        }
        self.write_cursor(self.done + n, self.done)
    }

    /// The next `n` frames (of those marked by [`Self::start_batch`]) are
    /// replayed (or dropped).
    pub fn finish_batch(&mut self, n: usize) -> Result<()> {
        let n = n.min(self.pending());
        let bytes: u64 = self.frames[self.done..self.done + n]
            .iter()
            .map(|f| f.frame.len() as u64)
            .sum();
        self.done += n;
        self.pending_bytes -= bytes;
        self.write_cursor(self.done, self.done)
    }

    fn write_cursor(&mut self, started: usize, done: usize) -> Result<()> {
        let mut c = [0u8; 16];
        c[0..8].copy_from_slice(&(started as u64).to_le_bytes());
        c[8..16].copy_from_slice(&(done as u64).to_le_bytes());
        self.cursor
            .write_all_at(&c, 0)
            .with_context(|| format!("writing {}", self.cursor_path.display()))
    }

    /// Empties a store whose frames are all replayed (call only between ring
    /// records, after the ring has been consumed past them). No-op otherwise.
    pub fn compact(&mut self) -> Result<()> {
        if self.pending() != 0 || self.frames.is_empty() {
            return Ok(());
        }
        self.discard()
    }

    /// Drops every frame, replayed or not.
    pub fn discard(&mut self) -> Result<()> {
        // Truncate first: a kill in between leaves a cursor past the end,
        // which `open` clamps (everything replayed).
        self.file.set_len(0)?;
        self.file.write_all_at(&file_header(self.ring_id), 0)?;
        self.frames.clear();
        self.done = 0;
        self.pending_bytes = 0;
        self.same_ring = true;
        self.write_cursor(0, 0)
    }

    /// Removes the files (service removed).
    pub fn remove(self) -> Result<()> {
        let _ = std::fs::remove_file(&self.cursor_path);
        std::fs::remove_file(&self.path)
            .with_context(|| format!("removing {}", self.path.display()))
    }
}

fn file_header(ring_id: u32) -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&ring_id.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u64) -> StoredFrame {
        StoredFrame {
            ring_pos: 100 + i * 8,
            ifindex: 3,
            timestamp_ns: i,
            frame: vec![i as u8; 60 + i as usize],
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("migr-spool-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn frames_survive_reopening_in_order() {
        let d = dir("reopen");
        let (mut s, r) = Spool::open(&d, 5, 77, Some(0)).unwrap();
        assert_eq!(r, Recovered::default());
        s.append((0..3).map(frame).collect()).unwrap();
        s.append(vec![frame(3)]).unwrap();
        s.start_batch(1).unwrap();
        s.finish_batch(1).unwrap();
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
        s.append((0..2).map(frame).collect()).unwrap();
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
        assert_eq!(r.torn_bytes, 30);
        assert_eq!(r.uncertain, 1);
        assert_eq!((r.frames, r.pending), (2, 1));
        assert_eq!(s.next_pending(), Some(&frame(1)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_interrupted_batch_resumes_after_the_runs_the_datapath_counted() {
        let d = dir("batch");
        let (mut s, _) = Spool::open(&d, 3, 1, Some(0)).unwrap();
        s.append((0..10).map(frame).collect()).unwrap();
        s.start_batch(2).unwrap();
        s.finish_batch(2).unwrap();
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
        s.start_batch(1).unwrap();
        s.finish_batch(1).unwrap();
        s.compact().unwrap();
        assert_eq!((s.pending(), s.max_ring_pos()), (0, None));
        drop(s);
        let (s, r) = Spool::open(&d, 2, 1, Some(0)).unwrap();
        assert_eq!((r.frames, s.pending()), (0, 0));
        assert!(std::fs::metadata(d.join("2.frames")).unwrap().len() == FILE_HEADER as u64);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
