//! Shared by the XDP program (`migr-ebpf`) and the agent (`migr-user`).
//!
//! Everything here is `no_std`, allocation-free and panic-free, so the very same
//! parsing code runs in the kernel and is unit-tested on the host.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod cid;
pub mod frame;
pub mod maps;

pub use frame::Frame;
