//! [`PacketBytes`] over XDP packet memory.

use aya_ebpf::{
    bindings::xdp_md,
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::map,
    maps::PerCpuArray,
};
use migr_common::wire::{
    ParseError,
    tcp::{MAX_TCP_OPTION_STEPS, OptionRef, OptionWalk},
};
use migr_common::{PacketBytes, packet_bytes::MAX_PARSE_OFFSET};

/// Bytes of the current packet's headers kept by [`fill_header_cache`] (a
/// power of two: reads mask their offset with it).
const HEADER_CACHE_BYTES: usize = 256;
/// Room after the cached bytes, so that a masked offset plus a read of up to
/// this many bytes stays inside the array, whatever LLVM does to the checks.
const HEADER_CACHE_SLACK: usize = 64;

/// The first bytes of the packet being classified, copied with one helper
/// call, so that the parsers' many small reads cost a map access each
/// instead of a `bpf_xdp_load_bytes` call each.
#[repr(C)]
pub struct HeaderCache {
    /// Valid bytes (0 when the copy failed: every read then takes the helper).
    len: u32,
    bytes: [u8; HEADER_CACHE_BYTES + HEADER_CACHE_SLACK],
}

/// Per-CPU: an XDP program runs to completion on its CPU.
#[map]
static HEADER_CACHE: PerCpuArray<HeaderCache> = PerCpuArray::with_max_entries(1, 0);

/// Copies the packet's first bytes into this CPU's [`HeaderCache`]; call once
/// per packet, before the packet is read through a cached [`XdpPacket`].
#[inline(always)]
pub fn fill_header_cache(ctx: *mut xdp_md) {
    let Some(cache) = HEADER_CACHE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else uses it while the program runs.
    let cache = unsafe { &mut *cache };
    // SAFETY: plain helper call on the program's context.
    let len = unsafe { bpf_xdp_get_buff_len(ctx) } as u32;
    // The copy length must be provably in [1, HEADER_CACHE_BYTES]: clamp len-1.
    let mut last = len.wrapping_sub(1);
    if last > HEADER_CACHE_BYTES as u32 - 1 {
        last = HEADER_CACHE_BYTES as u32 - 1;
    }
    let copy = last + 1;
    // SAFETY: `bytes` has room for `copy` <= HEADER_CACHE_BYTES bytes.
    let rc = unsafe { bpf_xdp_load_bytes(ctx, 0, cache.bytes.as_mut_ptr().cast(), copy) };
    cache.len = if rc == 0 { copy } else { 0 };
}

/// The packet between `data` and `data_end`. Every read is checked against
/// `data_end` in a form the verifier can follow: the offset is first clamped
/// to [`MAX_PARSE_OFFSET`], then `start + offset + N` is compared with `end`.
pub struct XdpPacket {
    ctx: *mut xdp_md,
    start: usize,
    end: usize,
    /// Reads may come from the [`HeaderCache`] (never after a write).
    cached: bool,
}

impl XdpPacket {
    /// A frame to parse, whose reads come from the [`HeaderCache`] where it
    /// holds them ([`fill_header_cache`] or [`clear_header_cache`] must have
    /// run for this packet).
    #[inline(always)]
    pub fn cached(ctx: *mut xdp_md) -> Self {
        Self::from_raw(ctx, true)
    }

    /// Reads `data`/`data_end` from the context with volatile loads. In a
    /// non-inlined function this keeps LLVM from hoisting the loads into the
    /// caller and passing plain integers, which the verifier would no longer
    /// treat as packet pointers.
    #[inline(always)]
    fn from_raw(ctx: *mut xdp_md, cached: bool) -> Self {
        // SAFETY: `ctx` is the program's context pointer.
        unsafe {
            Self {
                ctx,
                start: core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data)) as usize,
                end: core::ptr::read_volatile(core::ptr::addr_of!((*ctx).data_end)) as usize,
                cached,
            }
        }
    }
}

impl PacketBytes for XdpPacket {
    #[inline(always)]
    fn len(&self) -> usize {
        // The whole frame, fragments included: `load` reads across them.
        // SAFETY: plain helper call on the program's context.
        unsafe { aya_ebpf::helpers::generated::bpf_xdp_get_buff_len(self.ctx) as usize }
    }

