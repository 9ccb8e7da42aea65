//! [`Server`]: the sans-I/O [`ServerEndpoint`] on tokio, with one UDP socket
//! per address it listens at (addresses come and go as the service moves),
//! and the task that moves its datagrams and events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use quinn_proto::{ConnectionHandle, Event};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::streams::{Connection, RecvStream, SendStream};
use super::{Received, Role, Shared, State, lock, read_socket, sleep_until};
use crate::control::IncomingUniStream;
use crate::server::{MigrationId, ServerEndpoint, ServerEndpointConfig, ServerEvent};

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
