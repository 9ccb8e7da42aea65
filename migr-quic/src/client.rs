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

use std::collections::VecDeque;
use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, ConnectError, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir,
    Endpoint, EndpointConfig, Event, FrameStats, StreamEvent, VarInt,
};

use crate::control::{self, ChannelOutput, ControlChannel, IncomingUniStream, MessageTag};
use crate::frame::{Frame, FrameError, VERSION};

/// How the client follows a moving server (seed 000, sections 3.2 and 3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// P-Explicit: move to the announced address right after acknowledging it.
    ProactiveExplicit,
    /// R-Explicit: keep the old address until a packet loss, then probe the announced one.
    ReactiveExplicit,
    /// PoA: on a packet loss, probe every pool address plus the current one.
    PoolOfAddresses,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p-explicit" | "proactive" | "proactive-explicit" => Ok(Self::ProactiveExplicit),
            "r-explicit" | "reactive" | "reactive-explicit" => Ok(Self::ReactiveExplicit),
            "poa" | "pool" | "pool-of-addresses" => Ok(Self::PoolOfAddresses),
            other => Err(format!(
                "unknown strategy {other:?} (p-explicit, r-explicit, poa)"
            )),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ProactiveExplicit => "p-explicit",
            Self::ReactiveExplicit => "r-explicit",
            Self::PoolOfAddresses => "poa",
        })
    }
}

/// How the client keeps probing while the server does not answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProbeMode {
    /// A PING every `probe_interval` for as long as it probes: resumes
    /// within one interval of the server's return.
    #[default]
    Fast,
    /// Only quinn-proto's own loss recovery (RFC 9002: probe timeouts that
    /// double each time), as a client without this extension's help, such
    /// as the seed's aioquic, recovers. The baseline of the evaluation.
    Rfc9002,
}

impl std::str::FromStr for ProbeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(Self::Fast),
            "rfc9002" => Ok(Self::Rfc9002),
            other => Err(format!("unknown probing {other:?} (fast, rfc9002)")),
        }
    }
}

impl std::fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fast => "fast",
            Self::Rfc9002 => "rfc9002",
        })
    }
}

/// Client-side settings of the extension.
#[derive(Clone, Debug)]
pub struct ClientMigrationConfig {
    pub strategy: Strategy,
    /// Whether the client sends its own PINGs while probing.
    pub probing: ProbeMode,
    /// Interval between PING probes while probing ([`ProbeMode::Fast`]).
    /// `None`: twice the smoothed RTT, clamped to 5..=500 ms.
    pub probe_interval: Option<Duration>,
    /// How long ack-eliciting data may stay unacknowledged before the client
    /// counts it as a packet loss. `None`: 3 x RTT + 35 ms, i.e. RFC 9002's
    /// first probe timeout with the initial RTT variance and the peer's
    /// default 25 ms ACK delay, plus 10 ms so that a delayed ACK on a
    /// very short path does not pass for a loss. A loss quinn-proto declares
    /// itself counts too.
    pub loss_timeout: Option<Duration>,
    /// Explicit strategies: when the announced address has not answered after
    /// this long, also probe the addresses validated before (seed 000, step 9).
    pub fallback_after: Duration,
    /// Send from a fresh local port whenever the client starts sending to a
    /// new server address. quinn-proto on the server then validates the new
    /// path with PATH_CHALLENGE/PATH_RESPONSE (seed 000, step 7).
    pub rebind_on_path_change: bool,
    /// Whether the client speaks the extension at all. `false`: a plain
    /// quinn-proto client (no control stream, no address mapping, no
    /// probing of its own; quinn-proto's RFC 9002 recovery only): what an
    /// unmodified QUIC client does, for same-IP moves and baselines.
    pub extension: bool,
}

impl ClientMigrationConfig {
    pub fn new(strategy: Strategy) -> Self {
        Self {
            extension: true,
            strategy,
            probing: ProbeMode::Fast,
            probe_interval: None,
            loss_timeout: None,
            fallback_after: Duration::from_secs(2),
            rebind_on_path_change: true,
        }
    }

