//! [`PacketBytes`] read straight from the frame's linear part, for the code
//! that needs a few reads at offsets it already knows: the fast path's lookup
//! (the QUIC header of a plain frame) and the FORWARD rewrite.
//!
//! The full parser keeps `XdpPacket` (xdp_packet.rs), whose reads go through
//! the header cache or `bpf_xdp_load_bytes`: it serves multi-buffer frames,
//! and its offsets must stay imprecise for the verifier (the TCP option walk
//! in `bpf_loop`). This type is separate so that the parse stage's code does
//! not change with it: when the rewrite's reads were made direct inside
//! `XdpPacket`, Linux 6.12's verifier no longer converged on that walk.

use aya_ebpf::{bindings::xdp_md, helpers::generated::bpf_xdp_get_buff_len};
use migr_common::{
    PacketBytes,
    packet_bytes::{MAX_PARSE_OFFSET, PacketBytesMut},
};

/// All ones up to [`MAX_PARSE_OFFSET`]: `offset & OFFSET_MASK == offset` for
/// every offset a read or store accepts.
const OFFSET_MASK: usize = (MAX_PARSE_OFFSET + 1).next_power_of_two() - 1;

/// The frame's linear part, `data` to `data_end`. Bytes in fragments of a
/// multi-buffer frame are out of reach (as for any direct access).
pub struct InPlace {
    ctx: *mut xdp_md,
    start: usize,
    end: usize,
    /// The whole frame's length if the caller knows it already.
    len: Option<usize>,
}

impl InPlace {
    /// Reads `data`/`data_end` with volatile loads, so that they stay packet
    /// pointers for the verifier (see `XdpPacket::from_raw`).
    #[inline(always)]
    pub fn new(ctx: *mut xdp_md) -> Self {
        Self::with_len(ctx, None)
    }

    /// The same, for a frame whose whole length (`bpf_xdp_get_buff_len`)
    /// the caller has asked already.
    #[inline(always)]
    pub fn with_len(ctx: *mut xdp_md, len: Option<usize>) -> Self {
        // SAFETY: `ctx` is the program's context pointer.
        unsafe {
            Self {
                ctx,
                len,
                start: core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data)) as usize,
                end: core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data_end)) as usize,
            }
        }
    }

    /// The address of `N` bytes at `offset`, if they lie in the linear part.
    #[inline(always)]
    fn at<const N: usize>(&self, offset: usize) -> Option<usize> {
        if offset > MAX_PARSE_OFFSET {
            return None;
        }
        // The mask changes nothing (offset <= MAX_PARSE_OFFSET); it bounds the
        // offset for verifiers that do not carry the check above over to the
        // register used below (Linux 6.1 did not, for the stores).
        let offset = core::hint::black_box(offset) & OFFSET_MASK;
        // Opaque, so that the check and the access use the same register
        // (see `checked_pointer` in xdp_packet.rs).
        let at = core::hint::black_box(self.start + offset);
        if at + N > self.end {
            return None;
        }
        Some(at)
    }
}

impl PacketBytes for InPlace {
    /// The whole frame's length, as for `XdpPacket` (the QUIC parse clamps
    /// to it). A helper call: `end - start` would be arithmetic on
    /// `data_end`, which the verifier refuses.
    #[inline(always)]
    fn len(&self) -> usize {
        match self.len {
            Some(len) => len,
            // SAFETY: plain helper call on the program's context.
            None => unsafe { bpf_xdp_get_buff_len(self.ctx) as usize },
        }
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let at = self.at::<N>(offset)?;
        // SAFETY: [at, at + N) lies inside the packet, checked by `at`.
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }
}

impl PacketBytesMut for InPlace {
    #[inline(always)]
    fn store<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> Option<()> {
        let at = self.at::<N>(offset)?;
        // SAFETY: as for `load`.
        unsafe { core::ptr::write_unaligned(at as *mut [u8; N], bytes) };
        Some(())
    }
}
