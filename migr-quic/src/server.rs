//! Server role: per-connection migration state ([`ServerMigration`]) and a
//! sans-I/O endpoint that adds it to every accepted connection ([`ServerEndpoint`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, ServerConfig, StreamEvent, VarInt,
};

use crate::cid::RoutableCidGenerator;
use crate::control::{self, ChannelOutput, ControlChannel, IncomingUniStream, MessageTag};
use crate::frame::{Frame, FrameError, VERSION};

/// Identifies one `announce_migration` call on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MigrationId(pub u64);

/// What the migration extension reports to the server's migration management.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// The client speaks the extension; announcements are possible from now on.
    Negotiated,
    /// The client acknowledged every POOL_MIGRATION_ADDRESS frame.
    PoolAcknowledged,
    /// The client asked for a migration (TRIGGER frame).
    TriggerReceived,
    /// The client acknowledged SERVER_MIGRATION: the container may move now.
    MigrationAcknowledged {
        id: MigrationId,
        address: SocketAddr,
    },
    /// The client refused the announcement's stream; the migration must not rely on it.
    MigrationRefused {
        id: MigrationId,
        address: SocketAddr,
    },
    /// The client sent a malformed control stream or a frame it must not
    /// send; the server closed the connection with [`control::error_code`].
    ProtocolError(FrameError),
}

/// Why an announcement could not be queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnounceError {
    /// The client never negotiated the extension; nothing is sent to it.
    NotNegotiated,
    /// The address cannot be encoded (port 0, unspecified IP, ...).
    BadAddress(FrameError),
    /// No such connection.
    UnknownConnection,
}

impl std::fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotNegotiated => write!(f, "the client did not negotiate migration support"),
            Self::BadAddress(e) => write!(f, "cannot announce this address: {e}"),
            Self::UnknownConnection => write!(f, "no such connection"),
        }
    }
}

impl std::error::Error for AnnounceError {}

/// The extension's state for one server-side connection. Feed it every
/// `quinn_proto::Event` the connection yields; it consumes the ones that
/// belong to the extension.
pub struct ServerMigration {
    pool: Vec<SocketAddr>,
    channel: ControlChannel,
    negotiated: bool,
    /// The connection was closed for a protocol error.
    closed: bool,
    hello_tag: Option<MessageTag>,
    announcements: HashMap<MessageTag, (MigrationId, SocketAddr)>,
    next_sequence: u64,
    events: VecDeque<ServerEvent>,
    uni_streams: VecDeque<IncomingUniStream>,
    app_events: VecDeque<Event>,
}

impl ServerMigration {
    /// `pool` is sent to the client right after negotiation (PoA strategy).
    pub fn new(pool: Vec<SocketAddr>) -> Self {
        Self {
            pool,
            channel: ControlChannel::default(),
            negotiated: false,
            closed: false,
            hello_tag: None,
            announcements: HashMap::new(),
            next_sequence: 0,
            events: VecDeque::new(),
            uni_streams: VecDeque::new(),
            app_events: VecDeque::new(),
        }
    }

    pub fn is_negotiated(&self) -> bool {
        self.negotiated && !self.closed
    }

    /// Returns true when the event belonged to the extension (control
    /// streams) and must not reach the application. Afterwards, pass the
    /// events of [`ServerMigration::poll_app_event`] to the application too.
    /// `now` is only used to close the connection on a protocol error.
    pub fn handle_event(&mut self, now: Instant, conn: &mut Connection, event: &Event) -> bool {
        let Event::Stream(stream_event) = event else {
            return false;
        };
        let mut outputs = Vec::new();
        let consumed = self.channel.handle(conn, stream_event, &mut outputs);
        for output in outputs {
            self.on_channel_output(now, conn, output);
        }
        consumed
    }

    /// Events the extension owes the application: an
    /// `Event::Stream(StreamEvent::Opened { dir: Dir::Uni })` whenever
    /// unidirectional streams that are not control streams wait in
    /// [`ServerMigration::accept_uni`] (quinn-proto's own `Opened` events for
    /// unidirectional streams are the extension's).
    pub fn poll_app_event(&mut self) -> Option<Event> {
        self.app_events.pop_front()
    }

