//! Tools for migr's tests, kept out of the product crates.
//!
//! - [`frames`]: a frame builder and a checksum oracle (always available; the
//!   rest needs the default feature `harness`).
//! - [`netns`] and [`process`]: network namespaces that remove themselves,
//!   veth pairs, processes killed on drop. Every namespace is named
//!   `migr-t<pid>-<n>-<tag>` and deleted on drop, so a failing (panicking) test
//!   cleans up too.
//! - [`host_tables`]: the datapath's tables in hash maps, for the host-side classifier.
//! - [`fixture`] and [`corpus`]: the XDP program under BPF_PROG_TEST_RUN.
//! - [`agent_harness`]: the real agent in a namespace topology.
pub mod frames;
pub mod host_tables;

#[cfg(feature = "harness")]
pub mod agent_harness;
#[cfg(feature = "harness")]
pub mod corpus;
#[cfg(feature = "harness")]
pub mod fixture;
#[cfg(feature = "harness")]
pub mod netns;
#[cfg(feature = "harness")]
pub mod process;

#[cfg(feature = "harness")]
pub use netns::{NetNs, veth_pair};

/// Fails with a message naming what is missing when the tests cannot run here.
#[cfg(feature = "harness")]
pub fn require_privileges() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run them via `cargo xtask test` as root"
    );
    let ip = std::process::Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "these tests need iproute2's `ip` in PATH; run `cargo xtask setup`"
    );
}
