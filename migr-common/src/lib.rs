//! Shared by the XDP program (`migr-ebpf`) and the agent (`migr-user`).
//!
//! Everything here is `no_std`, allocation-free and panic-free, so the very same
//! parsing code runs in the kernel and is unit-tested on the host. The frame builders its unit tests use live in
//! `migr-testkit` (a dev-dependency), so nothing here is compiled for tests alone.
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod cid;
pub mod classify;
pub mod layout;
pub mod maps;
pub mod packet_bytes;
pub mod rewrite;
pub mod wire;

pub use packet_bytes::PacketBytes;
