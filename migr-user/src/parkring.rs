//! A consumer of the `PARKED` BPF ring buffer that decides itself when a
//! record is consumed.
//!
//! aya's `RingBuf` advances the kernel's consumer position as soon as an item
//! is dropped. The agent needs more control: a record must stay in the
//! (pinned) ring until it is safely stored or replayed, so that an agent
//! killed at any moment loses nothing, and while a held service's record is
//! unconsumed the XDP program keeps parking that service's fresh frames (see
//! `SERVICE_HOLD`). This consumer reads records at or after the consumer
//! position without consuming them, reports each record's logical position
//! (a byte offset that only grows), and consumes up to a position on request.
//!
//! Memory layout (kernel/bpf/ringbuf.c): the first page of the map's mmap is
//! the consumer position (read-write); from the second page on: the producer
//! position page, then the data area mapped twice in a row, so a record that
//! wraps around the end is contiguous. Each record starts with an 8-byte
//! header: a u32 length with the BUSY (bit 31) and DISCARD (bit 30) flags,
//! and a u32 page offset; records are 8-byte aligned.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{Result, bail};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_SZ: u64 = 8;

struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize, prot: libc::c_int, offset: usize) -> Result<Self> {
        // SAFETY: mmap of a BPF ring buffer map fd, at the offsets the kernel defines.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of the park ring ({len} bytes at {offset}): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            ptr: NonNull::new(ptr).expect("mmap returned null without failing"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// One committed record, not consumed yet.
#[derive(Debug)]
pub struct RingRecord<'a> {
    /// Logical position of the record's header.
    pub pos: u64,
    /// Position just after the record (what to consume up to).
    pub next: u64,
    /// The record's bytes (`ParkedHeader` + frame); empty for a discarded one.
    pub data: &'a [u8],
    pub discarded: bool,
}

/// What [`ParkRing::peek`] found at a position.
#[derive(Debug)]
pub enum Peek<'a> {
    /// Nothing produced at or after this position.
    Empty,
    /// A record is reserved but not committed yet (a CPU is still copying).
    Busy,
    Record(RingRecord<'a>),
}

pub struct ParkRing {
    _fd: OwnedFd,
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    size: u64,
    /// Kernel id of the ring map (positions are only comparable within one map).
    pub map_id: u32,
}

// SAFETY: the mappings are plain shared memory; all access goes through atomics
// or reads of committed (immutable until consumed) records.
unsafe impl Send for ParkRing {}

impl ParkRing {
    /// `fd` is the ring map's fd, `size` its data size (`max_entries`).
    pub fn new(fd: OwnedFd, size: u32, map_id: u32) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let size64 = u64::from(size);
        if !size64.is_power_of_two() || (size as usize) < page {
            bail!("park ring size {size} is not a power-of-two number of pages");
        }
        let consumer = Mapping::new(&fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(&fd, page + 2 * size as usize, libc::PROT_READ, page)?;
        Ok(Self {
            _fd: fd,
            consumer,
            producer,
            page,
            size: size64,
            map_id,
        })
    }

    fn consumer_atomic(&self) -> &AtomicU64 {
        // SAFETY: the first mapped page starts with the u64 consumer position.
        unsafe { self.consumer.ptr.cast::<AtomicU64>().as_ref() }
    }

    fn producer_atomic(&self) -> &AtomicU64 {
        // SAFETY: the producer page starts with the u64 producer position.
        unsafe { self.producer.ptr.cast::<AtomicU64>().as_ref() }
    }

    pub fn consumer_pos(&self) -> u64 {
        self.consumer_atomic().load(Ordering::Acquire)
    }

    pub fn producer_pos(&self) -> u64 {
        self.producer_atomic().load(Ordering::Acquire)
    }

    /// Bytes produced and not consumed.
    pub fn backlog(&self) -> u64 {
        self.producer_pos().saturating_sub(self.consumer_pos())
    }

    /// The ring map fd, for poll(2) (readable when data is available).
    pub fn raw_fd(&self) -> i32 {
        self._fd.as_raw_fd()
    }

    /// The record at `pos` (a position at or after the consumer position
    /// that a previous `peek` returned as `next`, or the consumer position).
    pub fn peek(&self, pos: u64) -> Peek<'_> {
        if pos >= self.producer_pos() {
            return Peek::Empty;
        }
        let base = self.producer.ptr.as_ptr().cast::<u8>();
        let offset = self.page + (pos & (self.size - 1)) as usize;
        // SAFETY: `offset` is inside the first copy of the data area, and a
        // record header is 8-byte aligned.
        let header = unsafe { &*base.add(offset).cast::<AtomicU32>() };
        let len_word = header.load(Ordering::Acquire);
        if len_word & BUSY_BIT != 0 {
            return Peek::Busy;
        }
        let len = u64::from(len_word & !(BUSY_BIT | DISCARD_BIT));
        let total = (len + HDR_SZ + 7) & !7;
        let discarded = len_word & DISCARD_BIT != 0;
        let data = if discarded || len > self.size {
            &[][..]
        } else {
            // SAFETY: the data area is mapped twice, so `len` bytes after the
            // header are contiguous; the record is committed and stays
            // unchanged until it is consumed.
            unsafe { std::slice::from_raw_parts(base.add(offset + HDR_SZ as usize), len as usize) }
        };
        Peek::Record(RingRecord {
            pos,
            next: pos + total,
            data,
            discarded,
        })
    }

    /// Releases everything before `pos` to the kernel.
    pub fn consume_to(&self, pos: u64) {
        let current = self.consumer_pos();
        if pos > current {
            self.consumer_atomic().store(pos, Ordering::Release);
        }
    }
}
