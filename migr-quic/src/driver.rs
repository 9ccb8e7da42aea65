//! A thin tokio shell around [`ServerEndpoint`] and [`ClientEndpoint`]: UDP
//! sockets, timers, and async stream handles. All protocol decisions stay in
//! the sans-I/O endpoints; this module only moves bytes and wakes tasks.
//!
//! ```no_run
//! # async fn demo(config: migr_quic::ServerEndpointConfig) -> anyhow::Result<()> {
//! use migr_quic::driver::Server;
//! let server = Server::bind(config, "10.77.1.1:4433".parse()?).await?;
//! while let Some(conn) = server.accept().await {
//!     tokio::spawn(async move {
//!         while let Ok((mut send, mut recv)) = conn.accept_bi().await {
//!             let request = recv.read_to_end(64 * 1024).await?;
//!             send.write_all(&request).await?;
//!             send.finish()?;
//!         }
//!         anyhow::Ok(())
//!     });
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context, anyhow};
use bytes::BytesMut;
use quinn_proto::{
    ConnectionError, ConnectionHandle, ConnectionStats, Dir, Event, ReadError, ReadableError,
    StreamId, VarInt, WriteError,
};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::client::{ClientEndpoint, ClientEvent, ClientMigrationConfig, TriggerError};
use crate::control::{IncomingUniStream, UniStreamEnd};
use crate::server::{MigrationId, ServerEndpoint, ServerEndpointConfig, ServerEvent};

const MAX_DATAGRAM: usize = 65_535;

/// Received datagram: (local address, remote address, bytes).
type Received = (SocketAddr, SocketAddr, BytesMut);

/// What the shared stream handles need from an endpoint: implemented by
/// [`ServerEndpoint`] and [`ClientEndpoint`].
pub trait Role: Send + 'static {
    fn conn(&mut self, ch: ConnectionHandle) -> Option<&mut quinn_proto::Connection>;
    /// Bookkeeping after the application touched a connection.
    fn process(&mut self, ch: ConnectionHandle);
    /// The peer's next unidirectional stream that is not a control stream.
    fn accept_uni(&mut self, ch: ConnectionHandle) -> Option<IncomingUniStream>;
}

struct Shared<R> {
    state: Mutex<State<R>>,
    /// Wakes application tasks: something changed.
    changed: Notify,
    /// Wakes the I/O task: something may need sending.
    io: Notify,
}

struct State<R> {
    role: R,
    /// Why a connection ended, for its current generation only.
    closed: HashMap<ConnectionHandle, ConnectionError>,
    /// quinn-proto reuses a handle once its connection is drained: each
    /// acceptance of a handle starts a new generation, and an application
    /// handle of an older generation sees its connection as lost instead of
    /// reaching the new one (and the new one does not inherit the old loss).
    generations: HashMap<ConnectionHandle, u64>,
}

impl<R> State<R> {
    fn new(role: R) -> Self {
        Self {
            role,
            closed: HashMap::new(),
            generations: HashMap::new(),
        }
    }

    fn generation(&self, ch: ConnectionHandle) -> u64 {
        self.generations.get(&ch).copied().unwrap_or(0)
    }

    /// A new connection took `ch`: forget the previous one's loss.
    fn reuse(&mut self, ch: ConnectionHandle) -> u64 {
        self.closed.remove(&ch);
        let generation = self.generations.entry(ch).or_insert(0);
        *generation += 1;
        *generation
    }
}

impl<R: Role> Shared<R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        // A panicking task must not wedge every other one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `attempt` until it yields, re-running it whenever something changed.
    async fn until<T>(
        &self,
        mut attempt: impl FnMut(&mut State<R>) -> Option<anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = attempt(&mut self.lock()) {
                self.io.notify_one();
                return result;
            }
            notified.await;
        }
    }
}

// ---------------------------------------------------------------- streams

/// A connection as the application sees it (either role).
pub struct Connection<R: Role> {
    shared: Arc<Shared<R>>,
    ch: ConnectionHandle,
    /// Which connection behind `ch` this is (see [`State::generations`]).
    generation: u64,
}

impl<R: Role> Clone for Connection<R> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            ch: self.ch,
            generation: self.generation,
        }
    }
}

/// The sending half of a stream.
pub struct SendStream<R: Role> {
    conn: Connection<R>,
    id: StreamId,
}

