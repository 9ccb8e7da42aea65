//! Replaying a service's stored frames: the backlog after a restore or an
//! abort, paced by the service's own sockets where the agent can watch them
//! (a local replay), else by a token bucket; and in order, in batches of
//! frames that arrived on the same interface.

use std::time::{Duration, Instant};

use anyhow::Result;
use migr_common::maps::{Action, REPLAY_BATCH, REPLAY_FRAME_MAX};
use migr_control::api::RuleProto;

use super::{
    Engine,
    lease::lease_until_ns,
    now_ms,
    pump::compact_if_consumed,
    retry::{AfterFailure, REPLAY_ATTEMPTS, after_failure},
    service::{Pace, Service, describe},
};
use crate::{
    datapath::{Datapath, replayable},
    socket_room::SocketWatch,
};

/// What replays frames through the datapath (the XDP program, run on live
/// frames); a trait so that the pump's unit tests replay into a fake.
pub(super) trait Replayer {
    /// Replays `frames` as arrived on `ifindex` with `action`; returns the
    /// runs that took place.
    fn replay_batch(&mut self, frames: &[&[u8]], ifindex: u32, action: Action) -> Result<u32>;
    /// Runs of the last batch that took place (after an error).
    fn replay_progress(&self) -> Result<u32>;
    /// The most frames one batch takes.
    fn capacity(&mut self) -> Result<u32> {
        Ok(REPLAY_BATCH)
    }
}

impl Replayer for Datapath {
    fn replay_batch(&mut self, frames: &[&[u8]], ifindex: u32, action: Action) -> Result<u32> {
        Datapath::replay_batch(self, frames, ifindex, action)
    }
    fn replay_progress(&self) -> Result<u32> {
        Datapath::replay_progress(self)
    }
    fn capacity(&mut self) -> Result<u32> {
        Datapath::replay_capacity(self)
    }
}

/// The most frames a FORWARD replay hands over in one batch. A batch runs
/// with bottom halves off, so a veth whose peer runs an XDP program (the
/// destination's link in every namespace topology) queues its frames in
/// its 256-frame ring until the batch ends: with batches of 256 the bench
/// lost 1 frame of 20,000 there, with 64 none. Local replays (PASS) go
/// straight into the stack and take whole batches.
const FORWARD_BATCH: u32 = 64;

/// The frames of one batch with `action`, for a replayer that takes `capacity`.
fn batch_limit(capacity: u32, action: Action) -> usize {
    let limit = match action {
        Action::Forward => capacity.min(FORWARD_BATCH),
        _ => capacity,
    };
    limit as usize
}

