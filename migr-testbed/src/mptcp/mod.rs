//! migr on real kernel MPTCP (issue 7, docs/mptcp.md): the lab (namespaces,
//! agent, kernel readers), the freeze scenario and the address handover.
//! Used by `tests/tests/mptcp.rs` and by the `migr-mptcp` runner, which
//! repeats the scenarios and writes `results/mptcp-*.json`.

pub mod freeze;
pub mod handover;
pub mod lab;
