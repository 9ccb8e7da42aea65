//! The agent's state across restarts: each service's spec, phase machine
//! and totals in `state.json`, saved after every change (at most once a
//! second during a replay); the parked frames themselves are in the stores
//! (`spool/`). A restarted agent reads both back and re-installs every
//! service's datapath entries.

use std::{os::fd::AsRawFd as _, path::Path, time::Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use migr_common::maps::{MAX_SERVICES, SERVICE_ACTIVE, ServiceEntry};
use migr_control::{
    api::ServiceSpec,
    phase::{PhaseMachine, ReplayStage},
};
use serde::{Deserialize, Serialize};

use super::{
    Engine,
    lease::lease_until_ns,
    service::{ResolvedForward, Service, Totals},
};
use crate::{datapath::replayable, netdev::if_index, spool::Spool, statefile::StateFile};

#[derive(Serialize, Deserialize)]
struct PersistedService {
    spec: ServiceSpec,
    forward: Option<ResolvedForward>,
    machine: PhaseMachine,
    totals: Totals,
    last_latency_us: Option<u64>,
    /// The store as it was when `totals` were saved.
    #[serde(default)]
    spool_mark: Option<SpoolMark>,
}

/// Where a service's store stood when the state was saved. The state is
/// saved at most once a second during a replay, the store's cursor on every
/// batch; a restarted agent counts the frames stored and replayed in
/// between from the store ([`catch_up_totals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SpoolMark {
    first_ring_pos: Option<u64>,
    len: u64,
    done: u64,
    /// `len` and `done` are the store's sequence numbers, which compaction
    /// keeps. An older agent's were indices into a file that compaction
    /// emptied (told apart by `first_ring_pos`).
    #[serde(default)]
    numbered: bool,
}

