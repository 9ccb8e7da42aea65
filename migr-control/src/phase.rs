//! The per-service migration phase machine: pure, no I/O, no clock.
//!
//! The agent feeds it phase commands (from `migrctl phase` or the CRIU hook),
//! "the parked backlog is replayed" notices and clock ticks, each with the
//! current time in milliseconds since the Unix epoch. It answers with the
//! datapath state the service must have ([`DatapathState`]) and what to do
//! with the parked frames. Everything it decides is therefore testable
//! deterministically, and the daemon around it stays a thin shell.
//!
//! # States
//!
//! | state | side | datapath | entered by |
//! | --- | --- | --- | --- |
//! | `idle` | any | PASS | `service add`; `abort` of a prepared migration |
//! | `prepared` | both | PASS | `prepare` |
//! | `frozen` | source | PARK | `freeze` |
//! | `restoring` | destination | PARK (early arrivals) | `restoring` |
//! | `restored` (source) | source | FORWARD, after the backlog is replayed to the destination | `restored` after `freeze` |
//! | `restored` (destination) | destination | PASS, after the backlog is replayed locally | `restored` after `restoring` |
//! | `draining` | source | FORWARD until the drain time has passed | `done` on a restored source |
//! | `done` | any | PASS | the drain time passed; `done` on a destination |
//! | `aborted` | any | PASS, after the backlog is replayed locally | `abort` of a frozen/restoring service |
//!
//! # Replay stages
//!
//! Entering `restored` or `aborted` starts a replay of the parked frames:
//!
//! 1. **backlog**: the datapath keeps PARKing fresh frames (they queue behind
//!    the older ones); the agent replays the stored frames with the target
//!    action (FORWARD or PASS) through the XDP program. When nothing is left
//!    to replay, the agent reports [`PhaseMachine::backlog_drained`].
//! 2. **settling** (`settle_ms`): the datapath applies the target action with
//!    `SERVICE_HOLD`: a fresh frame is still parked while the park ring holds
//!    unconsumed records, and the agent replays such records immediately and
//!    consumes them only afterwards. No fresh frame overtakes a parked one.
//! 3. done: the target action alone.

use migr_common::maps::Action;
use serde::{Deserialize, Serialize};

/// A phase command, as operators and CRIU hooks send them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum PhaseCommand {
    Prepare,
    Freeze,
    Restoring,
    Restored,
    Done,
    Abort,
}

impl PhaseCommand {
    pub const ALL: [PhaseCommand; 6] = [
        Self::Prepare,
        Self::Freeze,
        Self::Restoring,
        Self::Restored,
        Self::Done,
        Self::Abort,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Freeze => "freeze",
            Self::Restoring => "restoring",
            Self::Restored => "restored",
            Self::Done => "done",
            Self::Abort => "abort",
        }
    }
}

impl std::str::FromStr for PhaseCommand {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown phase {s:?}: expected one of {}",
                    Self::ALL.map(|p| p.name()).join(", ")
                )
            })
    }
}

/// Which end of a migration this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Source,
    Destination,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "source" => Ok(Self::Source),
            "destination" => Ok(Self::Destination),
            other => Err(format!(
                "unknown role {other:?}: expected source or destination"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Idle,
    Prepared,
    Frozen,
    Restoring,
    Restored,
    Draining,
    Done,
    Aborted,
}

impl State {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Prepared => "prepared",
            Self::Frozen => "frozen",
            Self::Restoring => "restoring",
            Self::Restored => "restored",
            Self::Draining => "draining",
            Self::Done => "done",
            Self::Aborted => "aborted",
        }
    }
}

/// Where a replay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "stage")]
pub enum ReplayStage {
    /// Fresh frames are parked; the stored ones are being replayed.
    Backlog,
    /// The target action applies, with `SERVICE_HOLD`, until `until_ms`.
    Settling { until_ms: u64 },
}

