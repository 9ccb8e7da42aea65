//! A deterministic, socket-free network for quinn-proto endpoints: virtual
//! time, addresses that can appear and disappear, fixed latency. The server can
//! be "migrated": frozen for T ms, then listening at a new address.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use migr_common::cid::CidConfig;
use migr_quic::tls::{self, SelfSigned};
use migr_quic::{
    ClientEndpoint, ClientEvent, ClientMigrationConfig, IncomingUniStream, RoutableCidGenerator,
    ServerEndpoint, ServerEndpointConfig, ServerEvent, Strategy, UniStreamEnd,
};
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint,
    EndpointConfig, Event, ReadError, ServerConfig, StreamEvent, StreamId, TransportConfig, VarInt,
};

pub const PAYLOAD_LEN: usize = 1024;
pub const SERVER_ID: u32 = 0x2a;

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn cid_config() -> CidConfig {
    CidConfig::new(8, 1, 2).unwrap()
}

pub struct Crypto {
    pub server: Arc<ServerConfig>,
    pub client: ClientConfig,
}

/// quinn-proto draws random numbers (packet-number skips, key-update
/// intervals, path challenges) that change packet timing a little; seeded,
/// every run of a simulation is the same. One seed per endpoint role.
pub fn seeded(seed: u8) -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.rng_seed(Some([seed; 32]));
    config
}

const SERVER_SEED: u8 = 1;
const CLIENT_SEED: u8 = 2;

pub fn crypto() -> Crypto {
    let cert = SelfSigned::generate(&["migr.test"]).unwrap();
    Crypto {
        server: Arc::new(cert.server_config(TransportConfig::default()).unwrap()),
        client: tls::client_config(cert.cert_der.clone(), TransportConfig::default()).unwrap(),
    }
}

// ---------------------------------------------------------------- echo apps

/// One unidirectional stream as an application received it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceivedUni {
    pub data: Vec<u8>,
    pub finished: bool,
    pub reset: Option<VarInt>,
}

/// The unidirectional streams an application received from its peer, whole.
#[derive(Default, Debug)]
pub struct UniStreams {
    pub streams: BTreeMap<StreamId, ReceivedUni>,
}

impl UniStreams {
    /// Takes a stream handed over by the extension (or accepted from a
    /// plain quinn-proto connection, with an empty prefix) and reads on.
    pub fn accept(&mut self, conn: &mut Connection, stream: IncomingUniStream) {
        let received = ReceivedUni {
            data: stream.prefix,
            finished: stream.end == Some(UniStreamEnd::Finished),
            reset: match stream.end {
                Some(UniStreamEnd::Reset(code)) => Some(code),
                _ => None,
            },
        };
        let ended = stream.end.is_some();
        self.streams.insert(stream.id, received);
        if !ended {
            self.read(conn, stream.id);
        }
    }

    /// Reads what arrived on `id`; false if `id` is none of these streams.
    pub fn read(&mut self, conn: &mut Connection, id: StreamId) -> bool {
        let Some(received) = self.streams.get_mut(&id) else {
            return false;
        };
        if received.finished || received.reset.is_some() {
            return true;
        }
        if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => received.data.extend_from_slice(&chunk.bytes),
                    Ok(None) => {
                        received.finished = true;
                        break;
                    }
                    Err(ReadError::Reset(code)) => {
                        received.reset = Some(code);
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                }
            }
            let _ = chunks.finalize();
        }
        true
    }
}

fn plain_uni_stream(conn: &mut Connection) -> Option<IncomingUniStream> {
    conn.streams().accept(Dir::Uni).map(|id| IncomingUniStream {
        id,
        prefix: Vec::new(),
        end: None,
    })
}

/// Server application: echoes every bidirectional stream back, then
/// finishes it; collects unidirectional streams.
#[derive(Default)]
pub struct EchoServer {
    requests: HashMap<StreamId, Vec<u8>>,
    replies: HashMap<StreamId, (Vec<u8>, usize)>,
    pub uni: UniStreams,
    /// How the connection ended, once it did.
    pub lost: Option<ConnectionError>,
}

