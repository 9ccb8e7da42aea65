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
    service::{Pace, Service, describe, token_bucket},
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
}

impl Replayer for Datapath {
    fn replay_batch(&mut self, frames: &[&[u8]], ifindex: u32, action: Action) -> Result<u32> {
        Datapath::replay_batch(self, frames, ifindex, action)
    }
    fn replay_progress(&self) -> Result<u32> {
        Datapath::replay_progress(self)
    }
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
                let done = svc.replay_handled() - run.replayed_before;
                match token_bucket(
                    run.started,
                    Instant::now(),
                    done,
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
/// how many it handled (replayed, or dropped as not replayable).
pub(super) fn replay_pending(
    dp: &mut impl Replayer,
    svc: &mut Service,
    action: Action,
    max: usize,
) -> usize {
    let mut handled = 0;
    while handled < max {
        let limit = (max - handled).min(REPLAY_BATCH as usize);
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
        let marked = svc.spool.start_batch(n.max(1));
        if let Err(e) = marked {
            tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"), "cannot mark frames for replay");
            break;
        }
        let r = &mut svc.totals.replay;
        if n == 0 {
            r.failed_frames += 1;
            if r.failed_frames.is_power_of_two() {
                tracing::warn!(service = %svc.spec.name, len = first_len, failed = r.failed_frames,
                    "a parked frame is too large to replay (live frames take at most {REPLAY_FRAME_MAX} bytes); dropped");
            }
        } else {
            let batch: Vec<&[u8]> = svc.spool.pending_frames()[..n]
                .iter()
                .map(|f| f.frame.as_slice())
                .collect();
            let bytes: u64 = batch.iter().map(|f| f.len() as u64).sum();
            match dp.replay_batch(&batch, ifindex, action) {
                Ok(runs) if runs as usize >= n => {
                    r.replayed_frames += n as u64;
                    r.replayed_bytes += bytes;
                }
                outcome => {
                    // Interrupted or refused: the runs that took place are done.
                    let runs = match &outcome {
                        Ok(runs) => *runs as usize,
                        Err(_) => dp.replay_progress().unwrap_or(0) as usize,
                    };
                    r.replayed_frames += runs as u64;
                    r.failed_frames += (n - runs) as u64;
                    let error = match outcome {
                        Ok(runs) => format!("only {runs} of {n} runs took place"),
                        Err(e) => format!("{e:#}"),
                    };
                    tracing::warn!(service = %svc.spec.name, error, failed = r.failed_frames,
                        "parked frames could not be replayed; dropped");
                }
            }
        }
        if let Err(e) = svc.spool.finish_batch(n.max(1)) {
            tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"), "cannot record replayed frames");
            break;
        }
        handled += n.max(1);
    }
    handled
}
