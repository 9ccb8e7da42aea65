//! The parked-frame store of one service: a file of frames in arrival
//! order, plus a replay cursor.
//!
//! **Ring, store, consumer.** The agent moves a record from the pinned
//! `PARKED` ring into the store *before* it consumes it from the ring, and
//! every stored frame carries the ring position it came from. An agent
//! killed at any moment therefore finds each frame either still in the ring
//! or in a store (or both: then the ring copy is skipped, by position),
//! never in neither. The store keeps the highest ring position it has held
//! in its file header across compactions, so a ring record stays known as
//! stored after its frame was replayed and given back.
//!
//! **Cursor.** Frames are numbered from the store's start (sequence
//! numbers, which compaction keeps). The cursor file holds two: `started`
//! (frames whose replay began) and `done` (frames whose replay returned).
//! The agent replays in batches: it writes `started` before and `done`
//! after it hands a batch to the kernel, so after a kill a frame is never
//! replayed twice. If the kill fell between the two writes
//! (`started > done`), the datapath's pinned `REPLAY_NEXT` counter says how
//! many runs of that batch took place; those frames are done and the rest
//! are replayed. Only if that count is unknown (the maps were not kept) are
//! the frames of the batch counted as uncertain rather than replayed again.
//!
//! **Checksums.** Every record carries a CRC-32 (the layout is in
//! `record.rs`). Opening a store reads up to the first record that runs
//! past the end of the file (torn: the agent died writing it, and its frame
//! is still in the ring) or fails its check (damaged); the file is cut
//! there, the cut bytes are reported ([`Recovered`]), and nothing from that
//! point on is read as a frame. A write that fails (ENOSPC on a full tmpfs)
//! is cut back at once to the last whole record and leaves the store in
//! memory as it was: the caller keeps the records in the ring and tries
//! again later.
//!
//! **Compaction.** Replayed frames leave memory as the replay goes, and the
//! file by [`Spool::compact`]: the pending frames are written to
//! `ID.frames.next`, whose header holds the sequence number of its first
//! frame and the highest ring position stored, and that file is renamed
//! over `ID.frames`. Killed before the rename, the agent finds the old file
//! whole (the next one is removed on open); after it, the new one; the
//! cursor counts sequence numbers and is right for both. The engine
//! compacts a store only once the ring has been consumed past every record
//! in it: fully when nothing is pending, and while frames are pending once
//! the replayed part is worth the copy (`engine::pump`), so a store holds
//! about what is pending, not everything since the replay began.
//!
//! **Format 1.** A store of an older agent (`MIGRSPL1`, no checksums) is
//! read with its own layout (only a torn last record can be found there)
//! and rewritten in format 2 at once, with its pending frames only (so the
//! upgrade needs room for those alone), numbered as its cursor counted
//! (from 0, its first frame). If even that does not fit, opening fails and
//! says so, and the old file is left as it was. A file in a format this agent does not know
//! (a newer agent's, or a damaged header) cannot be read: the store starts
//! afresh and reports the bytes it dropped.
//!
//! Files live in a directory on tmpfs (/run): the ring they back up is in
//! memory too, so they only need to survive the agent, not the machine.
//! Nothing is fsync'd.

mod io;
mod record;
#[cfg(test)]
mod tests;

use std::{
    fs::{File, OpenOptions},
    io::Read as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

pub use self::record::StoredFrame;
use self::{
    io::{WriteLimit, open_rw, remove_if_present},
    record::{Cut, FILE_HEADER, FileHeader, Layout, RECORD_HEADER},
};

/// A compaction writes at most this much at once (the pending frames can
/// be many megabytes; one buffer for all would stay allocated).
const COMPACT_CHUNK: usize = 1 << 20;
/// Replayed frames leave memory in runs of at least this many (a run moves
/// the pending frames down; this keeps that rare).
const FORGET_MIN: usize = 64;

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
    /// Bytes cut from the first record that failed its checksum on, or of
    /// a file this agent cannot read at all: damaged; frames in them that
    /// the ring no longer holds are lost.
    pub corrupt_bytes: u64,
    /// The store was in format 1 and has been rewritten in format 2.
    pub upgraded: bool,
    /// A frame whose replay may or may not have happened.
    pub uncertain: u64,
}