impl EchoServer {
    pub fn on_event(&mut self, conn: &mut Connection, event: Event) {
        match event {
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                while let Some(id) = conn.streams().accept(Dir::Bi) {
                    self.requests.insert(id, Vec::new());
                    self.read(conn, id);
                }
            }
            // Plain quinn-proto: the streams are in the connection.
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(stream) = plain_uni_stream(conn) {
                    self.uni.accept(conn, stream);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) if !self.uni.read(conn, id) => {
                self.read(conn, id)
            }
            Event::Stream(StreamEvent::Writable { id }) => self.write(conn, id),
            Event::ConnectionLost { reason } => self.lost = Some(reason),
            _ => {}
        }
    }

    fn read(&mut self, conn: &mut Connection, id: StreamId) {
        let Some(buf) = self.requests.get_mut(&id) else {
            return;
        };
        let mut finished = false;
        if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = chunks.finalize();
        }
        if finished {
            let data = self.requests.remove(&id).unwrap();
            self.replies.insert(id, (data, 0));
            self.write(conn, id);
        }
    }

    fn write(&mut self, conn: &mut Connection, id: StreamId) {
        let Some((data, written)) = self.replies.get_mut(&id) else {
            return;
        };
        let mut stream = conn.send_stream(id);
        while *written < data.len() {
            match stream.write(&data[*written..]) {
                Ok(n) => *written += n,
                Err(_) => return,
            }
        }
        let _ = stream.finish();
        self.replies.remove(&id);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    BackToBack,
    Sporadic(Duration),
}

#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub index: usize,
    pub sent: Duration,
    pub received: Duration,
    /// Server address the client used when the response completed.
    pub server: SocketAddr,
}

impl RequestRecord {
    pub fn service_time(&self) -> Duration {
        self.received - self.sent
    }
}

/// Client application: sends `total` 1 kB requests and checks each echo.
pub struct EchoClient {
    pub mode: Mode,
    pub total: usize,
    pub records: Vec<RequestRecord>,
    pub uni: UniStreams,
    /// How the connection ended, once it did.
    pub lost: Option<ConnectionError>,
    in_flight: Option<InFlight>,
    next_index: usize,
    next_send_at: Option<Instant>,
}

struct InFlight {
    index: usize,
    id: StreamId,
    sent: Instant,
    payload: Vec<u8>,
    received: Vec<u8>,
}

pub fn payload(index: usize) -> Vec<u8> {
    (0..PAYLOAD_LEN).map(|i| (i + index * 7) as u8).collect()
}

impl EchoClient {
    pub fn new(mode: Mode, total: usize) -> Self {
        Self {
            mode,
            total,
            records: Vec::new(),
            uni: UniStreams::default(),
            lost: None,
            in_flight: None,
            next_index: 0,
            next_send_at: None,
        }
    }

    pub fn done(&self) -> bool {
        self.records.len() == self.total
    }

    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.in_flight.is_none() && self.next_index < self.total {
            self.next_send_at
        } else {
            None
        }
    }

    /// Starts the next request if it is due. Returns true if it sent one.
    pub fn maybe_send(&mut self, now: Instant, start: Instant, conn: &mut Connection) -> bool {
        if self.in_flight.is_some() || self.next_index >= self.total || conn.is_handshaking() {
            return false;
        }
        let due = self.next_send_at.unwrap_or(now);
        if now < due {
            self.next_send_at = Some(due);
            return false;
        }
        let Some(id) = conn.streams().open(Dir::Bi) else {
            return false;
        };
        let index = self.next_index;
        let data = payload(index);
        let mut stream = conn.send_stream(id);
        let written = stream.write(&data).unwrap();
        assert_eq!(written, data.len(), "1 kB fits the initial stream window");
        stream.finish().unwrap();
        self.in_flight = Some(InFlight {
            index,
            id,
            sent: now,
            payload: data,
            received: Vec::new(),
        });
        self.next_index += 1;
        self.next_send_at = match self.mode {
            Mode::BackToBack => None,
            Mode::Sporadic(period) => Some(start + period * self.next_index as u32),
        };
        let _ = start;
        true
    }

    pub fn on_event(
        &mut self,
        now: Instant,
        start: Instant,
        server: SocketAddr,
        conn: &mut Connection,
        event: Event,
    ) {
        let id = match event {
            Event::Stream(StreamEvent::Readable { id }) => id,
            Event::ConnectionLost { reason } => {
                self.lost = Some(reason);
                return;
            }
            _ => return,
        };
        if self.uni.read(conn, id) {
            return;
        }
        let Some(flight) = self.in_flight.as_mut().filter(|f| f.id == id) else {
            return;
        };
        let mut finished = false;
        if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => flight.received.extend_from_slice(&chunk.bytes),
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = chunks.finalize();
        }
        if finished {
            let flight = self.in_flight.take().unwrap();
            assert_eq!(
                flight.received, flight.payload,
                "echo of request {}",
                flight.index
            );
            self.records.push(RequestRecord {
                index: flight.index,
                sent: flight.sent - start,
                received: now - start,
                server,
            });
        }
    }
}