    /// A client without the extension (see [`ClientMigrationConfig::extension`]).
    pub fn plain() -> Self {
        Self {
            extension: false,
            probing: ProbeMode::Rfc9002,
            rebind_on_path_change: false,
            ..Self::new(Strategy::ProactiveExplicit)
        }
    }
}

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
    /// send; the client closed the connection with [`control::error_code`].
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

    /// Asks the server to migrate (TRIGGER frame).
    pub fn send_trigger(&mut self, conn: &mut Connection) -> Result<(), TriggerError> {
        if !self.is_negotiated() {
            return Err(TriggerError::NotNegotiated);
        }
        // TRIGGER always encodes.
        if let Ok(tag) = self.channel.send(conn, &[Frame::Trigger]) {
            self.trigger_tags.push(tag);
        }
        Ok(())
    }

    /// Feed every event of the connection. Returns true when the event
    /// belonged to the extension (control streams) and must not reach the
    /// application. Afterwards, pass the events of
    /// [`ClientMigration::poll_app_event`] to the application too. `now` is
    /// only used to close the connection on a protocol error.
    pub fn handle_event(&mut self, now: Instant, conn: &mut Connection, event: &Event) -> bool {
        match event {
            Event::Connected => {
                self.negotiate(conn);
                false
            }
            Event::Stream(stream_event) => {
                let mut outputs = Vec::new();
                let consumed = self.channel.handle(conn, stream_event, &mut outputs);
                for output in outputs {
                    self.on_channel_output(now, conn, output);
                }
                consumed
            }
            _ => false,
        }
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

    /// Call after quinn-proto processed a datagram that came from `from`.
    pub fn datagram_received(&mut self, now: Instant, from: SocketAddr, conn: &mut Connection) {
        let rx = conn.stats().frame_rx;
        let seen = mem::replace(&mut self.rx_seen, rx);
        // Frames only count once a packet decrypted: this datagram is authentic.
        if frame_total(&rx) == frame_total(&seen) {
            return;
        }
        if rx.acks > seen.acks {
            self.unanswered_since = None;
        }
        if rx.path_challenge > seen.path_challenge {
            self.events
                .push_back(ClientEvent::PathChallengeAnswered { address: from });
        }
        if self
            .probing
            .as_ref()
            .is_some_and(|p| p.targets.contains(&from))
        {
            self.adopt(now, from, conn);
        }
        self.check_loss(now, conn);
    }

    /// Call for every datagram quinn-proto produced, right after
    /// `poll_transmit`, to learn where it goes.
    pub fn route(&mut self, now: Instant, conn: &mut Connection) -> Route {
        let tx = conn.stats().frame_tx;
        let seen = mem::replace(&mut self.tx_seen, tx);
        let carries_ack = tx.acks > seen.acks;
        let ack_eliciting = ack_eliciting_total(&tx) > ack_eliciting_total(&seen);
        if ack_eliciting && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        let route = Route {
            destinations: match &self.probing {
                Some(probing) => probing.targets.clone(),
                None => vec![self.primary],
            },
            fresh_local_address: mem::take(&mut self.rebind_pending),
        };
        // P-Explicit: this datagram acknowledges SERVER_MIGRATION and still
        // goes to the old address; everything after it goes to the new one.
        if carries_ack && let Some(address) = self.switch_after_ack.take() {
            self.start_probing(now, conn, vec![address]);
        }
        route
    }

    /// Next instant at which `handle_timeout` has work to do.
    pub fn poll_timeout(&self, conn: &Connection) -> Option<Instant> {
        let fast = self.config.probing == ProbeMode::Fast;
        let probing = self
            .probing
            .as_ref()
            .and_then(|p| match (fast, p.widen_at) {
                (true, Some(w)) => Some(w.min(p.next_ping)),
                (true, None) => Some(p.next_ping),
                (false, widen_at) => widen_at,
            });
        let loss_armed = self.probing.is_none()
            && self.switch_after_ack.is_none()
            && !self.loss_targets().is_empty();
        let loss = self
            .unanswered_since
            .filter(|_| loss_armed)
            .map(|since| since + self.loss_timeout(conn));
        [probing, loss].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant, conn: &mut Connection) {
        self.check_loss(now, conn);
        let interval = self.probe_interval(conn);
        let previously_validated: Vec<SocketAddr> = self.validated.clone();
        let Some(probing) = &mut self.probing else {
            return;
        };
        if now >= probing.next_ping {
            // Keep probing cyclically: quinn-proto's own probe timeouts back off
            // exponentially, the server may come up at any moment.
            if self.config.probing == ProbeMode::Fast {
                conn.ping();
            }
            probing.next_ping = now + interval;
        }
        if probing.widen_at.is_some_and(|at| now >= at) {
            probing.widen_at = None;
            for address in previously_validated {
                if !probing.targets.contains(&address) {
                    probing.targets.push(address);
                }
            }
            self.events.push_back(ClientEvent::ProbingStarted {
                targets: probing.targets.clone(),
            });
        }
    }

    fn negotiate(&mut self, conn: &mut Connection) {
        if self.hello_sent {
            return;
        }
        self.hello_sent = true;
        // HELLO always encodes.
        let _ = self
            .channel
            .send(conn, &[Frame::Hello { version: VERSION }]);
    }

    fn on_channel_output(&mut self, now: Instant, conn: &mut Connection, output: ChannelOutput) {
        match output {
            ChannelOutput::Frames(frames) => {
                for frame in frames {
                    self.on_frame(now, conn, frame);
                }
            }
            ChannelOutput::Delivered(tag) | ChannelOutput::Refused(tag) => {
                if let Some(pos) = self.trigger_tags.iter().position(|t| *t == tag) {
                    self.trigger_tags.remove(pos);
                    self.events.push_back(ClientEvent::TriggerAcknowledged);
                }
            }
            ChannelOutput::Malformed(error) => self.fail(now, conn, error),
            ChannelOutput::Foreign(stream) => {
                self.uni_streams.push_back(stream);
                self.app_events
                    .push_back(Event::Stream(StreamEvent::Opened { dir: Dir::Uni }));
            }
        }
    }

    fn on_frame(&mut self, now: Instant, conn: &mut Connection, frame: Frame) {
        if self.closed {
            return;
        }
        match frame {
            Frame::Hello { version } => {
                if version == VERSION && !self.negotiated {
                    self.negotiated = true;
                    self.events.push_back(ClientEvent::Negotiated);
                }
            }
            Frame::PoolMigrationAddress { address } => {
                self.mark_negotiated();
                if !self.pool.contains(&address) {
                    self.pool.push(address);
                    self.events.push_back(ClientEvent::PoolAddress { address });
                }
            }
            Frame::ServerMigration { address, .. } => {
                self.mark_negotiated();
                self.on_announcement(conn, address);
            }
            Frame::Trigger => self.fail(
                now,
                conn,
                FrameError::WrongDirection {
                    frame_type: frame.frame_type(),
                },
            ),
        }
    }

    /// A SERVER_MIGRATION can overtake the server's HELLO (different
    /// streams); the server only sends it after negotiation, so it implies it.
    fn mark_negotiated(&mut self) {
        if !self.negotiated {
            self.negotiated = true;
            self.events.push_back(ClientEvent::Negotiated);
        }
    }

    fn on_announcement(&mut self, conn: &mut Connection, address: SocketAddr) {
        self.events
            .push_back(ClientEvent::MigrationAnnounced { address });
        if address == self.primary {
            return;
        }
        self.announced = Some(address);
        match self.config.strategy {
            Strategy::ProactiveExplicit => {
                self.switch_after_ack = Some(address);
                // Makes quinn-proto acknowledge at once instead of after its ACK delay.
                conn.ping();
            }
            Strategy::ReactiveExplicit => {}
            Strategy::PoolOfAddresses => {
                if !self.pool.contains(&address) {
                    self.pool.push(address);
                }
            }
        }
    }

    /// Addresses to probe when a loss happens; empty means "plain QUIC".
    fn loss_targets(&self) -> Vec<SocketAddr> {
        match self.config.strategy {
            Strategy::ProactiveExplicit | Strategy::ReactiveExplicit => {
                self.announced.into_iter().collect()
            }
            Strategy::PoolOfAddresses => {
                if self.pool.is_empty() {
                    return Vec::new();
                }
                let mut targets = self.pool.clone();
                if !targets.contains(&self.primary) {
                    targets.push(self.primary);
                }
                targets
            }
        }
    }

    fn check_loss(&mut self, now: Instant, conn: &mut Connection) {
        let lost = conn.stats().path.lost_packets;
        let declared = lost > self.lost_packets_seen
            && self
                .declared_losses_ignored_until
                .is_none_or(|until| now >= until);
        self.lost_packets_seen = lost;
        if self.probing.is_some() || self.switch_after_ack.is_some() {
            return;
        }
        let timed_out = self
            .unanswered_since
            .is_some_and(|since| now >= since + self.loss_timeout(conn));
        if !(declared || timed_out) {
            return;
        }
        let targets = self.loss_targets();
        if targets.is_empty() {
            return;
        }
        self.events.push_back(ClientEvent::LossDetected {
            primary: self.primary,
        });
        self.start_probing(now, conn, targets);
    }

    fn start_probing(&mut self, now: Instant, conn: &mut Connection, targets: Vec<SocketAddr>) {
        let explicit = self.config.strategy != Strategy::PoolOfAddresses;
        self.probing = Some(Probing {
            targets: targets.clone(),
            next_ping: now + self.probe_interval(conn),
            widen_at: explicit.then(|| now + self.config.fallback_after),
        });
        self.unanswered_since = None;
        if self.config.rebind_on_path_change {
            self.rebind_pending = true;
        }
        // A fresh CID for the new path (RFC 9000, 9.5) plus a PING: the probe.
        conn.local_address_changed();
        self.events
            .push_back(ClientEvent::ProbingStarted { targets });
    }

    /// The server answered from `address` while we were probing.
    fn adopt(&mut self, now: Instant, address: SocketAddr, conn: &mut Connection) {
        self.probing = None;
        self.declared_losses_ignored_until = Some(now + self.loss_timeout(conn));
        if self.announced == Some(address) {
            self.announced = None;
        }
        if !self.validated.contains(&address) {
            self.validated.push(address);
        }
        if address == self.primary {
            self.events
                .push_back(ClientEvent::ProbingEnded { primary: address });
            return;
        }
        let from = mem::replace(&mut self.primary, address);
        if from.ip() != address.ip() {
            // Another host: RTT and congestion state of the old path mean nothing here.
            conn.path_changed(now);
        }
        self.events
            .push_back(ClientEvent::PrimaryChanged { from, to: address });
    }

    /// A protocol error: close the connection with the extension's error code.
    fn fail(&mut self, now: Instant, conn: &mut Connection, error: FrameError) {
        if !self.closed {
            self.closed = true;
            conn.close(
                now,
                VarInt::from_u32(control::error_code(&error)),
                Bytes::from(control::reason_phrase(&error)),
            );
            self.events.push_back(ClientEvent::ProtocolError(error));
            // quinn-proto reports no local close to the application; it must
            // learn that its connection is gone.
            self.app_events.push_back(Event::ConnectionLost {
                reason: ConnectionError::LocallyClosed,
            });
        }
    }

    fn probe_interval(&self, conn: &Connection) -> Duration {
        self.config.probe_interval.unwrap_or_else(|| {
            (conn.rtt() * 2).clamp(Duration::from_millis(5), Duration::from_millis(500))
        })
    }

    fn loss_timeout(&self, conn: &Connection) -> Duration {
        self.config
            .loss_timeout
            .unwrap_or_else(|| conn.rtt() * 3 + Duration::from_millis(35))
    }
}

