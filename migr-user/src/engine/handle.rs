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

/// The other threads' handle on the engine.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) tx: mpsc::Sender<Call>,
    pub(super) wake: Arc<OwnedFd>,
}

impl EngineHandle {
    fn send(&self, call: Call) -> bool {
        if self.tx.send(call).is_err() {
            return false;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to an eventfd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        true
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
        if !self.send(Call::Op {
            op: Box::new(op),
            received,
            resolved,
            reply,
        }) {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the agent is shutting down",
            ));
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
        if self.send(Call::Shutdown { detach, reply }) {
            let _ = rx.await;
        }
    }
}
