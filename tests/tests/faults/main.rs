//! Faults in mid-migration, fail-open, and a locked-down control plane
//! (issue 10), on real agents in network namespaces. The harness and the
//! topology are `migr_testkit::agent_harness` (the same as `agent.rs`):
//!
//! ```text
//!   cli --v-cs / v-sc-- src --v-sd / v-ds-- dst
//!   10.41.1.1      10.41.1.2   10.41.2.1      10.41.2.2
//! ```
//!
//! Each test names the fault it injects and asserts the outcome the design
//! promises, on counts (not on timings). The figures they print are the ones
//! in docs/reliability.md. One module per kind of fault; what they share is
//! in `helpers.rs`.

mod control;
mod fail_open;
mod floods;
mod forward;
mod helpers;
mod process;
mod replay;
mod scale;
