//! Shared by the XDP program (`migr-ebpf`) and the agent (`migr-user`).
//!
//! Everything here is `no_std`, allocation-free and panic-free, so the very same
//! parsing code runs in the kernel and is unit-tested on the host.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

#[cfg(any(test, feature = "std"))]
pub mod build;
pub mod checksum;
pub mod cid;
pub mod classify;
pub mod frame;
pub mod maps;
pub mod rewrite;
pub mod wire;

pub use frame::Frame;