/// The receiving half of a stream.
pub struct RecvStream<R: Role> {
    conn: Connection<R>,
    id: StreamId,
    /// First bytes the extension already read (unidirectional streams).
    prefix: Vec<u8>,
    /// How the stream had ended by then, if it had.
    end: Option<UniStreamEnd>,
}

fn lost<R>(
    state: &State<R>,
    (ch, generation): (ConnectionHandle, u64),
) -> Option<anyhow::Result<()>> {
    if state.generation(ch) != generation {
        return Some(Err(anyhow!("connection lost: its handle was reused")));
    }
    state
        .closed
        .get(&ch)
        .map(|e| Err(anyhow!("connection lost: {e}")))
}

impl<R: Role> Connection<R> {
    /// Opens a bidirectional stream (waits for stream credit).
    pub async fn open_bi(&self) -> anyhow::Result<(SendStream<R>, RecvStream<R>)> {
        let (ch, key) = (self.ch, self.key());
        let id = self
            .shared
            .until(|state| {
                if let Some(Err(e)) = lost(state, key) {
                    return Some(Err(e));
                }
                let id = state.role.conn(ch)?.streams().open(Dir::Bi)?;
                state.role.process(ch);
                Some(Ok(id))
            })
            .await?;
        Ok(self.halves(id))
    }

    /// Waits for the peer's next bidirectional stream.
    pub async fn accept_bi(&self) -> anyhow::Result<(SendStream<R>, RecvStream<R>)> {
        let (ch, key) = (self.ch, self.key());
        let id = self
            .shared
            .until(|state| {
                if let Some(Err(e)) = lost(state, key) {
                    return Some(Err(e));
                }
                let conn = state.role.conn(ch)?;
                let id = conn.streams().accept(Dir::Bi)?;
                state.role.process(ch);
                Some(Ok(id))
            })
            .await?;
        Ok(self.halves(id))
    }

    /// Opens a unidirectional stream of the application's (waits for
    /// stream credit, which the extension's control streams share).
    pub async fn open_uni(&self) -> anyhow::Result<SendStream<R>> {
        let (ch, key) = (self.ch, self.key());
        let id = self
            .shared
            .until(|state| {
                if let Some(Err(e)) = lost(state, key) {
                    return Some(Err(e));
                }
                let id = state.role.conn(ch)?.streams().open(Dir::Uni)?;
                state.role.process(ch);
                Some(Ok(id))
            })
            .await?;
        Ok(SendStream {
            conn: self.clone(),
            id,
        })
    }

    /// Waits for the peer's next unidirectional stream that is not a
    /// migration control stream. The stream arrives intact: its reads start
    /// with the bytes the extension looked at.
    pub async fn accept_uni(&self) -> anyhow::Result<RecvStream<R>> {
        let (ch, key) = (self.ch, self.key());
        let incoming = self
            .shared
            .until(|state| {
                if let Some(Err(e)) = lost(state, key) {
                    return Some(Err(e));
                }
                state.role.accept_uni(ch).map(Ok)
            })
            .await?;
        Ok(RecvStream {
            conn: self.clone(),
            id: incoming.id,
            prefix: incoming.prefix,
            end: incoming.end,
        })
    }

    fn key(&self) -> (ConnectionHandle, u64) {
        (self.ch, self.generation)
    }

    /// This connection is still the one behind its handle.
    fn current(&self, state: &State<R>) -> bool {
        state.generation(self.ch) == self.generation
    }

    fn halves(&self, id: StreamId) -> (SendStream<R>, RecvStream<R>) {
        (
            SendStream {
                conn: self.clone(),
                id,
            },
            RecvStream {
                conn: self.clone(),
                id,
                prefix: Vec::new(),
                end: None,
            },
        )
    }

    /// quinn-proto's statistics of this connection.
    pub fn stats(&self) -> Option<ConnectionStats> {
        let mut state = self.shared.lock();
        if !self.current(&state) {
            return None;
        }
        state.role.conn(self.ch).map(|c| c.stats())
    }

    /// Closes the connection with an application error code.
    pub fn close(&self, code: u32, reason: &[u8]) {
        let mut state = self.shared.lock();
        if !self.current(&state) {
            return;
        }
        if let Some(conn) = state.role.conn(self.ch) {
            conn.close(
                Instant::now(),
                VarInt::from_u32(code),
                bytes::Bytes::copy_from_slice(reason),
            );
        }
        state.role.process(self.ch);
        self.shared.io.notify_one();
    }

