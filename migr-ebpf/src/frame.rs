//! [`Frame`] over XDP packet memory.

use aya_ebpf::programs::XdpContext;
use migr_common::{Frame, frame::MAX_PARSE_OFFSET};

/// The packet between `data` and `data_end`. Every read is checked against
/// `data_end` in a form the verifier can follow: the offset is first clamped
/// to [`MAX_PARSE_OFFSET`], then `start + offset + N` is compared with `end`.
pub struct XdpFrame {
    start: usize,
    end: usize,
}

impl XdpFrame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_PARSE_OFFSET {
            return None;
        }
        let at = self.start + offset;
        if at + N > self.end {
            return None;
        }
        // SAFETY: [at, at + N) lies inside the packet, checked just above.
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }
}