fn frame_total(s: &FrameStats) -> u64 {
    ack_eliciting_total(s) + s.acks + s.connection_close
}

/// Frames other than ACK, CONNECTION_CLOSE (and PADDING, which is not counted).
fn ack_eliciting_total(s: &FrameStats) -> u64 {
    s.ack_frequency
        + s.crypto
        + s.data_blocked
        + s.datagram
        + u64::from(s.handshake_done)
        + s.immediate_ack
        + s.max_data
        + s.max_stream_data
        + s.max_streams_bidi
        + s.max_streams_uni
        + s.new_connection_id
        + s.new_token
        + s.path_challenge
        + s.path_response
        + s.ping
        + s.reset_stream
        + s.retire_connection_id
        + s.stream_data_blocked
        + s.streams_blocked_bidi
        + s.streams_blocked_uni
        + s.stop_sending
        + s.stream
}

/// A datagram the client wants sent.
#[derive(Debug, Clone)]
pub struct ClientDatagram {
    pub route: Route,
    pub contents: Vec<u8>,
}

/// One quinn-proto client connection with the extension. No I/O: feed it
/// datagrams and time, send what it returns where its [`Route`] says.
pub struct ClientEndpoint {
    endpoint: Endpoint,
    handle: ConnectionHandle,
    conn: Connection,
    migration: ClientMigration,
    app_events: VecDeque<Event>,
    responses: VecDeque<ClientDatagram>,
    buf: Vec<u8>,
    /// The latest time the endpoint was given (for closes from `process`).
    now: Instant,
}

