//! A deterministic, socket-free network for quinn-proto endpoints: virtual
//! time, addresses that can appear and disappear, fixed latency. The server can
//! be "migrated": frozen for T ms, then listening at a new address.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use migr_common::cid::CidConfig;
use migr_quic::tls::{self, SelfSigned};
use migr_quic::{
    ClientEndpoint, ClientEvent, ClientMigrationConfig, RoutableCidGenerator, ServerEndpoint,
    ServerEndpointConfig, ServerEvent, Strategy,
};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, ServerConfig, StreamEvent, StreamId, TransportConfig,
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

pub fn crypto() -> Crypto {
    let cert = SelfSigned::generate(&["migr.test"]).unwrap();
    Crypto {
        server: Arc::new(cert.server_config(TransportConfig::default()).unwrap()),
        client: tls::client_config(cert.cert_der.clone(), TransportConfig::default()).unwrap(),
    }
}

// ---------------------------------------------------------------- echo apps

/// Server application: echoes every bidirectional stream back, then finishes it.
#[derive(Default)]
pub struct EchoServer {
    requests: HashMap<StreamId, Vec<u8>>,
    replies: HashMap<StreamId, (Vec<u8>, usize)>,
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
            Event::Stream(StreamEvent::Readable { id }) => self.read(conn, id),
            Event::Stream(StreamEvent::Writable { id }) => self.write(conn, id),
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
        let Event::Stream(StreamEvent::Readable { id }) = event else {
            return;
        };
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
            endpoint: ServerEndpoint::new(ServerEndpointConfig {
                server_config: crypto.server.clone(),
                cid_generator: generator,
                pool,
            }),
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
                    app.on_event(&mut connection.conn, event);
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
                Arc::new(EndpointConfig::default()),
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
            endpoint: ClientEndpoint::connect(
                now,
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
        let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
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

/// Per-address traffic counters.
#[derive(Default, Debug)]
pub struct Traffic {
    /// Datagrams the client sent, per destination.
    pub client_sent: HashMap<SocketAddr, usize>,
    /// Datagrams that reached an address nobody listened at.
    pub dropped: HashMap<SocketAddr, usize>,
    /// Short-header datagrams the client sent whose DCID carries [`SERVER_ID`].
    pub routable_short_headers: usize,
    /// ... and those whose DCID does not.
    pub unroutable_short_headers: usize,
}

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub one_way: Duration,
    pub server: Box<dyn ServerNode>,
    pub client: Box<dyn ClientNode>,
    pub app: EchoClient,
    /// Addresses the server receives at (and may send from).
    pub listening: HashSet<SocketAddr>,
    /// While frozen (container downtime) the server processes nothing.
    pub frozen: bool,
    client_ip: std::net::IpAddr,
    client_port: u16,
    client_ports: HashSet<u16>,
    in_flight: BTreeMap<(Instant, u64), Packet>,
    seq: u64,
    scheduled: Vec<(Instant, NetChange)>,
    pub traffic: Traffic,
    pub rebinds: usize,
}

#[derive(Clone, Copy, Debug)]
pub enum NetChange {
    Listen(SocketAddr),
    Unlisten(SocketAddr),
    Freeze,
    Thaw,
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
            listening: HashSet::from([server_address]),
            frozen: false,
            client_ip: "10.77.0.2".parse().unwrap(),
            client_port: 40000,
            client_ports: HashSet::from([40000]),
            in_flight: BTreeMap::new(),
            seq: 0,
            scheduled: Vec::new(),
            traffic: Traffic::default(),
            rebinds: 0,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn schedule(&mut self, at: Instant, change: NetChange) {
        self.scheduled.push((at, change));
    }

    fn client_address(&self) -> SocketAddr {
        SocketAddr::new(self.client_ip, self.client_port)
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.seq += 1;
        self.in_flight.insert(
            (self.now + self.one_way, self.seq),
            Packet { from, to, data },
        );
    }

    /// Moves every endpoint's pending output onto the wire.
    fn flush(&mut self) {
        loop {
            let mut progressed = false;
            self.client.process();
            while let Some(event) = self.client.poll_app_event() {
                let server = self.client.server_address();
                self.app
                    .on_event(self.now, self.start, server, self.client.conn(), event);
            }
            if self
                .app
                .maybe_send(self.now, self.start, self.client.conn())
            {
                self.client.process();
            }
            while let Some((destinations, fresh, data)) = self.client.poll_transmit(self.now) {
                progressed = true;
                if fresh {
                    self.client_port += 1;
                    self.client_ports.insert(self.client_port);
                    self.rebinds += 1;
                }
                // Short header: the DCID (length known to the server) follows the first byte.
                if data.first().is_some_and(|b| b & 0x80 == 0) {
                    let dcid = &data[1..];
                    if cid_config().server_id(dcid) == Some(SERVER_ID) {
                        self.traffic.routable_short_headers += 1;
                    } else {
                        self.traffic.unroutable_short_headers += 1;
                    }
                }
                let from = self.client_address();
                for to in destinations {
                    *self.traffic.client_sent.entry(to).or_default() += 1;
                    self.send(from, to, data.clone());
                }
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
        self.scheduled.retain(|(at, change)| {
            if *at <= now {
                due.push(*change);
                false
            } else {
                true
            }
        });
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
            }
        }
        if let Some(entry) = self.in_flight.first_entry()
            && entry.key().0 <= now
        {
            let packet = entry.remove();
            if packet.to.ip() == self.client_ip {
                if self.client_ports.contains(&packet.to.port()) {
                    self.client.handle_datagram(now, packet.from, &packet.data);
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
    let start = Instant::now();
    let server = MigrServer::new(crypto, pool);
    let client = MigrClient::connect(
        start,
        crypto,
        ClientMigrationConfig::new(strategy),
        server_address,
    );
    Sim::new(
        start,
        Box::new(server),
        Box::new(client),
        server_address,
        app,
    )
}