    pub fn handle(&self) -> ConnectionHandle {
        self.ch
    }
}

impl<R: Role> SendStream<R> {
    pub async fn write_all(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let (ch, key, id) = (self.conn.ch, self.conn.key(), self.id);
        let mut written = 0;
        self.conn
            .shared
            .until(|state| {
                if let Some(Err(e)) = lost(state, key) {
                    return Some(Err(e));
                }
                let conn = state.role.conn(ch)?;
                let mut stream = conn.send_stream(id);
                let outcome = loop {
                    if written == data.len() {
                        break Some(Ok(()));
                    }
                    match stream.write(&data[written..]) {
                        Ok(n) => written += n,
                        Err(WriteError::Blocked) => break None,
                        Err(e) => break Some(Err(anyhow!("write failed: {e}"))),
                    }
                };
                state.role.process(ch);
                outcome
            })
            .await
    }

    /// Ends the stream; the data already written is still delivered.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        let mut state = self.conn.shared.lock();
        if !self.conn.current(&state) {
            return Err(anyhow!("connection gone"));
        }
        let conn = state
            .role
            .conn(self.conn.ch)
            .ok_or_else(|| anyhow!("connection gone"))?;
        conn.send_stream(self.id)
            .finish()
            .map_err(|e| anyhow!("finish failed: {e}"))?;
        state.role.process(self.conn.ch);
        self.conn.shared.io.notify_one();
        Ok(())
    }
}

impl<R: Role> SendStream<R> {
    pub fn id(&self) -> StreamId {
        self.id
    }
}