// ---------------------------------------------------------------- nodes

/// Anything that can play the server.
pub trait ServerNode {
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]);
    /// (source, destination, contents)
    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, SocketAddr, Vec<u8>)>;
    fn poll_timeout(&mut self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
    /// Runs the echo application on every connection.
    fn run_app(&mut self);
    fn as_migr(&mut self) -> Option<&mut MigrServer> {
        None
    }
    fn as_plain(&mut self) -> Option<&mut PlainServer> {
        None
    }
}

/// Anything that can play the client.
pub trait ClientNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool;
    /// (destinations, fresh local port, contents)
    fn poll_transmit(&mut self, now: Instant) -> Option<(Vec<SocketAddr>, bool, Vec<u8>)>;
    fn poll_timeout(&mut self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
    fn conn(&mut self) -> &mut Connection;
    fn poll_app_event(&mut self) -> Option<Event>;
    /// After an `Opened { dir: Uni }` app event: the next such stream.
    fn accept_uni(&mut self) -> Option<IncomingUniStream>;
    /// After the application touched the connection.
    fn process(&mut self);
    /// The server address requests currently go to.
    fn server_address(&self) -> SocketAddr;
    fn as_migr(&mut self) -> Option<&mut MigrClient> {
        None
    }
}

pub struct MigrServer {
    pub endpoint: ServerEndpoint,
    pub apps: HashMap<ConnectionHandle, EchoServer>,
    pub events: Vec<(Instant, ServerEvent)>,
    now: Instant,
}

impl MigrServer {
    pub fn new(crypto: &Crypto, pool: Vec<SocketAddr>) -> Self {
        let generator = RoutableCidGenerator::new(cid_config(), SERVER_ID).unwrap();
        Self {
            endpoint: ServerEndpoint::with_endpoint_config(
                ServerEndpointConfig {
                    server_config: crypto.server.clone(),
                    cid_generator: generator,
                    pool,
                },
                |config| {
                    config.rng_seed(Some([SERVER_SEED; 32]));
                },
            ),
            apps: HashMap::new(),
            events: Vec::new(),
            now: Instant::now(),
        }
    }
}

impl ServerNode for MigrServer {
    fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        self.now = now;
        self.endpoint
            .handle_datagram(now, local, remote, BytesMut::from(data));
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.endpoint
            .poll_transmit(now)
            .map(|d| (d.source, d.destination, d.contents))
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.endpoint.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.endpoint.handle_timeout(now);
    }

    fn run_app(&mut self) {
        while let Some(ch) = self.endpoint.accept() {
            self.apps.insert(ch, EchoServer::default());
        }
        for ch in self.endpoint.connection_handles() {
            let app = self.apps.entry(ch).or_default();
            if let Some(connection) = self.endpoint.connection(ch) {
                while let Some(event) = connection.poll_app_event() {
                    // migr: the extension hands over the streams that are
                    // not its own, with their first bytes.
                    if let Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) = event {
                        while let Some(stream) = connection.accept_uni() {
                            app.uni.accept(&mut connection.conn, stream);
                        }
                    } else {
                        app.on_event(&mut connection.conn, event);
                    }
                }
            }
            self.endpoint.process(ch);
        }
        while let Some((_, event)) = self.endpoint.poll_event() {
            self.events.push((self.now, event));
        }
    }

    fn as_migr(&mut self) -> Option<&mut MigrServer> {
        Some(self)
    }
}