    /// Reads through `bpf_xdp_load_bytes`: the helper checks the bounds at run
    /// time, so the offset stays an ordinary (imprecise) scalar for the
    /// verifier. Direct packet access would force every offset to be tracked
    /// precisely, which stops the verifier from pruning the parser's loops.
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_PARSE_OFFSET {
            return None;
        }
        if self.cached
            && N <= HEADER_CACHE_SLACK
            && let Some(cache) = HEADER_CACHE.get_ptr(0)
        {
            // SAFETY: this CPU's slot, filled for this packet.
            let cache = unsafe { &*cache };
            if offset + N <= cache.len as usize {
                // `cache.len` <= HEADER_CACHE_BYTES, so the mask changes nothing;
                // it is what bounds the access for the verifier.
                let at = offset & (HEADER_CACHE_BYTES - 1);
                // SAFETY: at + N <= HEADER_CACHE_BYTES + HEADER_CACHE_SLACK.
                return Some(unsafe {
                    core::ptr::read_unaligned(cache.bytes.as_ptr().add(at).cast::<[u8; N]>())
                });
            }
        }
        let mut out = [0u8; N];
        // SAFETY: `out` is N writable bytes on the stack; the helper checks
        // [offset, offset + N) against the frame.
        let rc = unsafe {
            bpf_xdp_load_bytes(self.ctx, offset as u32, out.as_mut_ptr().cast(), N as u32)
        };
        if rc == 0 { Some(out) } else { None }
    }

    /// The TCP option walk, driven by `bpf_loop`: the verifier checks the
    /// step once instead of every unrolled iteration on every path (with a
    /// plain loop the parser alone took ~900k verified instructions).
    #[inline(always)]
    fn find_tcp_option(
        &self,
        start: usize,
        end: usize,
        kind: u8,
    ) -> Result<Option<OptionRef>, ParseError> {
        let mut state = LoopState {
            ctx: self.ctx,
            walk: OptionWalk::new(start, end, kind),
        };
        // SAFETY: `option_step` matches bpf_loop's callback ABI and only
        // touches `state`, which outlives the call.
        unsafe {
            bpf_loop(
                MAX_TCP_OPTION_STEPS as u32,
                option_step as *mut c_void,
                core::ptr::addr_of_mut!(state).cast(),
                0,
            );
        }
        state.walk.result()
    }
}

#[repr(C)]
struct LoopState {
    ctx: *mut xdp_md,
    walk: OptionWalk,
}

/// One `bpf_loop` iteration: 0 to go on, 1 to stop.
extern "C" fn option_step(_index: u64, state: *mut LoopState) -> i64 {
    // SAFETY: bpf_loop hands back the pointer given to it above.
    let state = unsafe { &mut *state };
    // Helper reads, not the header cache: a read from the cache makes the walk's offset a
    // precise scalar (map value arithmetic), and verifiers that check a bpf_loop callback
    // until its states converge (Linux 6.8 and later) then see a new state for every offset
    // and stop at the complexity limit (seen on 6.12: 1M instructions in migr_parse). The
    // helper's offset argument stays imprecise, so the states converge.
    let frame = XdpPacket::from_raw(state.ctx, false);
    if state.walk.step(&frame) { 0 } else { 1 }
}

/// All ones up to [`MAX_PARSE_OFFSET`]: `offset & STORE_OFFSET_MASK == offset` for every
/// offset a store accepts.
const STORE_OFFSET_MASK: usize = (MAX_PARSE_OFFSET + 1).next_power_of_two() - 1;

impl migr_common::packet_bytes::PacketBytesMut for XdpPacket {
    #[inline(always)]
    fn store<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> Option<()> {
        if offset > MAX_PARSE_OFFSET {
            return None;
        }
        // The mask changes nothing (offset <= MAX_PARSE_OFFSET); it bounds the offset for
        // verifiers that do not carry the check above over to the register used below
        // (Linux 6.1 saw an offset of up to 65537 here and refused the store).
        let offset = core::hint::black_box(offset) & STORE_OFFSET_MASK;
        let at = checked_pointer(self.start + offset);
        if at + N > self.end {
            return None;
        }
        // SAFETY: [at, at + N) lies inside the packet, checked just above.
        unsafe { core::ptr::write_unaligned(at as *mut [u8; N], bytes) };
        Some(())
    }
}

/// Makes `at` opaque to LLVM, so that the bounds check and the access use the
/// very same register. Otherwise LLVM may fold constant parts of the offset
/// into the access differently from the check, and the verifier, which only
/// carries a checked range over to registers derived from the same pointer,
/// refuses the access.
#[inline(always)]
fn checked_pointer(at: usize) -> usize {
    core::hint::black_box(at)
}
