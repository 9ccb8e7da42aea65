//! Opt-in debug logs (aya-log), off unless the agent is started with
//! `--datapath-log LEVEL`.
//!
//! The level is aya-log's `AYA_LOG_LEVEL`, a read-only global the agent sets
//! when it loads the program. The verifier knows its value, so with logs off
//! (the default) it removes every log call as dead code; what stays is the
//! look at the level, a load and a jump per site. Each site is a BPF
//! function of its own, so that the stack of the function that logs does
//! not grow.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
    warn,
};
use migr_common::maps::{Reason, Verdict};

/// The frame of service `service_id` got `verdict` (`debug`).
#[inline(always)]
pub fn verdict(ctx: &XdpContext, service_id: u32, verdict: Verdict, len: u64) {
    if level_enabled(Level::Debug) {
        log_verdict(ctx, service_id, verdict, len);
    }
}

/// The frame of service `service_id` failed to park or forward (`warn`).
#[inline(always)]
pub fn failed(ctx: &XdpContext, service_id: u32, verdict: Verdict, reason: Reason) {
    if level_enabled(Level::Warn) {
        log_failure(ctx, service_id, verdict, reason);
    }
}

/// A replay run found no valid slot: its frame is dropped (`warn`).
#[inline(always)]
pub fn replay_failed(ctx: &XdpContext) {
    if level_enabled(Level::Warn) {
        log_replay_failure(ctx);
    }
}

#[inline(never)]
fn log_verdict(ctx: &XdpContext, service_id: u32, verdict: Verdict, len: u64) {
    debug!(
        ctx,
        "service {}: {} ({} bytes)",
        service_id,
        verdict.name(),
        len
    );
}

#[inline(never)]
fn log_failure(ctx: &XdpContext, service_id: u32, verdict: Verdict, reason: Reason) {
    warn!(
        ctx,
        "service {}: {}, {}",
        service_id,
        verdict.name(),
        reason.name()
    );
}

#[inline(never)]
fn log_replay_failure(ctx: &XdpContext) {
    warn!(
        ctx,
        "replay: no valid slot for this run; the frame is dropped"
    );
}