/// A quinn-proto server without the extension.
pub struct PlainServer {
    endpoint: Endpoint,
    config: Arc<ServerConfig>,
    conns: BTreeMap<ConnectionHandle, (Connection, EchoServer, SocketAddr)>,
    responses: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl PlainServer {
    pub fn new(crypto: &Crypto) -> Self {
        Self {
            endpoint: Endpoint::new(
                Arc::new(seeded(SERVER_SEED)),
                Some(crypto.server.clone()),
                true,
                None,
            ),
            config: crypto.server.clone(),
            conns: BTreeMap::new(),
            responses: Vec::new(),
        }
    }

    fn drive(&mut self, ch: ConnectionHandle) {
        let Some((conn, app, _)) = self.conns.get_mut(&ch) else {
            return;
        };
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(cev) = self.endpoint.handle_event(ch, ev) {
                conn.handle_event(cev);
            }
        }
        while let Some(event) = conn.poll() {
            app.on_event(conn, event);
        }
    }
}

impl ServerNode for PlainServer {
    fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        let mut buf = Vec::new();
        match self
            .endpoint
            .handle(now, remote, None, None, BytesMut::from(data), &mut buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some((conn, _, _)) = self.conns.get_mut(&ch) {
                    conn.handle_event(ev);
                }
                self.drive(ch);
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let mut buf = Vec::new();
                if let Ok((ch, conn)) =
                    self.endpoint
                        .accept(incoming, now, &mut buf, Some(self.config.clone()))
                {
                    self.conns.insert(ch, (conn, EchoServer::default(), local));
                    self.drive(ch);
                }
            }
            Some(DatagramEvent::Response(t)) => {
                self.responses
                    .push((local, t.destination, buf[..t.size].to_vec()))
            }
            None => {}
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        if let Some(r) = self.responses.pop() {
            return Some(r);
        }
        let mut buf = Vec::new();
        for (conn, _, local) in self.conns.values_mut() {
            buf.clear();
            if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                return Some((*local, t.destination, buf[..t.size].to_vec()));
            }
        }
        None
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.conns
            .values_mut()
            .filter_map(|c| c.0.poll_timeout())
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            if let Some((conn, _, _)) = self.conns.get_mut(&ch)
                && conn.poll_timeout().is_some_and(|t| t <= now)
            {
                conn.handle_timeout(now);
            }
            self.drive(ch);
        }
    }

    fn run_app(&mut self) {
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            self.drive(ch);
        }
    }

    fn as_plain(&mut self) -> Option<&mut PlainServer> {
        Some(self)
    }
}

impl PlainServer {
    /// The first connection and its echo app.
    pub fn first(&mut self) -> Option<(&mut Connection, &mut EchoServer)> {
        self.conns
            .values_mut()
            .next()
            .map(|(conn, app, _)| (conn, app))
    }
}

pub struct MigrClient {
    pub endpoint: ClientEndpoint,
    pub events: Vec<(Instant, ClientEvent)>,
    now: Instant,
}

impl MigrClient {
    pub fn connect(
        now: Instant,
        crypto: &Crypto,
        config: ClientMigrationConfig,
        server: SocketAddr,
    ) -> Self {
        Self {
            endpoint: ClientEndpoint::connect_with_endpoint_config(
                now,
                seeded(CLIENT_SEED),
                crypto.client.clone(),
                config,
                server,
                "migr.test",
            )
            .unwrap(),
            events: Vec::new(),
            now,
        }
    }

    fn collect(&mut self) {
        while let Some(event) = self.endpoint.poll_event() {
            self.events.push((self.now, event));
        }
    }
}

impl ClientNode for MigrClient {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        self.now = now;
        let accepted = self
            .endpoint
            .handle_datagram(now, from, BytesMut::from(data));
        self.collect();
        accepted
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(Vec<SocketAddr>, bool, Vec<u8>)> {
        self.now = now;
        let datagram = self.endpoint.poll_transmit(now)?;
        self.collect();
        Some((
            datagram.route.destinations,
            datagram.route.fresh_local_address,
            datagram.contents,
        ))
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.endpoint.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.endpoint.handle_timeout(now);
        self.collect();
    }

    fn conn(&mut self) -> &mut Connection {
        self.endpoint.connection()
    }