impl<R: Role> RecvStream<R> {
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Reads until the peer finishes the stream; fails beyond `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> anyhow::Result<Vec<u8>> {
        let (ch, key, id) = (self.conn.ch, self.conn.key(), self.id);
        let mut data = std::mem::take(&mut self.prefix);
        if data.len() > limit {
            return Err(anyhow!("stream exceeds {limit} bytes"));
        }
        match self.end.take() {
            Some(UniStreamEnd::Finished) => return Ok(data),
            Some(UniStreamEnd::Reset(code)) => {
                return Err(anyhow!("stream reset by peer ({code})"));
            }
            None => {}
        }
        self.conn
            .shared
            .until(|state| {
                if let Some(Err(e)) = lost(state, key) {
                    return Some(Err(e));
                }
                let conn = state.role.conn(ch)?;
                let mut stream = conn.recv_stream(id);
                let outcome = match stream.read(true) {
                    Ok(mut chunks) => {
                        let outcome = loop {
                            match chunks.next(usize::MAX) {
                                Ok(Some(chunk)) => {
                                    data.extend_from_slice(&chunk.bytes);
                                    if data.len() > limit {
                                        break Some(Err(anyhow!("stream exceeds {limit} bytes")));
                                    }
                                }
                                Ok(None) => break Some(Ok(std::mem::take(&mut data))),
                                Err(ReadError::Blocked) => break None,
                                Err(ReadError::Reset(code)) => {
                                    break Some(Err(anyhow!("stream reset by peer ({code})")));
                                }
                            }
                        };
                        let _ = chunks.finalize();
                        outcome
                    }
                    Err(ReadableError::ClosedStream) => Some(Err(anyhow!("stream closed"))),
                    Err(e) => Some(Err(anyhow!("read failed: {e}"))),
                };
                state.role.process(ch);
                outcome
            })
            .await
    }
}

// ---------------------------------------------------------------- server

impl Role for ServerEndpoint {
    fn conn(&mut self, ch: ConnectionHandle) -> Option<&mut quinn_proto::Connection> {
        self.connection(ch).map(|c| &mut c.conn)
    }

    fn process(&mut self, ch: ConnectionHandle) {
        ServerEndpoint::process(self, ch);
    }

    fn accept_uni(&mut self, ch: ConnectionHandle) -> Option<IncomingUniStream> {
        self.connection(ch)?.accept_uni()
    }
}

pub type ServerConnection = Connection<ServerEndpoint>;
pub type ServerSendStream = SendStream<ServerEndpoint>;
pub type ServerRecvStream = RecvStream<ServerEndpoint>;

/// A migr QUIC server on tokio.
pub struct Server {
    shared: Arc<Shared<ServerEndpoint>>,
    sockets: Arc<Mutex<HashMap<SocketAddr, SocketEntry>>>,
    received: mpsc::Sender<Received>,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<(ConnectionHandle, u64)>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<(ConnectionHandle, ServerEvent)>>,
    acks: Arc<Mutex<Vec<(ConnectionHandle, ServerEvent)>>>,
    io_task: JoinHandle<()>,
}

struct SocketEntry {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

impl Drop for SocketEntry {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Server {
    /// Starts a server listening at `listen`. With a specific IP, replies
    /// leave from the address the client reached. A wildcard (`0.0.0.0:PORT`)
    /// leaves the reply's source address to the kernel's route lookup, which
    /// is right for a host with one address, e.g. a container that CRIU
    /// restores elsewhere with a new IP (a socket bound to the old specific IP
    /// cannot be restored there).
    pub async fn bind(config: ServerEndpointConfig, listen: SocketAddr) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(ServerEndpoint::new(config))),
            changed: Notify::new(),
            io: Notify::new(),
        });
        let (received_tx, received_rx) = mpsc::channel(1024);
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let sockets = Arc::new(Mutex::new(HashMap::new()));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let io_task = tokio::spawn(server_io(
            shared.clone(),
            sockets.clone(),
            received_rx,
            incoming_tx,
            events_tx,
            acks.clone(),
        ));
        let server = Self {
            shared,
            sockets,
            received: received_tx,
            incoming: tokio::sync::Mutex::new(incoming_rx),
            events: tokio::sync::Mutex::new(events_rx),
            acks,
            io_task,
        };
        server.add_address(listen).await?;
        Ok(server)
    }

    /// Starts listening at one more address (e.g. the one about to be announced).
    pub async fn add_address(&self, address: SocketAddr) -> anyhow::Result<SocketAddr> {
        let socket = Arc::new(
            UdpSocket::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?,
        );
        let local = socket.local_addr()?;
        let reader = tokio::spawn(read_socket(socket.clone(), self.received.clone()));
        lock(&self.sockets).insert(local, SocketEntry { socket, reader });
        Ok(local)
    }

    /// Stops listening at `address`.
    pub fn remove_address(&self, address: SocketAddr) -> bool {
        lock(&self.sockets).remove(&address).is_some()
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        lock(&self.sockets).keys().copied().collect()
    }

    /// Sets the pool sent to connections accepted from now on.
    pub fn set_pool(&self, pool: Vec<SocketAddr>) {
        self.shared.lock().role.set_pool(pool);
    }

    /// Next accepted connection; `None` once the server is gone.
    pub async fn accept(&self) -> Option<ServerConnection> {
        let (ch, generation) = self.incoming.lock().await.recv().await?;
        Some(Connection {
            shared: self.shared.clone(),
            ch,
            generation,
        })
    }

    /// Next extension event (negotiation, TRIGGER, acknowledgements).
    pub async fn next_event(&self) -> Option<(ConnectionHandle, ServerEvent)> {
        self.events.lock().await.recv().await
    }

    /// Announces `address` to every client that negotiated the extension and
    /// resolves once each of them acknowledged it (or refused it, or lost its
    /// connection). Returns how many acknowledged. Only then may the service
    /// move (seed 000, step 4). Listen at `address` first if the move keeps
    /// this process (see [`Server::add_address`]).
    pub async fn announce_migration(&self, address: SocketAddr) -> anyhow::Result<usize> {
        let pending: Vec<(ConnectionHandle, MigrationId)> = {
            let mut state = self.shared.lock();
            state.role.announce_migration_to_all(address)
        };
        self.shared.io.notify_one();
        let mut remaining = pending.clone();
        let mut acknowledged = 0;
        self.shared
            .until(|state| {
                let acks = std::mem::take(&mut *lock(&self.acks));
                for (ch, event) in acks {
                    let id = match event {
                        ServerEvent::MigrationAcknowledged { id, .. } => {
                            acknowledged += usize::from(remaining.contains(&(ch, id)));
                            id
                        }
                        ServerEvent::MigrationRefused { id, .. } => id,
                        _ => continue,
                    };
                    remaining.retain(|p| *p != (ch, id));
                }
                remaining.retain(|(ch, _)| !state.closed.contains_key(ch));
                remaining.is_empty().then_some(Ok(acknowledged))
            })
            .await
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().role.open_connections()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.io_task.abort();
        lock(&self.sockets).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_socket(socket: Arc<UdpSocket>, out: mpsc::Sender<Received>) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, remote)) => {
                if out
                    .send((local, remote, BytesMut::from(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // ICMP errors surface here on Linux; they are no reason to stop.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

async fn server_io(
    shared: Arc<Shared<ServerEndpoint>>,
    sockets: Arc<Mutex<HashMap<SocketAddr, SocketEntry>>>,
    mut received: mpsc::Receiver<Received>,
    incoming: mpsc::UnboundedSender<(ConnectionHandle, u64)>,
    events: mpsc::UnboundedSender<(ConnectionHandle, ServerEvent)>,
    acks: Arc<Mutex<Vec<(ConnectionHandle, ServerEvent)>>>,
) {
    let mut outgoing = Vec::new();
    loop {
        let timeout = {
            let mut state = shared.lock();
            let now = Instant::now();
            while let Some(ch) = state.role.accept() {
                let generation = state.reuse(ch);
                let _ = incoming.send((ch, generation));
            }
            let State { role, closed, .. } = &mut *state;
            while let Some((ch, event)) = role.poll_event() {
                if matches!(
                    event,
                    ServerEvent::MigrationAcknowledged { .. }
                        | ServerEvent::MigrationRefused { .. }
                ) {
                    lock(&acks).push((ch, event.clone()));
                }
                let _ = events.send((ch, event));
            }
            for ch in role.connection_handles() {
                if let Some(connection) = role.connection(ch) {
                    // Stream progress is polled by the tasks; only loss matters here.
                    while let Some(event) = connection.poll_app_event() {
                        if let Event::ConnectionLost { reason } = event {
                            closed.insert(ch, reason);
                        }
                    }
                    if connection.conn.is_drained() {
                        // Lets the endpoint forget it.
                        role.process(ch);
                    }
                }
            }
            while let Some(datagram) = role.poll_transmit(now) {
                outgoing.push(datagram);
            }
            role.poll_timeout()
        };
        shared.changed.notify_waiters();
        for datagram in outgoing.drain(..) {
            let socket = lock(&sockets)
                .get(&datagram.source)
                .map(|entry| entry.socket.clone());
            // No socket: that address is gone; the datagram is lost like on a wire.
            if let Some(socket) = socket {
                let _ = socket
                    .send_to(&datagram.contents, datagram.destination)
                    .await;
            }
        }
        let sleep = sleep_until(timeout);
        tokio::select! {
            datagram = received.recv() => {
                let Some((local, remote, data)) = datagram else { return };
                let mut state = shared.lock();
                let now = Instant::now();
                state.role.handle_datagram(now, local, remote, data);
                // Drain whatever else already arrived before sending.
                while let Ok((local, remote, data)) = received.try_recv() {
                    state.role.handle_datagram(now, local, remote, data);
                }
            }
            _ = sleep => shared.lock().role.handle_timeout(Instant::now()),
            _ = shared.io.notified() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------- client

const CLIENT: ConnectionHandle = ConnectionHandle(0);

impl Role for ClientEndpoint {
    fn conn(&mut self, _: ConnectionHandle) -> Option<&mut quinn_proto::Connection> {
        Some(self.connection())
    }

    fn process(&mut self, _: ConnectionHandle) {
        ClientEndpoint::process(self);
    }

    fn accept_uni(&mut self, _: ConnectionHandle) -> Option<IncomingUniStream> {
        ClientEndpoint::accept_uni(self)
    }
}

pub type ClientSendStream = SendStream<ClientEndpoint>;
pub type ClientRecvStream = RecvStream<ClientEndpoint>;

/// A migr QUIC client connection on tokio.
pub struct Client {
    conn: Connection<ClientEndpoint>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<ClientEvent>>,
    io_task: JoinHandle<()>,
}

impl Client {
    /// Connects to `server` from a socket bound to `bind` (port 0 is fine;
    /// after a server move the client rebinds to a fresh port on the same IP).
    pub async fn connect(
        client_config: quinn_proto::ClientConfig,
        migration: ClientMigrationConfig,
        bind: SocketAddr,
        server: SocketAddr,
        server_name: &str,
    ) -> anyhow::Result<Self> {
        let endpoint = ClientEndpoint::connect(
            Instant::now(),
            client_config,
            migration,
            server,
            server_name,
        )
        .map_err(|e| anyhow!("connect: {e}"))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(endpoint)),
            changed: Notify::new(),
            io: Notify::new(),
        });
        let socket = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("binding {bind}"))?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let io_task = tokio::spawn(client_io(shared.clone(), socket, bind, events_tx));
        let conn = Connection {
            shared: shared.clone(),
            ch: CLIENT,
            generation: 0,
        };
        let client = Self {
            conn,
            events: tokio::sync::Mutex::new(events_rx),
            io_task,
        };
        shared
            .until(|state| {
                if let Some(Err(e)) = lost(state, (CLIENT, 0)) {
                    return Some(Err(e));
                }
                (!state.role.connection().is_handshaking()).then_some(Ok(()))
            })
            .await?;
        Ok(client)
    }

    pub fn connection(&self) -> &Connection<ClientEndpoint> {
        &self.conn
    }

    pub async fn open_bi(&self) -> anyhow::Result<(ClientSendStream, ClientRecvStream)> {
        self.conn.open_bi().await
    }

    /// Opens a unidirectional stream of the application's.
    pub async fn open_uni(&self) -> anyhow::Result<ClientSendStream> {
        self.conn.open_uni().await
    }

    /// The server's next unidirectional stream that is not a control stream.
    pub async fn accept_uni(&self) -> anyhow::Result<ClientRecvStream> {
        self.conn.accept_uni().await
    }

    /// Asks the server to migrate.
    pub fn send_trigger(&self) -> Result<(), TriggerError> {
        let result = self.conn.shared.lock().role.send_trigger();
        self.conn.shared.io.notify_one();
        result
    }

    /// Next extension event.
    pub async fn next_event(&self) -> Option<ClientEvent> {
        self.events.lock().await.recv().await
    }

    /// Extension events already available, without waiting.
    pub fn try_events(&self) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        if let Ok(mut rx) = self.events.try_lock() {
            while let Ok(event) = rx.try_recv() {
                out.push(event);
            }
        }
        out
    }

    /// The server's current real address.
    pub fn server_address(&self) -> SocketAddr {
        self.conn.shared.lock().role.migration().primary()
    }

    pub fn is_negotiated(&self) -> bool {
        self.conn.shared.lock().role.migration().is_negotiated()
    }

    pub fn stats(&self) -> ConnectionStats {
        self.conn.shared.lock().role.connection().stats()
    }

    /// Closes the connection and waits briefly for the close to be sent.
    pub async fn close(&self) {
        self.conn.close(0, b"done");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.io_task.abort();
    }
}

async fn client_io(
    shared: Arc<Shared<ClientEndpoint>>,
    socket: UdpSocket,
    bind: SocketAddr,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let (received_tx, mut received) = mpsc::channel::<Received>(1024);
    let mut current = Arc::new(socket);
    let mut reader = tokio::spawn(read_socket(current.clone(), received_tx.clone()));
    // The previous socket keeps reading for late datagrams to the old port.
    let mut previous: Option<JoinHandle<()>> = None;
    let mut outgoing = Vec::new();
    loop {
        let timeout = {
            let mut state = shared.lock();
            let now = Instant::now();
            let State { role, closed, .. } = &mut *state;
            while let Some(event) = role.poll_app_event() {
                if let Event::ConnectionLost { reason } = event {
                    closed.insert(CLIENT, reason);
                }
            }
            while let Some(event) = role.poll_event() {
                let _ = events.send(event);
            }
            while let Some(datagram) = role.poll_transmit(now) {
                outgoing.push(datagram);
            }
            role.poll_timeout()
        };
        shared.changed.notify_waiters();
        for datagram in outgoing.drain(..) {
            if datagram.route.fresh_local_address {
                let rebind = SocketAddr::new(bind.ip(), 0);
                if let Ok(fresh) = UdpSocket::bind(rebind).await {
                    current = Arc::new(fresh);
                    if let Some(old) = previous.take() {
                        old.abort();
                    }
                    previous = Some(std::mem::replace(
                        &mut reader,
                        tokio::spawn(read_socket(current.clone(), received_tx.clone())),
                    ));
                }
            }
            for destination in &datagram.route.destinations {
                let _ = current.send_to(&datagram.contents, *destination).await;
            }
        }
        let sleep = sleep_until(timeout);
        tokio::select! {
            datagram = received.recv() => {
                let Some((_, remote, data)) = datagram else { return };
                let mut state = shared.lock();
                let now = Instant::now();
                state.role.handle_datagram(now, remote, data);
                while let Ok((_, remote, data)) = received.try_recv() {
                    state.role.handle_datagram(now, remote, data);
                }
            }
            _ = sleep => shared.lock().role.handle_timeout(Instant::now()),
            _ = shared.io.notified() => {}
        }
    }
}
