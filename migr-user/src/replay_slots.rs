//! `REPLAY_SLOTS` mapped into the agent's memory.
//!
//! The XDP program declares the array `BPF_F_MMAPABLE`, so a replay batch
//! writes each frame straight into its slot: one copy from the store, no
//! `bpf(BPF_MAP_UPDATE_ELEM)` call per frame (each of which copied the whole
//! 3408-byte slot). A map that cannot be mapped (pinned by an older agent,
//! without the flag) is written the old way, one update per frame
//! (`Datapath::replay_batch`).

use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::{Result, bail};
use migr_common::maps::{Action, REPLAY_FRAME_MAX, ReplaySlot};

/// The mapping of the whole array, unmapped on drop.
pub struct ReplaySlots {
    base: *mut u8,
    len: usize,
    slots: u32,
}

// SAFETY: the mapping is owned by this value alone and written only through
// `&mut self`; the pointer is not tied to the thread that made it.
unsafe impl Send for ReplaySlots {}
unsafe impl Sync for ReplaySlots {}

/// Bytes between two array elements: the value size rounded up to 8.
const SLOT_STRIDE: usize = size_of::<ReplaySlot>().next_multiple_of(8);

impl ReplaySlots {
    /// Maps `slots` elements of the array behind `fd`; an error if the
    /// kernel refuses (the map is not `BPF_F_MMAPABLE`).
    pub fn map(fd: &OwnedFd, slots: u32) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (SLOT_STRIDE * slots as usize).next_multiple_of(page);
        // SAFETY: a fresh shared mapping of the map's memory; the kernel checks
        // the length against the map and refuses maps without BPF_F_MMAPABLE.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mmap of REPLAY_SLOTS: {}", std::io::Error::last_os_error());
        }
        Ok(Self {
            base: base.cast(),
            len,
            slots,
        })
    }

    /// Writes slot `index`: the frame and the action it is to get. The frame
    /// must be 1..=[`REPLAY_FRAME_MAX`] bytes (the caller checked it).
    pub fn write(&mut self, index: u32, frame: &[u8], action: Action) -> Result<()> {
        if index >= self.slots || frame.is_empty() || frame.len() > REPLAY_FRAME_MAX {
            bail!(
                "replay slot {index} of {}, frame of {} bytes",
                self.slots,
                frame.len()
            );
        }
        let fields = [
            (std::mem::offset_of!(ReplaySlot, len), frame.len() as u32),
            (std::mem::offset_of!(ReplaySlot, action), action as u32),
        ];
        let data_at = std::mem::offset_of!(ReplaySlot, data);
        // SAFETY: slot `index` lies inside the mapping (index < slots), and so
        // do its fields and `frame.len()` <= REPLAY_FRAME_MAX bytes of its data
        // array. Only the BPF program reads the slots, inside the replay call
        // that follows (a system call: the writes are visible to it).
        unsafe {
            let at = self.base.add(index as usize * SLOT_STRIDE);
            for (offset, value) in fields {
                at.add(offset).cast::<u32>().write_unaligned(value);
            }
            std::ptr::copy_nonoverlapping(frame.as_ptr(), at.add(data_at), frame.len());
        }
        Ok(())
    }
}

impl Drop for ReplaySlots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