impl ReplayStage {
    /// The stage's name in status reports.
    pub fn name(self) -> &'static str {
        match self {
            ReplayStage::Backlog => "backlog",
            ReplayStage::Settling { .. } => "settling",
        }
    }
}

/// What the datapath must do with the service's fresh frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathState {
    pub action: Action,
    /// `SERVICE_HOLD`.
    pub hold: bool,
}

impl DatapathState {
    /// Do frames wait for the agent (parked, or held behind its backlog)?
    pub fn waits_for_agent(&self) -> bool {
        self.action == Action::Park || self.hold
    }
}

/// One transition, kept for the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The state entered (or `replay:settling`, `replay:done`).
    pub what: String,
    /// What caused it: a phase command, `backlog-drained`, `tick`.
    pub cause: String,
}

/// Timing knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// How long a source keeps forwarding after `done`.
    pub drain_ms: u64,
    /// How long `SERVICE_HOLD` stays on after the backlog is replayed.
    pub settle_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            drain_ms: 2_000,
            settle_ms: 250,
        }
    }
}

/// Why a command was refused. The machine is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseError {
    pub message: String,
}

impl std::fmt::Display for PhaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PhaseError {}

/// What a successful command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub from: State,
    pub to: State,
    /// The command changed nothing (already in that phase).
    pub unchanged: bool,
    /// The datapath state to write (also when unchanged, for idempotence).
    pub datapath: DatapathState,
    /// A replay of the stored frames starts, with this action.
    pub replay: Option<Action>,
}

/// The phase machine of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseMachine {
    pub state: State,
    /// Known once the node has been frozen (source) or restoring (destination),
    /// or given with `restored`.
    pub role: Option<Role>,
    pub replay: Option<ReplayStage>,
    /// `draining`: forwarding stops at this time (once the backlog is replayed).
    pub drain_until_ms: Option<u64>,
    pub timing: Timing,
    /// The most recent transitions, oldest first (bounded).
    pub timeline: Vec<TimelineEntry>,
}

/// How many timeline entries a machine keeps.
pub const TIMELINE_LEN: usize = 64;

impl PhaseMachine {
    pub fn new(timing: Timing, now_ms: u64) -> Self {
        let mut m = Self {
            state: State::Idle,
            role: None,
            replay: None,
            drain_until_ms: None,
            timing,
            timeline: Vec::new(),
        };
        m.record(now_ms, "idle", "service add");
        m
    }

    fn record(&mut self, at_ms: u64, what: &str, cause: &str) {
        if self.timeline.len() == TIMELINE_LEN {
            self.timeline.remove(0);
        }
        self.timeline.push(TimelineEntry {
            at_ms,
            what: what.to_string(),
            cause: cause.to_string(),
        });
    }

    /// The action replayed frames get, and that applies once a replay is over.
    pub fn target_action(&self) -> Action {
        match self.state {
            State::Restored if self.role == Some(Role::Source) => Action::Forward,
            State::Draining => Action::Forward,
            _ => Action::Pass,
        }
    }

    /// Fresh frames are being parked (the agent stores them and waits).
    pub fn parking(&self) -> bool {
        self.datapath().action == Action::Park
    }

    /// The stored backlog is to be replayed now: the replay has begun and
    /// the container is not down again (a new freeze parks on top of it).
    pub fn replaying_backlog(&self) -> bool {
        self.replay == Some(ReplayStage::Backlog)
            && !matches!(self.state, State::Frozen | State::Restoring)
    }

    /// The datapath state this machine wants now.
    pub fn datapath(&self) -> DatapathState {
        match (self.state, self.replay) {
            (State::Frozen | State::Restoring, _) | (_, Some(ReplayStage::Backlog)) => {
                DatapathState {
                    action: Action::Park,
                    hold: false,
                }
            }
            (_, Some(ReplayStage::Settling { .. })) => DatapathState {
                action: self.target_action(),
                hold: true,
            },
            (_, None) => DatapathState {
                action: self.target_action(),
                hold: false,
            },
        }
    }

