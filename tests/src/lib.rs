//! Helpers for migr's privileged integration tests: network namespaces that
//! remove themselves, veth pairs, and running code inside a namespace.
//!
//! Every namespace is named `migr-t<pid>-<n>-<tag>` and deleted on drop, so a
//! failing (panicking) test cleans up too. Processes started in a namespace are
//! killed by PID when it is dropped.
// A testbed run's JSON record (`json!`) nests deeper than the default limit.
#![recursion_limit = "256"]
pub mod agent_harness;
pub mod corpus;
pub mod fixture;
pub mod netns;
pub mod process;
pub mod testbed;

pub use netns::{NetNs, veth_pair};

/// Fails with a message naming what is missing when the tests cannot run here.
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
