//! What the kernel says of a pinned XDP or TCX link: the interface it is
//! attached to, 0 once it is detached (the interface was deleted). aya's
//! `LinkInfo` does not expose the interface, so this asks bpf(2) directly.

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::Path,
};

use crate::bpf_sys::bpf;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info`: type, id and program id, then a union whose
/// XDP and TCX members both begin with the interface index (offset 16).
#[repr(C)]
#[derive(Default)]
struct LinkInfoBytes {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    _rest: [u32; 27],
}

/// The interface index the link pinned at `pin` is attached to (0: none).
pub fn attached_ifindex(pin: &Path) -> io::Result<u32> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the pin path"))?;
    let get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: BPF_OBJ_GET's attribute; the path outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &get)? };
    // SAFETY: a fresh descriptor, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfoBytes::default();
    let attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of::<LinkInfoBytes>() as u32,
        info: &mut info as *mut LinkInfoBytes as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`, which
    // lives through the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)? };
    Ok(info.ifindex)
}
