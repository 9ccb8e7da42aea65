//! How the other threads (the control socket, the metrics endpoint) reach
//! the engine thread: a channel of calls and an eventfd that wakes it.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, mpsc},
    time::Instant,
};

use migr_control::api::{ApiError, ErrorCode, Op, ServiceSpec};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{ResolvedForward, internal};
use crate::neighbour::resolve_forward;

/// A request for the engine thread.
pub enum Call {
    Op {
        op: Box<Op>,
        /// When the request was read from the socket (for the latency figure).
        received: Instant,
        /// A `service.add`'s forward target, resolved off the engine thread.
        resolved: Option<Result<ResolvedForward, ApiError>>,
        reply: oneshot::Sender<Result<Value, ApiError>>,
    },
    Shutdown {
        /// Detach the XDP program (otherwise it stays attached, pinned).
        detach: bool,
        reply: oneshot::Sender<()>,
    },
}

/// Calls waiting for the engine at most. Each control or metrics
/// connection has one call under way at a time, and their number is capped
/// (`servers.rs`), so this is a last bound: a call over it is refused
/// (`busy`) rather than queued without end.
pub(super) const CALL_QUEUE: usize = 256;

/// The other threads' handle on the engine.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) tx: mpsc::SyncSender<Call>,
    pub(super) wake: Arc<OwnedFd>,
}

/// Why a call did not reach the engine.
enum Unsent {
    Full,
    Gone,
}

impl EngineHandle {
    fn send(&self, call: Call) -> Result<(), Unsent> {
        match self.tx.try_send(call) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => return Err(Unsent::Full),
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(Unsent::Gone),
        }
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to an eventfd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Runs `op` on the engine thread.
    pub async fn call(&self, op: Op, received: Instant) -> Result<Value, ApiError> {
        // Finding a next hop's MAC may wait up to a second for ARP: not on
        // the engine thread, where it would hold up every other request.
        let resolved = match &op {
            Op::ServiceAdd(ServiceSpec {
                forward: Some(f), ..
            }) => {
                let f = f.clone();
                Some(
                    tokio::task::spawn_blocking(move || resolve_forward(&f))
                        .await
                        .unwrap_or_else(|e| Err(internal(e))),
                )
            }
            _ => None,
        };
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Call::Op {
            op: Box::new(op),
            received,
            resolved,
            reply,
        });
        match sent {
            Ok(()) => {}
            Err(Unsent::Full) => {
                return Err(ApiError::new(
                    ErrorCode::Busy,
                    format!("{CALL_QUEUE} requests are waiting for the agent's engine; try again"),
                ));
            }
            Err(Unsent::Gone) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the agent is shutting down",
                ));
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::Internal,
                "the agent is shutting down",
            ))
        })
    }

    /// Stops the engine; returns when it has stopped.
    pub async fn shutdown(&self, detach: bool) {
        let (reply, rx) = oneshot::channel();
        let mut call = Call::Shutdown { detach, reply };
        // Never refused: waits for room in the queue (the engine drains it).
        loop {
            match self.tx.try_send(call) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(back)) => {
                    call = back;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return,
            }
        }
        self.wake();
        let _ = rx.await;
    }
}
