//! bpf(2) itself, for the few commands aya does not expose the way migr
//! needs them (a link's interface, raw map copies, a feature probe).

use std::io;

/// Calls bpf(2) with command `cmd` and the attribute `attr`; returns the
/// non-negative result (a new descriptor for some commands).
///
/// # Safety
/// `attr` must have the kernel's layout for `cmd`, and every buffer it
/// points to must be valid, of the size the attribute gives, through the
/// call (the kernel may write to it).
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the caller's promise; the size passed is the attribute's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    match rc {
        rc if rc >= 0 => Ok(rc),
        _ => Err(io::Error::last_os_error()),
    }
}
