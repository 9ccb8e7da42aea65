//! The live-migration testbed (docs/testbed.md): a client, a router, two
//! edge nodes and a "container" network namespace behind each edge node;
//! `migr-agent` on the edge nodes; a service process checkpointed by CRIU in
//! the source container and restored into the destination container.
//!
//! Used by the tests (`tests/tests/testbed.rs`), by the `migr-testbed`
//! binary and, through that binary, by `cargo xtask demo` and
//! `cargo xtask testbed`. The MPTCP lab ([`mptcp`]) serves
//! `tests/tests/mptcp.rs` and the `migr-mptcp` runner, and `migr-bench` is
//! the benchmark harness behind `cargo xtask bench`.
//!
//! [`results`], the schema of the files the runs write, is all there is
//! without the default feature `runner`: `xtask report` reads the files
//! through it without building the testbed.
//!
//! Everything a run creates (namespaces `migr-t<pid>-<n>-<tag>`, processes,
//! BPF pins, files under its work directory, the nftables tables CRIU's
//! network lock leaves) is removed when the run's values are dropped, on
//! success and on failure; processes are killed by PID.

// A run's JSON record (`json!`) nests deeper than the default limit.
#![recursion_limit = "256"]

pub mod results;

#[cfg(feature = "runner")]
pub mod agent;
#[cfg(feature = "runner")]
pub mod criu;
#[cfg(feature = "runner")]
pub mod delay;
#[cfg(feature = "runner")]
pub mod dns;
#[cfg(feature = "runner")]
mod environment;
#[cfg(feature = "runner")]
pub mod hook_cost;
#[cfg(feature = "runner")]
pub mod migration;
#[cfg(feature = "runner")]
pub mod mptcp;
#[cfg(feature = "runner")]
pub mod placement;
#[cfg(feature = "runner")]
pub mod podman;
#[cfg(feature = "runner")]
pub mod proc;
#[cfg(feature = "runner")]
pub mod runc;
#[cfg(feature = "runner")]
pub mod scenarios;
#[cfg(feature = "runner")]
pub mod stats;
#[cfg(feature = "runner")]
pub mod tcpecho;
#[cfg(feature = "runner")]
pub mod topology;
#[cfg(feature = "runner")]
pub mod transfer;
#[cfg(feature = "runner")]
pub mod udpecho;

#[cfg(feature = "runner")]
pub use environment::{
    Bins, CRIU_PATH, CRIU_RUNDIR, WorkDir, check_environment, criu_cache_dir, now_s,
};
#[cfg(feature = "runner")]
pub use migration::{Protocol, Run, RunConfig};
#[cfg(feature = "runner")]
pub use topology::{Preset, Topology};
