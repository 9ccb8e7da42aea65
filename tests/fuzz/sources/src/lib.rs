//! Decoders of other migr crates, compiled from their own source files
//! (included unchanged with `#[path]`), so that the fuzz targets exercise the
//! very code those crates build:
//!
//! - [`frame`]: migr-quic's extension frames (`migr-quic/src/frame.rs`) and the
//!   varints it reads ([`varint`]);
//! - [`api`]: migr-user's control API (`migr-user/src/api.rs`) and the phase
//!   types it uses ([`phase`]).
//!
//! Each file sits at this crate's root under its own name, so that its
//! `crate::...` imports resolve as in its own crate. If one of them starts to
//! import another module of its crate, include that module here too (the fuzz
//! build fails with "unresolved import `crate::...`" until then).

#[path = "../../../../migr-quic/src/varint.rs"]
pub mod varint;

// Its crate-private helpers for migr-quic's control stream are unused here.
#[allow(dead_code)]
#[path = "../../../../migr-quic/src/frame.rs"]
pub mod frame;

#[path = "../../../../migr-user/src/phase.rs"]
pub mod phase;

#[path = "../../../../migr-user/src/api.rs"]
pub mod api;