    /// Applies a phase command. `role` disambiguates `restored` when the
    /// machine cannot tell which end it is; `drain_ms` overrides the drain
    /// time of `done`.
    pub fn command(
        &mut self,
        cmd: PhaseCommand,
        role: Option<Role>,
        drain_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Outcome, PhaseError> {
        let from = self.state;
        let err = |message: String| Err(PhaseError { message });
        let idle_like = matches!(
            from,
            State::Idle | State::Prepared | State::Done | State::Aborted
        );
        if let Some(r) = role {
            let implied = match from {
                State::Frozen => Some(Role::Source),
                State::Restoring => Some(Role::Destination),
                State::Restored | State::Draining => self.role,
                _ => None,
            };
            if cmd == PhaseCommand::Restored && implied.is_some_and(|i| i != r) {
                return err(format!(
                    "the service is {} here, so this node is the {}, not the {}",
                    from.name(),
                    implied.map(Role::name).unwrap_or("?"),
                    r.name()
                ));
            }
        }
        let mut replay = None;
        let next: Option<State> = match cmd {
            PhaseCommand::Prepare => match from {
                State::Prepared => None,
                _ if idle_like => Some(State::Prepared),
                _ => {
                    return err(format!(
                        "cannot prepare: a migration is in progress (state {})",
                        from.name()
                    ));
                }
            },
            PhaseCommand::Freeze => match from {
                State::Frozen => None,
                State::Restored if self.role == Some(Role::Destination) => Some(State::Frozen),
                _ if idle_like => Some(State::Frozen),
                State::Restoring => {
                    return err(
                        "cannot freeze: this node is the destination of a migration in progress (restoring); freeze applies to the source"
                            .into(),
                    );
                }
                _ => {
                    return err(format!(
                        "cannot freeze: the service has left this node (state {})",
                        from.name()
                    ));
                }
            },
            PhaseCommand::Restoring => match from {
                State::Restoring => None,
                _ if idle_like => Some(State::Restoring),
                State::Frozen => {
                    return err(
                        "cannot enter restoring: this node is the source of a migration in progress (frozen); restoring applies to the destination"
                            .into(),
                    );
                }
                _ => {
                    return err(format!(
                        "cannot enter restoring: the service already runs (state {})",
                        from.name()
                    ));
                }
            },
            PhaseCommand::Restored => match from {
                State::Restored | State::Draining => None,
                State::Frozen => {
                    self.role = Some(Role::Source);
                    replay = Some(Action::Forward);
                    Some(State::Restored)
                }
                State::Restoring => {
                    self.role = Some(Role::Destination);
                    replay = Some(Action::Pass);
                    Some(State::Restored)
                }
                _ => match role {
                    Some(r) => {
                        self.role = Some(r);
                        replay = Some(match r {
                            Role::Source => Action::Forward,
                            Role::Destination => Action::Pass,
                        });
                        Some(State::Restored)
                    }
                    None => {
                        return err(format!(
                            "restored from state {} is ambiguous: give the role (source or destination)",
                            from.name()
                        ));
                    }
                },
            },
            PhaseCommand::Done => match from {
                State::Draining | State::Done => None,
                State::Restored if self.role == Some(Role::Source) => {
                    let drain = drain_ms.unwrap_or(self.timing.drain_ms);
                    self.drain_until_ms = Some(now_ms.saturating_add(drain));
                    Some(State::Draining)
                }
                State::Restored | State::Aborted => Some(State::Done),
                State::Frozen | State::Restoring => {
                    return err(format!(
                        "cannot finish: the service is {} and not restored yet; use abort to cancel",
                        from.name()
                    ));
                }
                State::Idle | State::Prepared => {
                    return err(format!(
                        "cannot finish: no migration in progress (state {})",
                        from.name()
                    ));
                }
            },
            PhaseCommand::Abort => match from {
                State::Idle | State::Done | State::Aborted => None,
                State::Prepared => Some(State::Idle),
                State::Frozen | State::Restoring => {
                    replay = Some(Action::Pass);
                    Some(State::Aborted)
                }
                State::Restored | State::Draining => {
                    return err(format!(
                        "cannot abort: the service is {} and runs at the destination; abort is no longer possible",
                        from.name()
                    ));
                }
            },
        };
        let Some(to) = next else {
            return Ok(Outcome {
                from,
                to: from,
                unchanged: true,
                datapath: self.datapath(),
                replay: None,
            });
        };
        self.state = to;
        match to {
            State::Frozen | State::Restoring => {
                // Parking again: a replay in progress pauses; its frames stay
                // stored, ahead of the new ones, for the next replay.
                self.replay = None;
                self.role = Some(if to == State::Frozen {
                    Role::Source
                } else {
                    Role::Destination
                });
            }
            State::Restored | State::Aborted => self.replay = Some(ReplayStage::Backlog),
            State::Done | State::Idle => self.drain_until_ms = None,
            _ => {}
        }
        self.record(now_ms, to.name(), cmd.name());
        Ok(Outcome {
            from,
            to,
            unchanged: false,
            datapath: self.datapath(),
            replay,
        })
    }

    /// The agent has replayed every stored frame (none is left). Returns the
    /// new datapath state if it changed.
    pub fn backlog_drained(&mut self, now_ms: u64) -> Option<DatapathState> {
        if self.replay != Some(ReplayStage::Backlog) || self.parking_by_state() {
            return None;
        }
        self.replay = Some(ReplayStage::Settling {
            until_ms: now_ms.saturating_add(self.timing.settle_ms),
        });
        self.record(now_ms, "replay:settling", "backlog-drained");
        Some(self.datapath())
    }

    fn parking_by_state(&self) -> bool {
        matches!(self.state, State::Frozen | State::Restoring)
    }

    /// Advances timers. `all_delivered`: no parked frame of this service is
    /// left to deliver (the park ring is drained and its store holds none);
    /// the hold of the settling stage ends only then, as well as after its
    /// time, so that no fresh frame overtakes a parked one. Returns the new
    /// datapath state if it changed.
    pub fn tick(&mut self, now_ms: u64, all_delivered: bool) -> Option<DatapathState> {
        let before = self.datapath();
        if let Some(ReplayStage::Settling { until_ms }) = self.replay
            && now_ms >= until_ms
            && all_delivered
        {
            self.replay = None;
            self.record(now_ms, "replay:done", "tick");
        }
        if self.state == State::Draining
            && self.replay.is_none()
            && self.drain_until_ms.is_some_and(|t| now_ms >= t)
        {
            self.state = State::Done;
            self.drain_until_ms = None;
            self.record(now_ms, "done", "drain time passed");
        }
        let after = self.datapath();
        (after != before).then_some(after)
    }

    /// The earliest time [`Self::tick`] has something to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let settle = match self.replay {
            Some(ReplayStage::Settling { until_ms }) => Some(until_ms),
            _ => None,
        };
        let drain = (self.state == State::Draining)
            .then_some(self.drain_until_ms)
            .flatten();
        match (settle, drain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the service last entered `state`, if it is in the timeline.
    pub fn entered_at(&self, what: &str) -> Option<u64> {
        self.timeline
            .iter()
            .rev()
            .find(|e| e.what == what)
            .map(|e| e.at_ms)
    }
}

/// What a CRIU action means for a service, given its current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CriuDecision {
    Phase(PhaseCommand),
    /// Nothing to do for this action (in this state).
    Ignore(&'static str),
}

/// The CRIU actions (`CRTOOLS_SCRIPT_ACTION`) migr knows about.
pub const CRIU_ACTIONS: [&str; 13] = [
    "pre-dump",
    "network-lock",
    "post-dump",
    "network-unlock",
    "pre-restore",
    "setup-namespaces",
    "post-setup-namespaces",
    "post-restore",
    "pre-resume",
    "post-resume",
    "orphan-pts-master",
    "status-ready",
    "query-ext-files",
];

/// Maps a CRIU action to a phase (see docs/agent.md for the reasoning):
///
/// - `pre-dump` (first action of `criu dump`, before the tasks are frozen) and
///   `network-lock` → `freeze`: park from the last moment the service can
///   still answer.
/// - `network-unlock` while frozen → `abort`: on the dump side CRIU only
///   unlocks the network when the dumped tasks keep running here (the dump
///   failed, a post-dump script refused, or `--leave-running`).
/// - `pre-restore` (first action of `criu restore`) → `restoring`; so does
///   `setup-namespaces`, the first restore action under a container runtime
///   at which the hook can tell the container (`CRTOOLS_INIT_PID` is empty
///   at `pre-restore`).
/// - `post-resume` (the restored tasks run, the network lock is gone) → `restored`.
/// - everything else: nothing.
pub fn criu_decision(action: &str, state: State) -> CriuDecision {
    match action {
        "pre-dump" | "network-lock" => CriuDecision::Phase(PhaseCommand::Freeze),
        "network-unlock" if state == State::Frozen => CriuDecision::Phase(PhaseCommand::Abort),
        "network-unlock" => CriuDecision::Ignore(
            "network-unlock on the restore side: restored follows at post-resume",
        ),
        "pre-restore" => CriuDecision::Phase(PhaseCommand::Restoring),
        "setup-namespaces" if state == State::Restoring => {
            CriuDecision::Ignore("already restoring")
        }
        "setup-namespaces" => CriuDecision::Phase(PhaseCommand::Restoring),
        "post-resume" => CriuDecision::Phase(PhaseCommand::Restored),
        "post-dump" => CriuDecision::Ignore(
            "post-dump: the service stays frozen until the orchestrator reports restored (or abort)",
        ),
        "post-restore" | "pre-resume" => CriuDecision::Ignore(
            "the restored tasks do not run yet; restored follows at post-resume",
        ),
        _ => CriuDecision::Ignore("not a migration phase"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> PhaseMachine {
        PhaseMachine::new(
            Timing {
                drain_ms: 1000,
                settle_ms: 100,
            },
            0,
        )
    }

    fn dp(action: Action, hold: bool) -> DatapathState {
        DatapathState { action, hold }
    }

    #[test]
    fn source_cycle_parks_forwards_and_drains() {
        let mut m = machine();
        assert_eq!(m.datapath(), dp(Action::Pass, false));
        m.command(PhaseCommand::Prepare, None, None, 1).unwrap();
        let o = m.command(PhaseCommand::Freeze, None, None, 2).unwrap();
        assert_eq!((o.from, o.to), (State::Prepared, State::Frozen));
        assert_eq!(o.datapath, dp(Action::Park, false));
        let o = m.command(PhaseCommand::Restored, None, None, 3).unwrap();
        assert_eq!(o.replay, Some(Action::Forward));
        // The backlog is replayed while fresh frames are still parked.
        assert_eq!(o.datapath, dp(Action::Park, false));
        assert!(m.parking());
        assert_eq!(m.target_action(), Action::Forward);
        assert_eq!(m.backlog_drained(4), Some(dp(Action::Forward, true)));
        assert_eq!(m.backlog_drained(4), None, "only once");
        assert_eq!(m.next_deadline_ms(), Some(104));
        assert_eq!(m.tick(103, true), None);
        assert_eq!(
            m.tick(104, false),
            None,
            "held on while parked frames are still to be delivered"
        );
        assert_eq!(m.tick(104, true), Some(dp(Action::Forward, false)));
        let o = m.command(PhaseCommand::Done, None, None, 200).unwrap();
        assert_eq!(o.to, State::Draining);
        assert_eq!(o.datapath, dp(Action::Forward, false));
        assert_eq!(m.next_deadline_ms(), Some(1200));
        assert_eq!(m.tick(1199, true), None);
        assert_eq!(m.tick(1200, true), Some(dp(Action::Pass, false)));
        assert_eq!(m.state, State::Done);
        let names: Vec<&str> = m.timeline.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            names,
            [
                "idle",
                "prepared",
                "frozen",
                "restored",
                "replay:settling",
                "replay:done",
                "draining",
                "done"
            ]
        );
        assert_eq!(m.entered_at("frozen"), Some(2));
    }

    #[test]
    fn destination_cycle_parks_early_arrivals_and_passes() {
        let mut m = machine();
        let o = m.command(PhaseCommand::Restoring, None, None, 1).unwrap();
        assert_eq!(o.datapath, dp(Action::Park, false));
        let o = m.command(PhaseCommand::Restored, None, None, 2).unwrap();
        assert_eq!(o.replay, Some(Action::Pass));
        assert_eq!(m.role, Some(Role::Destination));
        assert_eq!(m.backlog_drained(3), Some(dp(Action::Pass, true)));
        assert_eq!(m.tick(103, true), Some(dp(Action::Pass, false)));
        let o = m.command(PhaseCommand::Done, None, None, 104).unwrap();
        assert_eq!(o.to, State::Done);
        // The destination may become the next source.
        let mut m = machine();
        m.command(PhaseCommand::Restoring, None, None, 1).unwrap();
        m.command(PhaseCommand::Restored, None, None, 2).unwrap();
        let o = m.command(PhaseCommand::Freeze, None, None, 3).unwrap();
        assert_eq!((o.to, m.role), (State::Frozen, Some(Role::Source)));
    }

    #[test]
    fn abort_passes_and_replays_locally() {
        let mut m = machine();
        m.command(PhaseCommand::Freeze, None, None, 1).unwrap();
        let o = m.command(PhaseCommand::Abort, None, None, 2).unwrap();
        assert_eq!(o.to, State::Aborted);
        assert_eq!(o.replay, Some(Action::Pass));
        assert_eq!(o.datapath, dp(Action::Park, false));
        assert_eq!(m.backlog_drained(3), Some(dp(Action::Pass, true)));
        // Abort of a merely prepared migration returns to idle without a replay.
        let mut m = machine();
        m.command(PhaseCommand::Prepare, None, None, 1).unwrap();
        let o = m.command(PhaseCommand::Abort, None, None, 2).unwrap();
        assert_eq!((o.to, o.replay), (State::Idle, None));
    }

    #[test]
    fn repeated_commands_are_idempotent() {
        let mut m = machine();
        m.command(PhaseCommand::Freeze, None, None, 1).unwrap();
        let before = m.clone();
        let o = m.command(PhaseCommand::Freeze, None, None, 2).unwrap();
        assert!(o.unchanged);
        assert_eq!(m, before);
    }

    #[test]
    fn invalid_transitions_are_refused_without_a_change() {
        let cases: &[(&[PhaseCommand], PhaseCommand, &str)] = &[
            (&[PhaseCommand::Freeze], PhaseCommand::Restoring, "source"),
            (
                &[PhaseCommand::Restoring],
                PhaseCommand::Freeze,
                "destination",
            ),
            (
                &[PhaseCommand::Freeze, PhaseCommand::Restored],
                PhaseCommand::Abort,
                "no longer possible",
            ),
            (&[PhaseCommand::Freeze], PhaseCommand::Done, "not restored"),
            (&[], PhaseCommand::Done, "no migration"),
            (&[], PhaseCommand::Restored, "ambiguous"),
            (
                &[PhaseCommand::Freeze],
                PhaseCommand::Prepare,
                "in progress",
            ),
            (
                &[PhaseCommand::Freeze, PhaseCommand::Restored],
                PhaseCommand::Freeze,
                "left this node",
            ),
        ];
        for (setup, cmd, needle) in cases {
            let mut m = machine();
            for c in *setup {
                m.command(*c, None, None, 1).unwrap();
            }
            let before = m.clone();
            let e = m.command(*cmd, None, None, 2).unwrap_err();
            assert!(
                e.message.contains(needle),
                "{setup:?} then {cmd:?}: {e} should mention {needle:?}"
            );
            assert_eq!(m, before, "a refused command changes nothing");
        }
    }

    #[test]
    fn restored_needs_or_checks_the_role() {
        let mut m = machine();
        let o = m
            .command(PhaseCommand::Restored, Some(Role::Source), None, 1)
            .unwrap();
        assert_eq!(o.replay, Some(Action::Forward));
        let mut m = machine();
        m.command(PhaseCommand::Freeze, None, None, 1).unwrap();
        let e = m
            .command(PhaseCommand::Restored, Some(Role::Destination), None, 2)
            .unwrap_err();
        assert!(e.message.contains("source"), "{e}");
    }

    #[test]
    fn freezing_again_pauses_a_replay() {
        let mut m = machine();
        m.command(PhaseCommand::Freeze, None, None, 1).unwrap();
        m.command(PhaseCommand::Abort, None, None, 2).unwrap();
        assert_eq!(m.replay, Some(ReplayStage::Backlog));
        m.command(PhaseCommand::Freeze, None, None, 3).unwrap();
        assert_eq!(m.replay, None);
        assert_eq!(m.datapath(), dp(Action::Park, false));
        assert_eq!(m.backlog_drained(4), None, "no replay while frozen");
    }

    #[test]
    fn draining_waits_for_the_backlog() {
        let mut m = machine();
        m.command(PhaseCommand::Freeze, None, None, 1).unwrap();
        m.command(PhaseCommand::Restored, None, None, 2).unwrap();
        m.command(PhaseCommand::Done, None, Some(10), 3).unwrap();
        assert_eq!(m.state, State::Draining);
        // Still in the backlog stage: the drain time does not end it.
        assert_eq!(m.tick(100, true), None);
        assert_eq!(m.state, State::Draining);
        m.backlog_drained(101);
        assert_eq!(m.tick(300, true), Some(dp(Action::Pass, false)));
        assert_eq!(m.state, State::Done);
    }

    #[test]
    fn criu_actions_map_to_phases() {
        use CriuDecision::*;
        assert_eq!(
            criu_decision("pre-dump", State::Idle),
            Phase(PhaseCommand::Freeze)
        );
        assert_eq!(
            criu_decision("network-lock", State::Frozen),
            Phase(PhaseCommand::Freeze)
        );
        assert_eq!(
            criu_decision("network-unlock", State::Frozen),
            Phase(PhaseCommand::Abort)
        );
        assert!(matches!(
            criu_decision("network-unlock", State::Restoring),
            Ignore(_)
        ));
        assert_eq!(
            criu_decision("pre-restore", State::Idle),
            Phase(PhaseCommand::Restoring)
        );
        assert_eq!(
            criu_decision("post-resume", State::Restoring),
            Phase(PhaseCommand::Restored)
        );
        for ignored in ["post-dump", "post-restore", "pre-resume", "x"] {
            assert!(matches!(criu_decision(ignored, State::Frozen), Ignore(_)));
        }
        assert_eq!(
            criu_decision("setup-namespaces", State::Idle),
            Phase(PhaseCommand::Restoring)
        );
        assert!(matches!(
            criu_decision("setup-namespaces", State::Restoring),
            Ignore(_)
        ));
    }

    #[test]
    fn the_timeline_is_bounded() {
        let mut m = machine();
        for i in 0..200 {
            m.command(PhaseCommand::Prepare, None, None, i).unwrap();
            m.command(PhaseCommand::Abort, None, None, i).unwrap();
        }
        assert_eq!(m.timeline.len(), TIMELINE_LEN);
    }

    #[test]
    fn names_parse_back() {
        for p in PhaseCommand::ALL {
            assert_eq!(p.name().parse::<PhaseCommand>(), Ok(p));
        }
        assert!(
            "frozen"
                .parse::<PhaseCommand>()
                .unwrap_err()
                .contains("expected one of")
        );
        assert_eq!("source".parse::<Role>(), Ok(Role::Source));
    }
}
