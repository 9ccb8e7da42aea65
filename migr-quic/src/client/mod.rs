//! Client role: the strategies of seed 000 (P-Explicit, R-Explicit, PoA) as a
//! state machine around an unmodified quinn-proto client connection, and a
//! sans-I/O single-connection endpoint ([`ClientEndpoint`]).
//!
//! quinn-proto clients drop datagrams from any address but the one they
//! connected to, so quinn-proto keeps seeing that first address (the
//! *anchor*) while this layer maps it to the server's real current address
//! (the *primary*). It learns what happened inside quinn-proto from
//! `Connection::stats()`: frame counters tell whether a received datagram was
//! authentic (it decrypted into frames), whether it acknowledged anything, and
//! whether a datagram we send carries ACK or ack-eliciting frames.
//!
//! Parts: `config` (settings), `control_stream` (what the server announces),
//! `strategy` (where datagrams go, loss detection, probing) and `endpoint`
//! (the sans-I/O [`ClientEndpoint`]). The state they share,
//! [`ClientMigration`], is defined here, so each part reaches its fields.

mod config;
mod control_stream;
mod endpoint;
mod strategy;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use quinn_proto::{Event, FrameStats};

pub use config::{ClientMigrationConfig, ProbeMode, Strategy};
pub use endpoint::{ClientDatagram, ClientEndpoint};

use crate::control::{ControlChannel, IncomingUniStream, MessageTag};
use crate::frame::FrameError;

/// What the client-side extension reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server speaks the extension.
    Negotiated,
    /// SERVER_MIGRATION received.
    MigrationAnnounced { address: SocketAddr },
    /// POOL_MIGRATION_ADDRESS received.
    PoolAddress { address: SocketAddr },
    /// The server acknowledged our TRIGGER.
    TriggerAcknowledged,
    /// Ack-eliciting data went unanswered (or quinn-proto declared a loss).
    LossDetected { primary: SocketAddr },
    /// The client now sends every datagram to each of these addresses.
    ProbingStarted { targets: Vec<SocketAddr> },
    /// The server answered from `to`, which is now the primary address.
    PrimaryChanged { from: SocketAddr, to: SocketAddr },
    /// The current primary address answered the probes: nothing moved.
    ProbingEnded { primary: SocketAddr },
    /// The server validated our path from `address` and we answered it.
    PathChallengeAnswered { address: SocketAddr },
    /// The server sent a malformed control stream or a frame it must not
    /// send; the client closed the connection with [`crate::control::error_code`].
    ProtocolError(FrameError),
}

/// Why a TRIGGER could not be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerError {
    NotNegotiated,
}

impl std::fmt::Display for TriggerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server did not negotiate migration support")
    }
}

impl std::error::Error for TriggerError {}

/// Where to send one datagram quinn-proto produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Send the same datagram to each address (more than one while probing).
    pub destinations: Vec<SocketAddr>,
    /// Send it, and everything after it, from a fresh local port.
    pub fresh_local_address: bool,
}

struct Probing {
    targets: Vec<SocketAddr>,
    next_ping: Instant,
    widen_at: Option<Instant>,
}

/// The extension's state for one client connection.
pub struct ClientMigration {
    config: ClientMigrationConfig,
    anchor: SocketAddr,
    primary: SocketAddr,
    validated: Vec<SocketAddr>,
    announced: Option<SocketAddr>,
    switch_after_ack: Option<SocketAddr>,
    pool: Vec<SocketAddr>,
    probing: Option<Probing>,
    channel: ControlChannel,
    hello_sent: bool,
    negotiated: bool,
    /// The connection was closed for a protocol error.
    closed: bool,
    trigger_tags: Vec<MessageTag>,
    unanswered_since: Option<Instant>,
    lost_packets_seen: u64,
    /// Packets lost while the server was away are declared lost only once the
    /// new path acknowledges later ones; they say nothing about the new path.
    declared_losses_ignored_until: Option<Instant>,
    tx_seen: FrameStats,
    rx_seen: FrameStats,
    rebind_pending: bool,
    events: VecDeque<ClientEvent>,
    uni_streams: VecDeque<IncomingUniStream>,
    app_events: VecDeque<Event>,
}

impl ClientMigration {
    /// `server` is the address the connection was opened to; quinn-proto
    /// keeps seeing it as the server's address for the connection's lifetime.
    pub fn new(config: ClientMigrationConfig, server: SocketAddr) -> Self {
        Self {
            config,
            anchor: server,
            primary: server,
            validated: vec![server],
            announced: None,
            switch_after_ack: None,
            pool: Vec::new(),
            probing: None,
            channel: ControlChannel::default(),
            hello_sent: false,
            negotiated: false,
            closed: false,
            trigger_tags: Vec::new(),
            unanswered_since: None,
            lost_packets_seen: 0,
            declared_losses_ignored_until: None,
            tx_seen: FrameStats::default(),
            rx_seen: FrameStats::default(),
            rebind_pending: false,
            events: VecDeque::new(),
            uni_streams: VecDeque::new(),
            app_events: VecDeque::new(),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.config.strategy
    }

    /// The address quinn-proto believes the server has.
    pub fn anchor(&self) -> SocketAddr {
        self.anchor
    }

    /// The server's real current address.
    pub fn primary(&self) -> SocketAddr {
        self.primary
    }

    pub fn pool(&self) -> &[SocketAddr] {
        &self.pool
    }

    pub fn is_negotiated(&self) -> bool {
        self.negotiated && !self.closed
    }

    pub fn probe_targets(&self) -> Option<&[SocketAddr]> {
        self.probing.as_ref().map(|p| p.targets.as_slice())
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Whether a datagram from `from` may be handed to quinn-proto: only the
    /// server's known addresses are candidates.
    pub fn accepts(&self, from: SocketAddr) -> bool {
        from == self.primary
            || self.validated.contains(&from)
            || self.announced == Some(from)
            || self.pool.contains(&from)
            || self
                .probing
                .as_ref()
                .is_some_and(|p| p.targets.contains(&from))
    }

    /// Events the extension owes the application: an
    /// `Event::Stream(StreamEvent::Opened { dir: Dir::Uni })` whenever
    /// unidirectional streams that are not control streams wait in
    /// [`ClientMigration::accept_uni`] (quinn-proto's own `Opened` events for
    /// unidirectional streams are the extension's).
    pub fn poll_app_event(&mut self) -> Option<Event> {
        self.app_events.pop_front()
    }

    /// Next unidirectional stream from the server that is not a control
    /// stream, with the first bytes the extension read from it.
    pub fn accept_uni(&mut self) -> Option<IncomingUniStream> {
        self.uni_streams.pop_front()
    }
}