impl ClientEndpoint {
    /// Starts a connection to `server`.
    pub fn connect(
        now: Instant,
        client_config: ClientConfig,
        migration_config: ClientMigrationConfig,
        server: SocketAddr,
        server_name: &str,
    ) -> Result<Self, ConnectError> {
        Self::connect_with_endpoint_config(
            now,
            EndpointConfig::default(),
            client_config,
            migration_config,
            server,
            server_name,
        )
    }

    /// Like [`ClientEndpoint::connect`] with quinn-proto endpoint settings of
    /// the caller's, e.g. `rng_seed` for a reproducible simulation.
    pub fn connect_with_endpoint_config(
        now: Instant,
        endpoint_config: EndpointConfig,
        client_config: ClientConfig,
        migration_config: ClientMigrationConfig,
        server: SocketAddr,
        server_name: &str,
    ) -> Result<Self, ConnectError> {
        let mut endpoint = Endpoint::new(std::sync::Arc::new(endpoint_config), None, true, None);
        let (handle, conn) = endpoint.connect(now, client_config, server, server_name)?;
        Ok(Self {
            endpoint,
            handle,
            conn,
            migration: ClientMigration::new(migration_config, server),
            app_events: VecDeque::new(),
            responses: VecDeque::new(),
            buf: Vec::new(),
            now,
        })
    }