impl Engine {
    /// Replays up to `budget` stored frames of each service in the backlog
    /// stage; moves a service on when its store is empty. Returns whether it
    /// replayed anything.
    pub(super) fn replay_backlogs(&mut self, budget: usize) -> bool {
        let ids: Vec<u32> = self
            .services
            .iter()
            .filter(|(_, s)| s.machine.replaying_backlog())
            .map(|(id, _)| *id)
            .collect();
        let mut did = false;
        self.next_replay_at = None;
        for id in ids {
            let Some(svc) = self.services.get_mut(&id) else {
                continue;
            };
            let action = svc.machine.target_action();
            let rate = svc.spec.replay_rate.unwrap_or(self.cfg.replay_rate);
            if svc.replay_run.is_none() {
                // A new replay: watch the sockets of the process CRIU named now.
                svc.socket_watch = None;
                svc.start_replay_run(Instant::now());
            }
            let mut allowed = budget;
            // A local replay into sockets it can watch goes as fast as the
            // service reads; otherwise the token bucket paces it.
            let room = if action == Action::Pass {
                socket_room(svc)
            } else {
                usize::MAX
            };
            if room == 0 {
                // The service has not read what it got yet.
                svc.totals.replay.socket_waits += 1;
                let due = Instant::now() + SOCKET_FULL_RETRY;
                self.next_replay_at = Some(self.next_replay_at.map_or(due, |t| t.min(due)));
                continue;
            }
            allowed = allowed.min(room);
            let run = svc.replay_run.as_ref().expect("set above");
            if rate > 0 && room == usize::MAX {
                match run.pace(
                    Instant::now(),
                    svc.replay_handled(),
                    svc.totals.stored_frames,
                    self.cfg.replay_burst,
                    rate,
                ) {
                    Pace::Go(n) => allowed = allowed.min(n.try_into().unwrap_or(usize::MAX)),
                    Pace::WaitUntil(due) => {
                        self.next_replay_at = Some(self.next_replay_at.map_or(due, |t| t.min(due)));
                        continue;
                    }
                }
            }
            did |= replay_pending(&mut self.dp, svc, action, allowed) > 0;
            if let Some(retry) = svc.replay_retry {
                let due = retry.not_before;
                self.next_replay_at = Some(self.next_replay_at.map_or(due, |t| t.min(due)));
            }
            if svc.spool.pending() > 0 {
                continue;
            }
            let now = now_ms();
            let Some(dps) = svc.machine.backlog_drained(now) else {
                continue;
            };
            if action == Action::Pass {
                // Drops the last frames caused, for the record.
                socket_room(svc);
            }
            if let Some(run) = svc.replay_run.take() {
                let frames = svc.replay_handled() - run.replayed_before;
                let took = run.started.elapsed();
                let r = &mut svc.totals.replay;
                r.last_frames = frames;
                r.last_duration_us = took.as_micros() as u64;
                r.last_rate_fps = if took.as_secs_f64() > 0.0 {
                    frames as f64 / took.as_secs_f64()
                } else {
                    0.0
                };
                tracing::info!(service = %svc.spec.name, id, frames,
                    duration_ms = took.as_secs_f64() * 1e3,
                    rate_fps = r.last_rate_fps.round(),
                    action = action.name(),
                    "backlog replayed");
                let record = super::migrations::record(
                    &svc.machine,
                    &super::migrations::ReplayEnd {
                        now_ms: now,
                        now_ns: crate::datapath::monotonic_ns(),
                        first_parked_ns: svc.first_parked_ns.take(),
                        replay_ms: took.as_millis() as u64,
                        handled: frames,
                        replayed: r.replayed_frames - run.replayed_frames_before,
                    },
                );
                tracing::info!(service = %svc.spec.name, id, role = %record.role,
                    downtime_ms = ?record.downtime_ms, client_gap_ms = ?record.client_gap_ms,
                    "migration ended here");
                self.migrations.observe(&record);
                svc.last_migration = Some(record);
            }
            compact_if_consumed(svc, self.ring.consumer_pos());
            let entry = svc.entry(dps, lease_until_ns(self.cfg.lease));
            let name = svc.spec.name.clone();
            if let Err(e) = self.dp.set_service(id, &entry) {
                tracing::error!(service = %name, error = %format!("{e:#}"), "datapath update failed");
            }
            tracing::info!(service = %name, id, at_ms = now, datapath = %describe(dps),
                "replay settling: fresh frames pass through, held behind any unconsumed parked record");
            self.persist_or_log();
        }
        did
    }
}

/// How soon a replay waiting for a full socket looks again.
const SOCKET_FULL_RETRY: Duration = Duration::from_micros(250);

/// Frames the service's UDP sockets take now without overflowing
/// (`socket_room`), counting the drops seen since the last look;
/// `usize::MAX` when no restored process is known or none of its sockets
/// is the service's (TCP, or another namespace): the token bucket alone
/// paces the replay then.
fn socket_room(svc: &mut Service) -> usize {
    let Some(pid) = svc.init_pid else {
        return usize::MAX;
    };
    if svc.socket_watch.is_none() {
        let ports: Vec<u16> = svc
            .spec
            .rules
            .iter()
            .filter(|r| matches!(r.proto, RuleProto::Udp | RuleProto::Quic))
            .map(|r| r.addr.port())
            .collect();
        if ports.is_empty() {
            svc.init_pid = None;
            return usize::MAX;
        }
        match SocketWatch::start(pid, ports) {
            Ok(watch) => svc.socket_watch = Some(watch),
            Err(e) => {
                tracing::warn!(service = %svc.spec.name, pid, error = %e,
                    "cannot watch the service's sockets; the replay is paced by the token bucket alone");
                svc.init_pid = None;
                return usize::MAX;
            }
        }
    }
    let Some(watch) = svc.socket_watch.as_mut() else {
        return usize::MAX;
    };
    match watch.read() {
        Ok(state) => {
            let dropped = state.drops.saturating_sub(watch.drops_seen);
            watch.drops_seen = state.drops.max(watch.drops_seen);
            if dropped > 0 {
                svc.totals.replay.socket_drops += dropped;
                tracing::warn!(service = %svc.spec.name, dropped,
                    "the service's sockets dropped datagrams (receive buffer full) during the replay");
            }
            state.frames_that_fit()
        }
        Err(e) => {
            tracing::warn!(service = %svc.spec.name, error = %e,
                "the service's sockets cannot be read any more; the replay is paced by the token bucket alone");
            svc.socket_watch = None;
            svc.init_pid = None;
            usize::MAX
        }
    }
}