    fn poll_app_event(&mut self) -> Option<Event> {
        self.endpoint.poll_app_event()
    }

    fn accept_uni(&mut self) -> Option<IncomingUniStream> {
        self.endpoint.accept_uni()
    }

    fn process(&mut self) {
        self.endpoint.process();
        self.collect();
    }

    fn server_address(&self) -> SocketAddr {
        self.endpoint.migration().primary()
    }

    fn as_migr(&mut self) -> Option<&mut MigrClient> {
        Some(self)
    }
}

/// A quinn-proto client without the extension.
pub struct PlainClient {
    endpoint: Endpoint,
    ch: ConnectionHandle,
    conn: Connection,
    server: SocketAddr,
    events: Vec<Event>,
}

impl PlainClient {
    pub fn connect(now: Instant, crypto: &Crypto, server: SocketAddr) -> Self {
        let mut endpoint = Endpoint::new(Arc::new(seeded(CLIENT_SEED)), None, true, None);
        let (ch, conn) = endpoint
            .connect(now, crypto.client.clone(), server, "migr.test")
            .unwrap();
        Self {
            endpoint,
            ch,
            conn,
            server,
            events: Vec::new(),
        }
    }
}

impl ClientNode for PlainClient {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let mut buf = Vec::new();
        if let Some(DatagramEvent::ConnectionEvent(_, ev)) =
            self.endpoint
                .handle(now, from, None, None, BytesMut::from(data), &mut buf)
        {
            self.conn.handle_event(ev);
        }
        self.process();
        true
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(Vec<SocketAddr>, bool, Vec<u8>)> {
        let mut buf = Vec::new();
        let t = self.conn.poll_transmit(now, 1, &mut buf)?;
        Some((vec![t.destination], false, buf[..t.size].to_vec()))
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        self.process();
    }

    fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    fn poll_app_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    fn accept_uni(&mut self) -> Option<IncomingUniStream> {
        plain_uni_stream(&mut self.conn)
    }

    fn process(&mut self) {
        while let Some(ev) = self.conn.poll_endpoint_events() {
            if let Some(cev) = self.endpoint.handle_event(self.ch, ev) {
                self.conn.handle_event(cev);
            }
        }
        while let Some(event) = self.conn.poll() {
            self.events.push(event);
        }
    }

    fn server_address(&self) -> SocketAddr {
        self.server
    }
}

// ---------------------------------------------------------------- network

struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// Per-address traffic counters (of the main client; other clients only
/// count in `lost`).
#[derive(Default, Debug)]
pub struct Traffic {
    /// Datagrams the client sent, per destination.
    pub client_sent: HashMap<SocketAddr, usize>,
    /// Datagrams that reached an address nobody listened at.
    pub dropped: HashMap<SocketAddr, usize>,
    /// Datagrams a [`LossRule`] dropped, per destination.
    pub lost: HashMap<SocketAddr, usize>,
    /// Datagrams [`Sim::forward`] forwarded, per original destination.
    pub forwarded: HashMap<SocketAddr, usize>,
    /// Short-header datagrams the client sent whose DCID carries [`SERVER_ID`].
    pub routable_short_headers: usize,
    /// ... and those whose DCID does not.
    pub unroutable_short_headers: usize,
}

impl Traffic {
    pub fn lost_total(&self) -> usize {
        self.lost.values().sum()
    }
}

/// Which way a [`LossRule`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From a client to the server.
    ToServer,
    /// From the server to a client.
    ToClient,
    Both,
}

/// Which of the datagrams a [`LossRule`] matches it drops. Counting starts
/// at 1 with the first matching datagram sent after the rule was added.
#[derive(Clone, Debug)]
pub enum LossPattern {
    /// The next `n` matching datagrams.
    Next(usize),
    /// Exactly these (1-based) matching datagrams.
    Nth(Vec<u64>),
    /// Every k-th matching datagram: the k-th, the 2k-th, ...
    EveryKth(u64),
    /// Each matching datagram with probability `per_million` / 10^6, drawn
    /// from a xorshift generator seeded with `seed`: the same seed drops the
    /// same datagrams of the same run.
    Random { per_million: u32, seed: u64 },
}