    /// A datagram arrived from `from`. Returns false when it was dropped
    /// because `from` is not one of the server's known addresses.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) -> bool {
        self.now = now;
        let accepted = if self.extension() {
            self.migration.accepts(from)
        } else {
            from == self.migration.anchor()
        };
        if !accepted {
            return false;
        }
        self.buf.clear();
        let anchor = self.migration.anchor();
        match self
            .endpoint
            .handle(now, anchor, None, None, data, &mut self.buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, event)) if ch == self.handle => {
                self.conn.handle_event(event);
            }
            Some(DatagramEvent::Response(transmit)) => {
                self.responses.push_back(ClientDatagram {
                    route: Route {
                        destinations: vec![from],
                        fresh_local_address: false,
                    },
                    contents: self.buf[..transmit.size].to_vec(),
                });
            }
            _ => {}
        }
        if self.extension() {
            self.migration.datagram_received(now, from, &mut self.conn);
        }
        self.process();
        true
    }

    /// Next datagram to send, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<ClientDatagram> {
        self.now = now;
        if let Some(response) = self.responses.pop_front() {
            return Some(response);
        }
        self.buf.clear();
        let transmit = self.conn.poll_transmit(now, 1, &mut self.buf)?;
        let route = if self.extension() {
            self.migration.route(now, &mut self.conn)
        } else {
            Route {
                destinations: vec![self.migration.anchor()],
                fresh_local_address: false,
            }
        };
        Some(ClientDatagram {
            route,
            contents: self.buf[..transmit.size].to_vec(),
        })
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let conn_timeout = self.conn.poll_timeout();
        let migration_timeout = self
            .extension()
            .then(|| self.migration.poll_timeout(&self.conn))
            .flatten();
        [conn_timeout, migration_timeout]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        if self.extension() {
            self.migration.handle_timeout(now, &mut self.conn);
        }
        self.process();
    }

    /// Call after the application used the connection (wrote to a stream, ...).
    pub fn process(&mut self) {
        while let Some(endpoint_event) = self.conn.poll_endpoint_events() {
            if let Some(conn_event) = self.endpoint.handle_event(self.handle, endpoint_event) {
                self.conn.handle_event(conn_event);
            }
        }
        while let Some(event) = self.conn.poll() {
            if !self.extension() {
                self.app_events.push_back(event);
                continue;
            }
            if !self
                .migration
                .handle_event(self.now, &mut self.conn, &event)
            {
                self.app_events.push_back(event);
            }
            while let Some(event) = self.migration.poll_app_event() {
                self.app_events.push_back(event);
            }
        }
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn migration(&self) -> &ClientMigration {
        &self.migration
    }

    /// Asks the server to migrate (TRIGGER).
    pub fn send_trigger(&mut self) -> Result<(), TriggerError> {
        let result = self.migration.send_trigger(&mut self.conn);
        self.process();
        result
    }

    /// Next event for the application (never a control-stream event).
    /// `Opened { dir: Uni }` means: take the streams from
    /// [`ClientEndpoint::accept_uni`], not from quinn-proto.
    pub fn poll_app_event(&mut self) -> Option<Event> {
        self.app_events.pop_front()
    }

    /// Next unidirectional stream of the server's that is not a control
    /// stream; read its first bytes from `prefix`, the rest from the connection.
    pub fn accept_uni(&mut self) -> Option<IncomingUniStream> {
        if !self.extension() {
            let id = self.conn.streams().accept(Dir::Uni)?;
            return Some(IncomingUniStream {
                id,
                prefix: Vec::new(),
                end: None,
            });
        }
        self.migration.accept_uni()
    }

    /// Whether this client speaks the extension
    /// ([`ClientMigrationConfig::extension`]).
    pub fn extension(&self) -> bool {
        self.migration.config.extension
    }

    /// Next event of the migration extension.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.migration.poll_event()
    }
}