/// Replays up to `max` of the service's pending frames with `action`, in
/// order, in batches of frames that arrived on the same interface. Returns
/// how many it handled (replayed, or dropped as not replayable). A batch
/// that fails part-way stops it: the frame it stopped at waits for a retry
/// (`retry.rs`; see `Service::replay_retry`) unless it has failed too often.
pub(super) fn replay_pending(
    dp: &mut impl Replayer,
    svc: &mut Service,
    action: Action,
    max: usize,
) -> usize {
    if svc
        .replay_retry
        .is_some_and(|r| Instant::now() < r.not_before)
    {
        return 0;
    }
    let capacity = match dp.capacity() {
        Ok(capacity) => batch_limit(capacity, action),
        Err(e) => {
            tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"), "cannot size a replay batch; the replay waits");
            return 0;
        }
    };
    let mut handled = 0;
    while handled < max {
        let limit = (max - handled).min(capacity);
        let pending = svc.spool.pending_frames();
        let Some(first) = pending.first() else {
            break;
        };
        let (ifindex, first_len) = (first.ifindex, first.frame.len());
        let n = pending
            .iter()
            .take(limit)
            .take_while(|f| f.ifindex == ifindex && replayable(f.frame.len()))
            .count();
        if n == 0 {
            // Only a store written before such frames were passed instead
            // of parked holds one.
            let r = &mut svc.totals.replay;
            r.failed_frames += 1;
            if r.failed_frames.is_power_of_two() {
                tracing::warn!(service = %svc.spec.name, len = first_len, failed = r.failed_frames,
                    "a parked frame is too large to replay (live frames take at most {REPLAY_FRAME_MAX} bytes); dropped");
            }
            if !mark_done(svc, 1) {
                break;
            }
            handled += 1;
            continue;
        }
        let runs = match replay_batch(dp, svc, n, ifindex, action) {
            Some(runs) => runs,
            None => break,
        };
        if !mark_done(svc, runs) {
            break;
        }
        handled += runs;
        if runs == n {
            svc.replay_retry = None;
            continue;
        }
        // Stopped at the frame now first in line.
        let Some(at) = svc.spool.pending_frames().first().map(|f| f.ring_pos) else {
            break;
        };
        match after_failure(svc.replay_retry, at, Instant::now()) {
            AfterFailure::Retry(retry) => {
                svc.replay_retry = Some(retry);
                svc.totals.replay.retries += 1;
                break;
            }
            AfterFailure::GiveUp => {
                svc.replay_retry = None;
                let r = &mut svc.totals.replay;
                r.failed_frames += 1;
                tracing::warn!(service = %svc.spec.name, failed = r.failed_frames,
                    "a parked frame failed to replay {REPLAY_ATTEMPTS} times in a row; dropped");
                if !mark_done(svc, 1) {
                    break;
                }
                handled += 1;
            }
        }
    }
    handled
}

/// Replays the first `n` pending frames; returns the runs that took place
/// (`None` if the batch could not even be marked in the store).
fn replay_batch(
    dp: &mut impl Replayer,
    svc: &mut Service,
    n: usize,
    ifindex: u32,
    action: Action,
) -> Option<usize> {
    if let Err(e) = svc.spool.start_batch(n) {
        tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"), "cannot mark frames for replay");
        return None;
    }
    let batch: Vec<&[u8]> = svc.spool.pending_frames()[..n]
        .iter()
        .map(|f| f.frame.as_slice())
        .collect();
    let outcome = dp.replay_batch(&batch, ifindex, action);
    let runs = match &outcome {
        Ok(runs) => (*runs as usize).min(n),
        // The runs before the error took place.
        Err(_) => dp.replay_progress().map_or(0, |r| (r as usize).min(n)),
    };
    let bytes: u64 = batch[..runs].iter().map(|f| f.len() as u64).sum();
    let r = &mut svc.totals.replay;
    r.replayed_frames += runs as u64;
    r.replayed_bytes += bytes;
    if runs < n {
        let error = match outcome {
            Ok(runs) => format!("only {runs} of {n} runs took place"),
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(service = %svc.spec.name, error, replayed = runs, of = n,
            "a replay batch failed part-way; the rest is tried again");
    }
    Some(runs)
}

/// Records that the first `done` frames marked for replay are finished (a
/// batch's others go back to pending).
fn mark_done(svc: &mut Service, done: usize) -> bool {
    match svc.spool.finish_batch(done) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"), "cannot record replayed frames");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_batches_stay_within_a_veth_ring_and_local_ones_fill_the_slots() {
        assert_eq!(batch_limit(256, Action::Pass), 256);
        assert_eq!(batch_limit(256, Action::Forward), 64);
        // Slots pinned by an older agent.
        assert_eq!(batch_limit(64, Action::Pass), 64);
        assert_eq!(batch_limit(32, Action::Forward), 32);
    }
}