impl SpoolMark {
    /// Where `spool` stands now.
    fn of(spool: &Spool) -> Self {
        Self {
            first_ring_pos: spool.first_ring_pos(),
            len: spool.end_seq(),
            done: spool.done_seq(),
            numbered: true,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PersistedState {
    version: u32,
    services: Vec<PersistedService>,
}

const STATE_VERSION: u32 = 1;

/// "service #I (id N, "name")", from as much of a saved service as reads.
fn describe_saved(index: usize, value: &serde_json::Value) -> String {
    let spec = &value["spec"];
    match (spec["id"].as_u64(), spec["name"].as_str()) {
        (Some(id), Some(name)) => format!("saved service #{index} (id {id}, {name:?})"),
        (Some(id), None) => format!("saved service #{index} (id {id})"),
        _ => format!("saved service #{index}"),
    }
}

impl Engine {
    /// Re-reads the saved state and the stores, and re-installs every
    /// service's datapath entries (idempotent; needed if the pins were lost).
    /// What cannot be read back does not keep the agent down: a service
    /// that does not parse, or whose store cannot be opened, is left out (its
    /// datapath entry is switched off by `deactivate_strangers`: it fails
    /// open); a state that cannot be read at all is set aside. Either is
    /// logged and reported in `stats` (`recovery_problems`).
    pub(super) fn recover_state(&mut self, batch_runs: Option<u64>) -> Result<()> {
        let saved = match self.read_saved_services() {
            Ok(saved) => saved,
            Err(e) => return self.set_state_aside(e),
        };
        for (i, value) in saved.into_iter().enumerate() {
            let what = describe_saved(i, &value);
            let recovered = serde_json::from_value::<PersistedService>(value)
                .map_err(anyhow::Error::from)
                .and_then(|ps| self.recover_service(ps, batch_runs));
            if let Err(e) = recovered {
                let problem =
                    format!("{what} could not be recovered and is off (its frames pass): {e:#}");
                tracing::error!(problem = %problem, "recovering the saved state");
                self.recovery_problems.push(problem);
            }
        }
        Ok(())
    }

    /// The saved services, unparsed (`[]` if nothing was saved).
    fn read_saved_services(&mut self) -> Result<Vec<serde_json::Value>> {
        #[derive(Deserialize)]
        struct SavedState {
            version: u32,
            services: Vec<serde_json::Value>,
        }
        let Some(text) = self.state_file.load()? else {
            return Ok(Vec::new());
        };
        let state: SavedState = serde_json::from_slice(&text).context("parsing the saved state")?;
        if state.version != STATE_VERSION {
            bail!(
                "the saved state has version {}, this agent reads version {STATE_VERSION}",
                state.version
            );
        }
        Ok(state.services)
    }

    /// Moves unreadable state files out of the way (`NAME.unreadable`, kept
    /// for a post-mortem) so that the agent starts without services.
    fn set_state_aside(&mut self, why: anyhow::Error) -> Result<()> {
        let dir = self.cfg.state_dir.clone();
        for path in crate::statefile::all_paths(&dir) {
            if !path.exists() {
                continue;
            }
            let mut aside = path.clone().into_os_string();
            aside.push(".unreadable");
            std::fs::rename(&path, &aside).with_context(|| {
                format!("setting the unreadable state {} aside", path.display())
            })?;
        }
        self.state_file = StateFile::new(&dir);
        let problem = format!(
            "the saved state in {} could not be read ({why:#}); it was set aside as *.unreadable \
             and the agent started without services (their datapath entries are off: frames pass)",
            dir.display()
        );
        tracing::error!(problem = %problem, "recovering the saved state");
        self.recovery_problems.push(problem);
        Ok(())
    }

    fn recover_service(&mut self, ps: PersistedService, batch_runs: Option<u64>) -> Result<()> {
        let id = ps.spec.id;
        let (spool, recovered) = Spool::open(&self.spool_dir(), id, self.ring.map_id, batch_runs)?;
        let mut svc = Service::new(
            ps.spec,
            ps.forward,
            ps.machine,
            spool,
            self.cfg.default_limit,
        );
        svc.totals = ps.totals;
        svc.last_latency_us = ps.last_latency_us;
        if let Some(mark) = ps.spool_mark {
            catch_up_totals(&mut svc, mark, recovered.uncertain);
        }
        svc.totals.replay.uncertain_frames += recovered.uncertain;
        if svc.machine.replay == Some(ReplayStage::Backlog) {
            svc.start_replay_run(Instant::now());
        }
        // The interface may have been re-created: resolve its index again.
        if let (Some(fwd), Some(resolved)) = (&svc.spec.forward, svc.forward.as_mut())
            && let Ok(ifindex) = if_index(&fwd.iface)
        {
            resolved.ifindex = ifindex;
        }
        tracing::info!(
            service = %svc.spec.name, id,
            state = svc.machine.state.name(),
            stored = recovered.frames, pending = recovered.pending,
            torn_bytes = recovered.torn_bytes, uncertain = recovered.uncertain,
            upgraded = recovered.upgraded,
            "service recovered"
        );
        if recovered.corrupt_bytes > 0 {
            tracing::error!(service = %svc.spec.name, id, corrupt_bytes = recovered.corrupt_bytes,
                "the parked-frame store was damaged: cut at its first bad record; frames in the cut part that the ring no longer holds are lost");
        }
        // One service that cannot be installed (its forward interface
        // vanished while no agent ran) must not keep the others, or the
        // agent, down: it fails open and says why.
        if let Err(e) = self.install(&svc) {
            let why = format!("re-installing its datapath entries after a restart failed: {e:#}");
            tracing::error!(service = %svc.spec.name, id, error = %why,
                "service faulted: its frames pass until it is removed and added again");
            svc.fault = Some(why);
            self.dp
                .set_service(
                    id,
                    &svc.entry(svc.machine.datapath(), lease_until_ns(self.cfg.lease)),
                )
                .map_err(|e| anyhow!("switching faulted service {id} off: {e:#}"))?;
        }
        self.services.insert(id, svc);
        Ok(())
    }

    /// Active datapath entries this agent has no state for (the state was
    /// lost, but the pins were not) would park or forward with nobody to
    /// replay: they are switched off (PASS), failing open.
    pub(super) fn deactivate_strangers(&mut self) -> Result<()> {
        for id in 1..MAX_SERVICES {
            if self.services.contains_key(&id) {
                continue;
            }
            let entry = self.dp.service(id)?;
            if entry.flags & SERVICE_ACTIVE != 0 {
                tracing::warn!(
                    id,
                    action = entry.action,
                    "the datapath has a service this agent has no state for; switching it off (PASS)"
                );
                self.dp.set_service(id, &ServiceEntry::default())?;
            }
        }
        Ok(())
    }

    pub(super) fn persist(&mut self) -> Result<()> {
        let state = PersistedState {
            version: STATE_VERSION,
            services: self
                .services
                .values()
                .map(|s| PersistedService {
                    spec: s.spec.clone(),
                    forward: s.forward,
                    machine: s.machine.clone(),
                    totals: s.totals.clone(),
                    last_latency_us: s.last_latency_us,
                    spool_mark: Some(SpoolMark::of(&s.spool)),
                })
                .collect(),
        };
        self.state_file.save(&serde_json::to_vec(&state)?)?;
        self.dirty = false;
        self.last_persist = Instant::now();
        Ok(())
    }

    pub(super) fn persist_or_log(&mut self) {
        if let Err(e) = self.persist() {
            tracing::error!(error = %format!("{e:#}"), "could not save the agent state");
        }
    }
}

/// Adds to the saved counters what a killed agent stored and replayed after
/// its last save, as its store records it: frames appended since (stored),
/// and frames the cursor passed since (replayed, or failed if too large to
/// replay), less the `uncertain` ones of an interrupted batch. Frames that
/// were also compacted away since count without their sizes (as replayed).
/// An older agent's mark whose store was emptied in between (all replayed,
/// then compacted) counts the frames pending at the save as replayed.
fn catch_up_totals(svc: &mut Service, mark: SpoolMark, uncertain: u64) {
    let (end, done) = (svc.spool.end_seq(), svc.spool.done_seq());
    let same_numbers =
        mark.numbered || (svc.spool.first_ring_pos() == mark.first_ring_pos && end >= mark.len);
    let (stored_from, replayed_from, earlier) = if same_numbers {
        (mark.len, mark.done.min(done), 0)
    } else {
        (0, 0, mark.len.saturating_sub(mark.done))
    };
    let t = &mut svc.totals;
    let (gone, stored) = svc.spool.frames_between(stored_from, end);
    t.stored_frames += gone + stored.len() as u64;
    t.stored_bytes += stored.iter().map(|f| f.frame.len() as u64).sum::<u64>();
    // The uncertain frames are the last ones passed, never compacted away.
    let (gone, passed) = svc.spool.frames_between(replayed_from, done);
    let certain = passed.len().saturating_sub(uncertain as usize);
    for f in &passed[..certain] {
        if replayable(f.frame.len()) {
            t.replay.replayed_frames += 1;
            t.replay.replayed_bytes += f.frame.len() as u64;
        } else {
            t.replay.failed_frames += 1;
        }
    }
    t.replay.replayed_frames += earlier + gone;
}

pub(super) fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another migr-agent uses the state directory {} ({})",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use migr_control::{
        api::ParkLimit,
        phase::{PhaseMachine, Timing},
    };

    use super::*;
    use crate::{engine::service::testing::Scratch, spool::StoredFrame};

    fn frames(from: u64, n: u64) -> Vec<StoredFrame> {
        (from..from + n)
            .map(|pos| StoredFrame {
                ring_pos: pos * 100,
                ifindex: 2,
                timestamp_ns: pos,
                frame: vec![0; 100],
            })
            .collect()
    }

    fn replay(svc: &mut Service, n: usize) {
        svc.spool.start_batch(n).unwrap();
        svc.spool.finish_batch(n).unwrap();
    }

    fn idle_service(scratch: &Scratch) -> Service {
        let limit = ParkLimit {
            frames: 100,
            bytes: 1 << 20,
        };
        scratch.service(None, PhaseMachine::new(Timing::default(), 0), limit)
    }

    /// A killed agent saved its totals with 2 frames stored and 1 replayed,
    /// then stored 3 more and replayed 2 more: the restarted agent counts the
    /// difference from the store, less the frames of an interrupted batch.
    #[test]
    fn a_restart_counts_what_was_stored_and_replayed_after_the_last_save() {
        let scratch = Scratch::new("catch-up");
        let mut svc = idle_service(&scratch);
        svc.spool.append(frames(0, 2)).unwrap();
        replay(&mut svc, 1);
        let mark = SpoolMark::of(&svc.spool);
        svc.spool.append(frames(2, 3)).unwrap();
        replay(&mut svc, 2);
        catch_up_totals(&mut svc, mark, 0);
        assert_eq!(
            (svc.totals.stored_frames, svc.totals.stored_bytes),
            (3, 300)
        );
        assert_eq!(svc.totals.replay.replayed_frames, 2);

        svc.totals = Totals::default();
        catch_up_totals(&mut svc, mark, 1);
        assert_eq!(
            svc.totals.replay.replayed_frames, 1,
            "one of the two uncertain"
        );
    }

    /// An older agent's mark: its store was emptied after the save (all
    /// replayed, compacted), so the frames pending at the save count as
    /// replayed.
    #[test]
    fn a_compacted_store_counts_the_pending_frames_as_replayed() {
        let scratch = Scratch::new("catch-up-compacted");
        let mut svc = idle_service(&scratch);
        let mark = SpoolMark {
            first_ring_pos: Some(0),
            len: 5,
            done: 1,
            numbered: false,
        };
        catch_up_totals(&mut svc, mark, 0);
        assert_eq!(svc.totals.replay.replayed_frames, 4);
        assert_eq!(svc.totals.stored_frames, 0);
    }
    /// Frames stored, replayed and compacted away between the save and a
    /// kill still count (without their sizes, which are gone).
    #[test]
    fn a_restart_counts_frames_compacted_away_since_the_save() {
        let scratch = Scratch::new("catch-up-partial");
        let mut svc = idle_service(&scratch);
        svc.spool.append(frames(0, 2)).unwrap();
        replay(&mut svc, 1);
        let mark = SpoolMark::of(&svc.spool);
        svc.spool.append(frames(2, 20)).unwrap();
        replay(&mut svc, 15);
        svc.spool.compact().unwrap(); // frames 0..16 gone
        svc.spool.append(frames(22, 2)).unwrap();
        replay(&mut svc, 1);
        // Killed, restarted.
        let (spool, recovered) = Spool::open(&scratch.0, 1, 9, None).unwrap();
        svc.spool = spool;
        catch_up_totals(&mut svc, mark, recovered.uncertain);
        let t = &svc.totals;
        assert_eq!((t.stored_frames, t.stored_bytes), (22, 8 * 100));
        assert_eq!(
            (t.replay.replayed_frames, t.replay.replayed_bytes),
            (16, 100)
        );
    }
}