    /// Next unidirectional stream from the client that is not a control
    /// stream, with the first bytes the extension read from it.
    pub fn accept_uni(&mut self) -> Option<IncomingUniStream> {
        self.uni_streams.pop_front()
    }

    /// Tells the client that the server is about to move to `address`. The
    /// container must not move before `ServerEvent::MigrationAcknowledged`
    /// with the returned id (seed 000, section 3.2, step 4).
    pub fn announce_migration(
        &mut self,
        conn: &mut Connection,
        address: SocketAddr,
    ) -> Result<MigrationId, AnnounceError> {
        if !self.is_negotiated() {
            return Err(AnnounceError::NotNegotiated);
        }
        let id = MigrationId(self.next_sequence);
        let frame = Frame::ServerMigration {
            sequence: id.0,
            address,
        };
        let tag = self
            .channel
            .send(conn, &[frame])
            .map_err(AnnounceError::BadAddress)?;
        self.next_sequence += 1;
        self.announcements.insert(tag, (id, address));
        Ok(id)
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Announcements sent but not yet acknowledged.
    pub fn pending_announcements(&self) -> usize {
        self.announcements.len()
    }

    fn on_channel_output(&mut self, now: Instant, conn: &mut Connection, output: ChannelOutput) {
        match output {
            ChannelOutput::Frames(frames) => {
                for frame in frames {
                    self.on_frame(now, conn, frame);
                }
            }
            ChannelOutput::Delivered(tag) => {
                if Some(tag) == self.hello_tag {
                    if !self.pool.is_empty() {
                        self.events.push_back(ServerEvent::PoolAcknowledged);
                    }
                } else if let Some((id, address)) = self.announcements.remove(&tag) {
                    self.events
                        .push_back(ServerEvent::MigrationAcknowledged { id, address });
                }
            }
            ChannelOutput::Refused(tag) => {
                if let Some((id, address)) = self.announcements.remove(&tag) {
                    self.events
                        .push_back(ServerEvent::MigrationRefused { id, address });
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
            Frame::Hello { version } if version == VERSION && !self.negotiated => {
                self.negotiated = true;
                let mut reply = vec![Frame::Hello { version: VERSION }];
                reply.extend(
                    self.pool
                        .iter()
                        .map(|&address| Frame::PoolMigrationAddress { address }),
                );
                match self.channel.send(conn, &reply) {
                    Ok(tag) => {
                        self.hello_tag = Some(tag);
                        self.events.push_back(ServerEvent::Negotiated);
                    }
                    Err(e) => self.fail(now, conn, e),
                }
            }
            // Another version, or a repeated HELLO: nothing to do.
            Frame::Hello { .. } => {}
            Frame::Trigger if self.negotiated => {
                self.events.push_back(ServerEvent::TriggerReceived);
            }
            // Server-to-client frames, or TRIGGER before HELLO: the client is
            // not following the protocol.
            Frame::Trigger | Frame::ServerMigration { .. } | Frame::PoolMigrationAddress { .. } => {
                self.fail(
                    now,
                    conn,
                    FrameError::WrongDirection {
                        frame_type: frame.frame_type(),
                    },
                )
            }
        }
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
            self.events.push_back(ServerEvent::ProtocolError(error));
            // quinn-proto reports no local close to the application; it must
            // learn that its connection is gone.
            self.app_events.push_back(Event::ConnectionLost {
                reason: ConnectionError::LocallyClosed,
            });
        }
    }
}

/// Configuration of a [`ServerEndpoint`].
pub struct ServerEndpointConfig {
    /// TLS and transport settings (client migration must stay enabled, the
    /// default: a following client rebinds its port, see the docs).
    pub server_config: Arc<ServerConfig>,
    /// Generator of routable CIDs (server id + `CidConfig`).
    pub cid_generator: RoutableCidGenerator,
    /// Addresses the server may move to, sent to every client (PoA strategy).
    pub pool: Vec<SocketAddr>,
}

/// One accepted connection with its migration state.
pub struct ServerConnection {
    pub conn: Connection,
    pub migration: ServerMigration,
    /// The local address the client last reached us at: replies leave from
    /// there, so once the client follows the server, so do the replies.
    pub local_address: SocketAddr,
    app_events: VecDeque<Event>,
}

impl ServerConnection {
    /// Next event that belongs to the application (never a control-stream
    /// event). `Opened { dir: Uni }` means: take the streams from
    /// [`ServerConnection::accept_uni`], not from quinn-proto.
    pub fn poll_app_event(&mut self) -> Option<Event> {
        self.app_events.pop_front()
    }

    /// Next unidirectional stream of the client's that is not a control
    /// stream; read its first bytes from `prefix`, the rest from `conn`.
    pub fn accept_uni(&mut self) -> Option<IncomingUniStream> {
        self.migration.accept_uni()
    }
}

/// A datagram the server wants sent.
#[derive(Debug, Clone)]
pub struct ServerDatagram {
    /// Local address (socket) to send from.
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// A quinn-proto server endpoint with the migration extension on every
/// connection. No I/O: feed it datagrams and time, send what it returns.
pub struct ServerEndpoint {
    endpoint: Endpoint,
    server_config: Arc<ServerConfig>,
    pool: Vec<SocketAddr>,
    connections: BTreeMap<ConnectionHandle, ServerConnection>,
    new_connections: VecDeque<ConnectionHandle>,
    events: VecDeque<(ConnectionHandle, ServerEvent)>,
    responses: VecDeque<ServerDatagram>,
    last_sender: ConnectionHandle,
    buf: Vec<u8>,
    /// The latest time the endpoint was given (for closes from `process`).
    now: Instant,
}

impl ServerEndpoint {
    pub fn new(config: ServerEndpointConfig) -> Self {
        Self::with_endpoint_config(config, |_| {})
    }

    /// Like [`ServerEndpoint::new`], with a chance to adjust quinn-proto's
    /// `EndpointConfig` first (the routable CID generator is already in it),
    /// e.g. `rng_seed` for a reproducible simulation.
    pub fn with_endpoint_config(
        config: ServerEndpointConfig,
        adjust: impl FnOnce(&mut EndpointConfig),
    ) -> Self {
        let mut endpoint_config = config.cid_generator.endpoint_config();
        adjust(&mut endpoint_config);
        let endpoint = Endpoint::new(
            Arc::new(endpoint_config),
            Some(config.server_config.clone()),
            true,
            None,
        );
        Self {
            endpoint,
            server_config: config.server_config,
            pool: config.pool,
            connections: BTreeMap::new(),
            new_connections: VecDeque::new(),
            events: VecDeque::new(),
            responses: VecDeque::new(),
            last_sender: ConnectionHandle(0),
            buf: Vec::new(),
            now: Instant::now(),
        }
    }

    /// Replaces the pool sent to connections accepted from now on.
    pub fn set_pool(&mut self, pool: Vec<SocketAddr>) {
        self.pool = pool;
    }

    /// A datagram arrived at local address `local` from `remote`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: BytesMut,
    ) {
        self.now = now;
        self.buf.clear();
        let event = self
            .endpoint
            .handle(now, remote, None, None, data, &mut self.buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(connection) = self.connections.get_mut(&ch) {
                    connection.local_address = local;
                    connection.conn.handle_event(event);
                    self.process(ch);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.buf.clear();
                match self.endpoint.accept(
                    incoming,
                    now,
                    &mut self.buf,
                    Some(self.server_config.clone()),
                ) {
                    Ok((ch, conn)) => {
                        self.connections.insert(
                            ch,
                            ServerConnection {
                                conn,
                                migration: ServerMigration::new(self.pool.clone()),
                                local_address: local,
                                app_events: VecDeque::new(),
                            },
                        );
                        self.new_connections.push_back(ch);
                        self.process(ch);
                    }
                    Err(error) => {
                        if let Some(transmit) = error.response {
                            self.queue_response(local, transmit.destination, transmit.size);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                self.queue_response(local, transmit.destination, transmit.size);
            }
            None => {}
        }
    }

    fn queue_response(&mut self, source: SocketAddr, destination: SocketAddr, size: usize) {
        self.responses.push_back(ServerDatagram {
            source,
            destination,
            contents: self.buf[..size].to_vec(),
        });
    }

    /// Next datagram to send, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<ServerDatagram> {
        self.now = now;
        if let Some(response) = self.responses.pop_front() {
            return Some(response);
        }
        // Round robin, starting after the connection that sent last, so that
        // one busy connection cannot starve the others.
        let after = self.last_sender;
        let order = self
            .connections
            .range((Bound::Excluded(after), Bound::Unbounded))
            .chain(self.connections.range(..=after))
            .map(|(ch, _)| *ch)
            .collect::<Vec<_>>();
        for ch in order {
            let Some(connection) = self.connections.get_mut(&ch) else {
                continue;
            };
            self.buf.clear();
            if let Some(transmit) = connection.conn.poll_transmit(now, 1, &mut self.buf) {
                self.last_sender = ch;
                return Some(ServerDatagram {
                    source: connection.local_address,
                    destination: transmit.destination,
                    contents: self.buf[..transmit.size].to_vec(),
                });
            }
        }
        None
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.connections
            .values_mut()
            .filter_map(|c| c.conn.poll_timeout())
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let due: Vec<ConnectionHandle> = self
            .connections
            .iter_mut()
            .filter_map(|(ch, c)| {
                c.conn
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                    .then_some(*ch)
            })
            .collect();
        for ch in due {
            if let Some(connection) = self.connections.get_mut(&ch) {
                connection.conn.handle_timeout(now);
            }
            self.process(ch);
        }
    }

    /// Call after the application used a connection (wrote to a stream, ...),
    /// so that endpoint bookkeeping and events are up to date.
    pub fn process(&mut self, ch: ConnectionHandle) {
        let Some(connection) = self.connections.get_mut(&ch) else {
            return;
        };
        while let Some(endpoint_event) = connection.conn.poll_endpoint_events() {
            if let Some(conn_event) = self.endpoint.handle_event(ch, endpoint_event) {
                connection.conn.handle_event(conn_event);
            }
        }
        while let Some(event) = connection.conn.poll() {
            if !connection
                .migration
                .handle_event(self.now, &mut connection.conn, &event)
            {
                connection.app_events.push_back(event);
            }
            while let Some(event) = connection.migration.poll_app_event() {
                connection.app_events.push_back(event);
            }
        }
        while let Some(event) = connection.migration.poll_event() {
            self.events.push_back((ch, event));
        }
        if connection.conn.is_drained() && connection.app_events.is_empty() {
            self.connections.remove(&ch);
        }
    }

    /// Announces `address` on one connection.
    pub fn announce_migration(
        &mut self,
        ch: ConnectionHandle,
        address: SocketAddr,
    ) -> Result<MigrationId, AnnounceError> {
        let connection = self
            .connections
            .get_mut(&ch)
            .ok_or(AnnounceError::UnknownConnection)?;
        let id = connection
            .migration
            .announce_migration(&mut connection.conn, address)?;
        self.process(ch);
        Ok(id)
    }

    /// Announces `address` on every connection that negotiated the extension;
    /// returns the announcements to wait for.
    pub fn announce_migration_to_all(
        &mut self,
        address: SocketAddr,
    ) -> Vec<(ConnectionHandle, MigrationId)> {
        let handles: Vec<ConnectionHandle> = self.connections.keys().copied().collect();
        handles
            .into_iter()
            .filter_map(|ch| Some((ch, self.announce_migration(ch, address).ok()?)))
            .collect()
    }

    /// Next extension event: negotiation, TRIGGER, acknowledgements.
    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, ServerEvent)> {
        self.events.pop_front()
    }

    /// Next newly accepted connection.
    pub fn accept(&mut self) -> Option<ConnectionHandle> {
        self.new_connections.pop_front()
    }

    pub fn connection(&mut self, ch: ConnectionHandle) -> Option<&mut ServerConnection> {
        self.connections.get_mut(&ch)
    }

    pub fn connection_handles(&self) -> Vec<ConnectionHandle> {
        self.connections.keys().copied().collect()
    }

    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }
}