/// Deterministic loss on the simulated network: datagrams between the
/// clients and `server` (any server address when `None`) in `direction`
/// that `pattern` selects vanish on the wire.
#[derive(Clone, Debug)]
pub struct LossRule {
    pub server: Option<SocketAddr>,
    pub direction: Direction,
    pub pattern: LossPattern,
    /// Matching datagrams seen so far.
    pub matched: u64,
    /// Matching datagrams dropped so far.
    pub dropped: u64,
    rng: u64,
}

impl LossRule {
    pub fn new(server: Option<SocketAddr>, direction: Direction, pattern: LossPattern) -> Self {
        let rng = match pattern {
            // splitmix64 spreads nearby seeds apart; xorshift must not start at 0.
            LossPattern::Random { seed, .. } => {
                let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)).max(1)
            }
            _ => 0,
        };
        Self {
            server,
            direction,
            pattern,
            matched: 0,
            dropped: 0,
            rng,
        }
    }

    /// Counts a datagram (to the server or not; `server_side` is the server's
    /// address on it) if it matches; returns whether to drop it.
    pub fn drops(&mut self, to_server: bool, server_side: SocketAddr) -> bool {
        let direction = match self.direction {
            Direction::ToServer => to_server,
            Direction::ToClient => !to_server,
            Direction::Both => true,
        };
        if !direction || self.server.is_some_and(|s| s != server_side) {
            return false;
        }
        self.matched += 1;
        let n = self.matched;
        let drop = match &self.pattern {
            LossPattern::Next(count) => n <= *count as u64,
            LossPattern::Nth(which) => which.contains(&n),
            LossPattern::EveryKth(k) => *k > 0 && n.is_multiple_of(*k),
            LossPattern::Random { per_million, .. } => {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                self.rng % 1_000_000 < u64::from(*per_million)
            }
        };
        self.dropped += u64::from(drop);
        drop
    }
}

/// Where a simulated client sits: its IP and the ports it has used.
struct ClientAddrs {
    ip: IpAddr,
    port: u16,
    ports: HashSet<u16>,
}

impl ClientAddrs {
    fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            port: 40000,
            ports: HashSet::from([40000]),
        }
    }

    fn current(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// A further client on the same network (its own IP), with its own echo app.
pub struct Peer {
    pub node: Box<dyn ClientNode>,
    pub app: EchoClient,
    addrs: ClientAddrs,
    pub rebinds: usize,
}

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub one_way: Duration,
    pub server: Box<dyn ServerNode>,
    pub client: Box<dyn ClientNode>,
    pub app: EchoClient,
    /// More clients (see [`Sim::add_client`]).
    pub others: Vec<Peer>,
    /// Addresses the server receives at (and may send from).
    pub listening: HashSet<SocketAddr>,
    /// While frozen (container downtime) the server processes nothing.
    pub frozen: bool,
    /// Loss on the wire, applied in order (a datagram counts in every rule
    /// that matches it until one drops it).
    pub loss: Vec<LossRule>,
    /// Steering at the source edge node: datagrams to a key address that no
    /// server listens at any more are forwarded to the value address (the
    /// destination rewritten, as the datapath's FORWARD does).
    pub forward: HashMap<SocketAddr, SocketAddr>,
    client_addrs: ClientAddrs,
    in_flight: BTreeMap<(Instant, u64), Packet>,
    seq: u64,
    scheduled: Vec<(Instant, NetChange)>,
    pub traffic: Traffic,
    pub rebinds: usize,
}

#[derive(Clone, Debug)]
pub enum NetChange {
    Listen(SocketAddr),
    Unlisten(SocketAddr),
    Freeze,
    Thaw,
    /// Adds a loss rule.
    Lose(LossRule),
}

