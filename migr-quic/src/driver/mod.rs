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
//!
//! Parts: `streams` (the application's connection and stream handles, the
//! same for both roles), `server` ([`Server`] and its I/O task) and
//! `client` ([`Client`] and its I/O task). What they share, the locked
//! endpoint and the wake-ups ([`Role`], `Shared`), is defined here.
//!
//! [`ServerEndpoint`]: crate::server::ServerEndpoint
//! [`ClientEndpoint`]: crate::client::ClientEndpoint

mod client;
mod server;
mod streams;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::anyhow;
use bytes::BytesMut;
use quinn_proto::{ConnectionError, ConnectionHandle};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};

pub use client::{Client, ClientRecvStream, ClientSendStream};
pub use server::{Server, ServerConnection, ServerRecvStream, ServerSendStream};
pub use streams::{Connection, RecvStream, SendStream};

use crate::control::IncomingUniStream;

const MAX_DATAGRAM: usize = 65_535;

/// Received datagram: (local address, remote address, bytes).
type Received = (SocketAddr, SocketAddr, BytesMut);

/// What the shared stream handles need from an endpoint: implemented by
/// [`ServerEndpoint`](crate::server::ServerEndpoint) and
/// [`ClientEndpoint`](crate::client::ClientEndpoint).
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