pub struct Spool {
    path: PathBuf,
    /// Where a compaction writes the next file before renaming it to `path`.
    next_path: PathBuf,
    cursor_path: PathBuf,
    file: File,
    cursor: File,
    /// The current park ring.
    ring_id: u32,
    /// The ring the file's positions came from.
    file_ring: u32,
    /// Highest ring position stored since the store started, compactions
    /// included.
    max_ring_pos: Option<u64>,
    /// Sequence number of the file's first frame.
    file_base: u64,
    /// Bytes of the file's header and whole records: where the next record
    /// goes, and where a failed write is cut back to.
    file_len: u64,
    /// A failed write could not be cut back: the file may hold part of it
    /// past `file_len`, to be cut before anything else is written.
    dirty_tail: bool,
    /// Frames from sequence number `mem_base` on.
    frames: Vec<StoredFrame>,
    mem_base: u64,
    /// Sequence number of the next frame to replay.
    done: u64,
    pending_bytes: u64,
    scratch: Vec<u8>,
    limit: WriteLimit,
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
        Self::open_with(dir, service_id, ring_id, batch_runs, WriteLimit::default())
    }

    /// [`Self::open`], its writes going through `limit` (a test's).
    fn open_with(
        dir: &Path,
        service_id: u32,
        ring_id: u32,
        batch_runs: Option<u64>,
        limit: WriteLimit,
    ) -> Result<(Self, Recovered)> {
        let path = dir.join(format!("{service_id}.frames"));
        let next_path = dir.join(format!("{service_id}.frames.next"));
        let cursor_path = dir.join(format!("{service_id}.cursor"));
        // Left by a compaction killed before its rename: the old file is whole.
        remove_if_present(&next_path)?;
        let mut file = open_rw(&path)?;
        let cursor = open_rw(&cursor_path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        let parsed = record::parse(&bytes);
        let bytes_len = bytes.len() as u64;
        drop(bytes);
        let mut recovered = Recovered::default();
        match parsed.cut {
            Cut::None => {}
            Cut::Torn(n) => recovered.torn_bytes = n,
            Cut::Corrupt(n) => recovered.corrupt_bytes = n,
        }
        let last_pos = parsed.frames.iter().map(|f| f.ring_pos).max();
        let mut spool = Self {
            path,
            next_path,
            cursor_path,
            file,
            cursor,
            ring_id,
            file_ring: parsed.header.ring_id,
            max_ring_pos: parsed.header.max_ring_pos.max(last_pos),
            file_base: parsed.header.base,
            file_len: parsed.good_len,
            dirty_tail: false,
            frames: parsed.frames,
            mem_base: parsed.header.base,
            done: parsed.header.base,
            pending_bytes: 0,
            scratch: Vec::new(),
            limit,
        };
        match parsed.layout {
            Layout::V2 if parsed.cut != Cut::None => spool.cut_file(parsed.good_len)?,
            Layout::V2 | Layout::V1 => {}
            Layout::Unreadable => {
                recovered.corrupt_bytes = bytes_len;
                spool.start_file()?;
            }
            Layout::New => spool.start_file()?,
        }
        spool.done = spool.recover_cursor(batch_runs, &mut recovered)?;
        spool.pending_bytes = spool
            .pending_frames()
            .iter()
            .map(|f| f.frame.len() as u64)
            .sum();
        if parsed.layout == Layout::V1 {
            spool.upgrade()?;
            recovered.upgraded = true;
        }
        spool.write_cursor(spool.done, spool.done)?;
        recovered.frames = spool.frames.len() as u64;
        recovered.pending = spool.pending() as u64;
        Ok((spool, recovered))
    }

    /// Rewrites a format 1 store in format 2, with its pending frames only:
    /// that needs room for them alone. The replayed ones stay in memory for
    /// the caller's count of what happened since the last save.
    fn upgrade(&mut self) -> Result<()> {
        let first = (self.done - self.mem_base) as usize;
        let header = self.header(self.file_ring, self.done);
        self.replace_file(header, first).with_context(|| {
            format!(
                "rewriting {} in format 2 (it needs room for {} bytes of pending frames)",
                self.path.display(),
                self.pending_bytes()
            )
        })
    }

    /// Where the replay stands after a restart (see the module docs).
    fn recover_cursor(&self, batch_runs: Option<u64>, recovered: &mut Recovered) -> Result<u64> {
        let mut c = [0u8; 16];
        let n = self
            .cursor
            .read_at(&mut c, 0)
            .with_context(|| format!("reading {}", self.cursor_path.display()))?;
        let (started, mut done) = if n == 16 {
            (
                u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(c[8..16].try_into().unwrap_or_default()),
            )
        } else {
            (0, 0)
        };
        if started > done {
            // Killed between marking a batch and its replay returning.
            let batch = started - done;
            match batch_runs {
                Some(runs) => done += runs.min(batch),
                None => {
                    recovered.uncertain = batch;
                    done = started;
                }
            }
        }
        // Frames before the file's first were replayed and given back; none
        // exist past its last.
        Ok(done.max(self.file_base).min(self.end_seq()))
    }

    /// Frames stored and not replayed.
    pub fn pending(&self) -> usize {
        (self.end_seq() - self.done) as usize
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Bytes of the file, replayed frames included.
    pub fn file_bytes(&self) -> u64 {
        self.file_len
    }

    /// Sequence number the next stored frame gets (frames stored since the
    /// store started).
    pub fn end_seq(&self) -> u64 {
        self.mem_base + self.frames.len() as u64
    }

    /// Sequence number of the next frame to replay (the cursor).
    pub fn done_seq(&self) -> u64 {
        self.done
    }

    /// Ring position of the oldest frame in memory.
    pub fn first_ring_pos(&self) -> Option<u64> {
        self.frames.first().map(|f| f.ring_pos)
    }

    /// The frames numbered `from..to`: how many of them are gone (replayed
    /// and given back, their sizes unknown), and those still here.
    pub fn frames_between(&self, from: u64, to: u64) -> (u64, &[StoredFrame]) {
        let end = self.end_seq();
        let to = to.min(end);
        let gone = to.min(self.mem_base).saturating_sub(from);
        let lo = from.max(self.mem_base).min(end);
        let hi = to.max(lo);
        let at = |seq: u64| (seq - self.mem_base) as usize;
        (gone, &self.frames[at(lo)..at(hi)])
    }

    /// The next frame to replay.
    pub fn next_pending(&self) -> Option<&StoredFrame> {
        self.pending_frames().first()
    }

    /// The frames not replayed yet, oldest first.
    pub fn pending_frames(&self) -> &[StoredFrame] {
        &self.frames[(self.done - self.mem_base) as usize..]
    }

    /// Highest ring position stored, if the positions belong to the current
    /// ring. A ring record of this service at or before it is stored already
    /// (or was, and has been replayed).
    pub fn max_ring_pos(&self) -> Option<u64> {
        self.max_ring_pos.filter(|_| self.file_ring == self.ring_id)
    }

    /// Bytes the file spends on replayed frames: what [`Self::compact`]
    /// gives back.
    pub fn replayed_bytes(&self) -> u64 {
        let pending = self.pending_bytes + self.pending() as u64 * RECORD_HEADER as u64;
        self.file_len.saturating_sub(FILE_HEADER as u64 + pending)
    }

    /// Appends frames (one write). If the write fails, the file is cut back
    /// to where it was and the store is unchanged.
    pub fn append(&mut self, frames: Vec<StoredFrame>) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        if self.dirty_tail {
            self.cut_file(self.file_len)?;
            self.dirty_tail = false;
        }
        self.scratch.clear();
        for f in &frames {
            f.encode_into(&mut self.scratch);
        }
        let written = self
            .limit
            .write_all_at(&self.file, &self.scratch, self.file_len);
        if let Err(e) = written {
            let what = format!("appending to {}", self.path.display());
            if let Err(cut) = self.cut_file(self.file_len) {
                self.dirty_tail = true;
                let what = format!(
                    "{what} (cutting off what was written failed too, so it is cut before the next write: {cut:#})"
                );
                return Err(anyhow::Error::new(e).context(what));
            }
            return Err(anyhow::Error::new(e).context(what));
        }
        self.file_len += self.scratch.len() as u64;
        for f in frames {
            self.pending_bytes += f.frame.len() as u64;
            self.max_ring_pos = self.max_ring_pos.max(Some(f.ring_pos));
            self.frames.push(f);
        }
        Ok(())
    }

    /// Marks the next `n` pending frames as being replayed; call before
    /// handing them to the kernel, then [`Self::finish_batch`].
    pub fn start_batch(&mut self, n: usize) -> Result<()> {
        if n == 0 || n > self.pending() {
            bail!("{n} frames to replay, {} pending", self.pending());
        }
        self.write_cursor(self.done + n as u64, self.done)
    }

    /// The next `n` frames (of those marked by [`Self::start_batch`]) are
    /// replayed (or dropped).
    pub fn finish_batch(&mut self, n: usize) -> Result<()> {
        let n = n.min(self.pending());
        let bytes: u64 = self.pending_frames()[..n]
            .iter()
            .map(|f| f.frame.len() as u64)
            .sum();
        self.done += n as u64;
        self.pending_bytes -= bytes;
        self.write_cursor(self.done, self.done)?;
        self.forget_replayed();
        Ok(())
    }

    /// Drops replayed frames from memory once they are as many as the
    /// pending ones (moving those down then costs at most one move each per
    /// replayed frame).
    fn forget_replayed(&mut self) {
        let replayed = (self.done - self.mem_base) as usize;
        if replayed >= FORGET_MIN && replayed >= self.pending() {
            self.frames.drain(..replayed);
            self.mem_base = self.done;
        }
    }

    fn write_cursor(&mut self, started: u64, done: u64) -> Result<()> {
        let mut c = [0u8; 16];
        c[0..8].copy_from_slice(&started.to_le_bytes());
        c[8..16].copy_from_slice(&done.to_le_bytes());
        self.cursor
            .write_all_at(&c, 0)
            .with_context(|| format!("writing {}", self.cursor_path.display()))
    }

    /// Gives the replayed frames back to the filesystem: rewrites the store
    /// with its pending frames only (see the module docs). Call between
    /// batches, once the ring has been consumed past the store's records.
    pub fn compact(&mut self) -> Result<()> {
        if self.done == self.file_base {
            return Ok(());
        }
        let ring = if self.pending() == 0 {
            // Nothing of an older ring is left: the store starts over in
            // the current one.
            self.ring_id
        } else {
            self.file_ring
        };
        let first = (self.done - self.mem_base) as usize;
        self.replace_file(self.header(ring, self.done), first)?;
        self.frames.drain(..first);
        self.mem_base = self.done;
        Ok(())
    }

    /// Drops every frame, replayed or not.
    pub fn discard(&mut self) -> Result<()> {
        let header = FileHeader {
            ring_id: self.ring_id,
            base: 0,
            max_ring_pos: None,
        };
        // The file first: a kill before the cursor is rewritten leaves a
        // cursor past the end, which `open` clamps (nothing pending).
        self.replace_file(header, self.frames.len())?;
        self.frames.clear();
        (self.mem_base, self.done, self.pending_bytes) = (0, 0, 0);
        self.max_ring_pos = None;
        self.write_cursor(0, 0)
    }

    /// Removes the files (service removed).
    pub fn remove(self) -> Result<()> {
        let _ = std::fs::remove_file(&self.cursor_path);
        let _ = std::fs::remove_file(&self.next_path);
        std::fs::remove_file(&self.path)
            .with_context(|| format!("removing {}", self.path.display()))
    }

    /// Test hook: the store may write `bytes` more, then its writes fail
    /// with ENOSPC (None: no limit).
    #[cfg(test)]
    pub(crate) fn limit_writes(&mut self, bytes: Option<u64>) {
        self.limit.bytes = bytes;
    }

    /// Test hook: cutting the file fails (EIO).
    #[cfg(test)]
    fn fail_cuts(&mut self, fail: bool) {
        self.limit.cut_fails = fail;
    }

    /// The header of a file that starts at `base`, its positions from `ring`.
    fn header(&self, ring: u32, base: u64) -> FileHeader {
        FileHeader {
            ring_id: ring,
            base,
            // Positions of another ring mean nothing in this one.
            max_ring_pos: self.max_ring_pos.filter(|_| ring == self.file_ring),
        }
    }

    /// Starts an empty file in place (a new store, or one that could not be
    /// read): a kill half-way leaves a file shorter than a header, which is
    /// a new store again.
    fn start_file(&mut self) -> Result<()> {
        self.cut_file(0)?;
        let header = FileHeader {
            ring_id: self.ring_id,
            base: 0,
            max_ring_pos: None,
        };
        self.limit
            .write_all_at(&self.file, &header.encode(), 0)
            .with_context(|| format!("starting {}", self.path.display()))?;
        (self.file_ring, self.file_base, self.file_len) = (self.ring_id, 0, FILE_HEADER as u64);
        (self.mem_base, self.done, self.max_ring_pos) = (0, 0, None);
        self.frames.clear();
        Ok(())
    }

    /// Replaces the file, atomically, by one with `header` and the frames in
    /// memory from index `first` on. Memory is the caller's to update.
    fn replace_file(&mut self, header: FileHeader, first: usize) -> Result<()> {
        let written = self.write_next_file(header, first).and_then(|file| {
            std::fs::rename(&self.next_path, &self.path)
                .with_context(|| format!("renaming {}", self.next_path.display()))?;
            Ok(file)
        });
        let (file, len) = match written {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&self.next_path);
                return Err(e);
            }
        };
        self.file = file;
        self.file_len = len;
        self.dirty_tail = false;
        self.file_ring = header.ring_id;
        self.file_base = header.base;
        self.max_ring_pos = header.max_ring_pos;
        Ok(())
    }

    /// Writes the next file, in chunks; returns it and its length.
    fn write_next_file(&mut self, header: FileHeader, first: usize) -> Result<(File, u64)> {
        let context = || format!("writing {}", self.next_path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.next_path)
            .with_context(context)?;
        self.scratch.clear();
        self.scratch.extend_from_slice(&header.encode());
        let mut at = 0u64;
        for (i, f) in self.frames.iter().enumerate().skip(first) {
            f.encode_into(&mut self.scratch);
            if self.scratch.len() >= COMPACT_CHUNK || i + 1 == self.frames.len() {
                self.limit
                    .write_all_at(&file, &self.scratch, at)
                    .with_context(context)?;
                at += self.scratch.len() as u64;
                self.scratch.clear();
            }
        }
        if !self.scratch.is_empty() {
            // No frames: the header alone.
            self.limit
                .write_all_at(&file, &self.scratch, at)
                .with_context(context)?;
            at += self.scratch.len() as u64;
        }
        self.scratch = Vec::new();
        Ok((file, at))
    }

    fn cut_file(&mut self, len: u64) -> Result<()> {
        self.limit
            .set_len(&self.file, len)
            .with_context(|| format!("cutting {} to {len} bytes", self.path.display()))
    }
}