/// Feeds a client's app events to its echo app, lets the app send, and
/// collects what the client puts on the wire. Returns whether it sent anything.
#[allow(clippy::too_many_arguments)]
fn pump_client(
    now: Instant,
    start: Instant,
    node: &mut dyn ClientNode,
    app: &mut EchoClient,
    addrs: &mut ClientAddrs,
    rebinds: &mut usize,
    mut traffic: Option<&mut Traffic>,
    out: &mut Vec<Packet>,
) -> bool {
    let mut progressed = false;
    node.process();
    while let Some(event) = node.poll_app_event() {
        let server = node.server_address();
        if let Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) = event {
            while let Some(stream) = node.accept_uni() {
                app.uni.accept(node.conn(), stream);
            }
        } else {
            app.on_event(now, start, server, node.conn(), event);
        }
    }
    if app.maybe_send(now, start, node.conn()) {
        node.process();
    }
    while let Some((destinations, fresh, data)) = node.poll_transmit(now) {
        progressed = true;
        if fresh {
            addrs.port += 1;
            addrs.ports.insert(addrs.port);
            *rebinds += 1;
        }
        if let Some(traffic) = traffic.as_deref_mut() {
            // Short header: the DCID (length known to the server) follows the first byte.
            if data.first().is_some_and(|b| b & 0x80 == 0) {
                let dcid = &data[1..];
                if cid_config().server_id(dcid) == Some(SERVER_ID) {
                    traffic.routable_short_headers += 1;
                } else {
                    traffic.unroutable_short_headers += 1;
                }
            }
        }
        let from = addrs.current();
        for to in destinations {
            if let Some(traffic) = traffic.as_deref_mut() {
                *traffic.client_sent.entry(to).or_default() += 1;
            }
            out.push(Packet {
                from,
                to,
                data: data.clone(),
            });
        }
    }
    progressed
}

impl Sim {
    pub fn new(
        start: Instant,
        server: Box<dyn ServerNode>,
        client: Box<dyn ClientNode>,
        server_address: SocketAddr,
        app: EchoClient,
    ) -> Self {
        Self {
            start,
            now: start,
            one_way: Duration::from_millis(5),
            server,
            client,
            app,
            others: Vec::new(),
            listening: HashSet::from([server_address]),
            frozen: false,
            loss: Vec::new(),
            forward: HashMap::new(),
            client_addrs: ClientAddrs::new("10.77.0.2".parse().unwrap()),
            in_flight: BTreeMap::new(),
            seq: 0,
            scheduled: Vec::new(),
            traffic: Traffic::default(),
            rebinds: 0,
        }
    }

