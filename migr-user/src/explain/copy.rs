//! Copies a pinned map's entries, byte for byte, into a map of the same
//! shape through bpf(2): aya's typed maps would need a type per map, and
//! `explain` copies them all alike. Lookups from user space do not touch
//! an LRU map's recency, so the agent's maps are only read.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use crate::bpf_sys::bpf;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn elem(cmd: libc::c_long, fd: BorrowedFd<'_>, key: u64, value: u64) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key,
        value,
        flags: 0,
    };
    // SAFETY: the element commands' attribute; callers pass key and value
    // buffers of the map's sizes that live through the call.
    unsafe { bpf(cmd, &attr) }.map(|_| ())
}

/// Every key of `fd` (key size `key_size`), in the map's own order.
pub fn keys(fd: BorrowedFd<'_>, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    let mut next = vec![0u8; key_size];
    loop {
        // No key: the first one.
        let prev = keys.last().map_or(0, |k: &Vec<u8>| k.as_ptr() as u64);
        match elem(BPF_MAP_GET_NEXT_KEY, fd, prev, next.as_mut_ptr() as u64) {
            Ok(()) => keys.push(next.clone()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
    }
}

/// The value under `key`, if there is one.
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], value_size: usize) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; value_size];
    match elem(
        BPF_MAP_LOOKUP_ELEM,
        fd,
        key.as_ptr() as u64,
        value.as_mut_ptr() as u64,
    ) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    elem(
        BPF_MAP_UPDATE_ELEM,
        fd,
        key.as_ptr() as u64,
        value.as_ptr() as u64,
    )
}
