//! [`Client`]: the sans-I/O [`ClientEndpoint`] on tokio. One connection,
//! one socket at a time: when the endpoint asks for a fresh local address
//! the task binds a new port and keeps reading the old one for stragglers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, anyhow};
use quinn_proto::{ConnectionHandle, ConnectionStats, Event};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::streams::{Connection, RecvStream, SendStream};
use super::{Received, Role, Shared, State, lost, read_socket, sleep_until};
use crate::client::{ClientEndpoint, ClientEvent, ClientMigrationConfig, TriggerError};
use crate::control::IncomingUniStream;

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