    /// Adds a client at `ip` (not 10.77.0.2, the main client's) with its own
    /// echo app; it runs alongside the main one. Returns its index in `others`.
    pub fn add_client(&mut self, ip: &str, node: Box<dyn ClientNode>, app: EchoClient) -> usize {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(
            ip != self.client_addrs.ip && self.others.iter().all(|p| p.addrs.ip != ip),
            "{ip} is taken"
        );
        self.others.push(Peer {
            node,
            app,
            addrs: ClientAddrs::new(ip),
            rebinds: 0,
        });
        self.others.len() - 1
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn schedule(&mut self, at: Instant, change: NetChange) {
        self.scheduled.push((at, change));
    }

    fn is_client_ip(&self, ip: IpAddr) -> bool {
        ip == self.client_addrs.ip || self.others.iter().any(|p| p.addrs.ip == ip)
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        if !self.loss.is_empty() {
            let to_server = self.is_client_ip(from.ip());
            let server_side = if to_server { to } else { from };
            if self
                .loss
                .iter_mut()
                .any(|rule| rule.drops(to_server, server_side))
            {
                *self.traffic.lost.entry(to).or_default() += 1;
                return;
            }
        }
        self.seq += 1;
        self.in_flight.insert(
            (self.now + self.one_way, self.seq),
            Packet { from, to, data },
        );
    }

    /// Moves every endpoint's pending output onto the wire.
    fn flush(&mut self) {
        let mut out = Vec::new();
        loop {
            let mut progressed = pump_client(
                self.now,
                self.start,
                self.client.as_mut(),
                &mut self.app,
                &mut self.client_addrs,
                &mut self.rebinds,
                Some(&mut self.traffic),
                &mut out,
            );
            for peer in &mut self.others {
                progressed |= pump_client(
                    self.now,
                    self.start,
                    peer.node.as_mut(),
                    &mut peer.app,
                    &mut peer.addrs,
                    &mut peer.rebinds,
                    None,
                    &mut out,
                );
            }
            for packet in out.drain(..) {
                self.send(packet.from, packet.to, packet.data);
            }
            if !self.frozen {
                self.server.run_app();
                while let Some((source, destination, data)) = self.server.poll_transmit(self.now) {
                    progressed = true;
                    // A server without that address any more cannot send from it.
                    if self.listening.contains(&source) {
                        self.send(source, destination, data);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Runs until `hook` returns true; panics past `limit` of virtual time.
    /// The hook runs after every single event, so it can react at the very
    /// instant something happens (e.g. take the server down on an ACK).
    pub fn run(&mut self, limit: Duration, mut hook: impl FnMut(&mut Sim) -> bool) {
        let deadline = self.start + limit;
        loop {
            self.flush();
            if hook(self) {
                return;
            }
            let mut next = [
                self.in_flight.keys().next().map(|k| k.0),
                self.client.poll_timeout(),
                self.app.next_wakeup(),
                self.scheduled.iter().map(|s| s.0).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            for peer in &mut self.others {
                next = [next, peer.node.poll_timeout(), peer.app.next_wakeup()]
                    .into_iter()
                    .flatten()
                    .min();
            }
            if !self.frozen {
                next = [next, self.server.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
            }
            let Some(next) = next else {
                panic!("simulation stalled at {:?}", self.elapsed());
            };
            assert!(
                next <= deadline,
                "simulation ran past {limit:?} ({} of {} requests done)",
                self.app.records.len(),
                self.app.total
            );
            self.now = next.max(self.now);
            self.step();
        }
    }

    /// Handles one thing that is due: scheduled network changes first, then
    /// one datagram, then timers.
    fn step(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut later = Vec::new();
        for (at, change) in self.scheduled.drain(..) {
            if at <= now {
                due.push(change);
            } else {
                later.push((at, change));
            }
        }
        self.scheduled = later;
        for change in due {
            match change {
                NetChange::Listen(a) => {
                    self.listening.insert(a);
                }
                NetChange::Unlisten(a) => {
                    self.listening.remove(&a);
                }
                NetChange::Freeze => self.frozen = true,
                NetChange::Thaw => self.frozen = false,
                NetChange::Lose(rule) => self.loss.push(rule),
            }
        }
        if let Some(entry) = self.in_flight.first_entry()
            && entry.key().0 <= now
        {
            let mut packet = entry.remove();
            if !self.listening.contains(&packet.to)
                && let Some(to) = self.forward.get(&packet.to)
            {
                *self.traffic.forwarded.entry(packet.to).or_default() += 1;
                packet.to = *to;
            }
            if packet.to.ip() == self.client_addrs.ip {
                if self.client_addrs.ports.contains(&packet.to.port()) {
                    self.client.handle_datagram(now, packet.from, &packet.data);
                }
            } else if let Some(peer) = self
                .others
                .iter_mut()
                .find(|p| p.addrs.ip == packet.to.ip())
            {
                if peer.addrs.ports.contains(&packet.to.port()) {
                    peer.node.handle_datagram(now, packet.from, &packet.data);
                }
            } else if self.listening.contains(&packet.to) && !self.frozen {
                self.server
                    .handle_datagram(now, packet.to, packet.from, &packet.data);
            } else {
                *self.traffic.dropped.entry(packet.to).or_default() += 1;
            }
            return;
        }
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        for peer in &mut self.others {
            if peer.node.poll_timeout().is_some_and(|t| t <= now) {
                peer.node.handle_timeout(now);
            }
        }
        if !self.frozen && self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
    }
}

/// A migration-aware client and server on the simulated network.
pub fn migr_pair(
    crypto: &Crypto,
    strategy: Strategy,
    server_address: SocketAddr,
    pool: Vec<SocketAddr>,
    app: EchoClient,
) -> Sim {
    migr_pair_with(
        crypto,
        ClientMigrationConfig::new(strategy),
        server_address,
        pool,
        app,
    )
}

/// [`migr_pair`] with the client's settings given whole.
pub fn migr_pair_with(
    crypto: &Crypto,
    config: ClientMigrationConfig,
    server_address: SocketAddr,
    pool: Vec<SocketAddr>,
    app: EchoClient,
) -> Sim {
    let start = Instant::now();
    let server = MigrServer::new(crypto, pool);
    let client = MigrClient::connect(start, crypto, config, server_address);
    Sim::new(
        start,
        Box::new(server),
        Box::new(client),
        server_address,
        app,
    )
}
