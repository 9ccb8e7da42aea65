//! The control socket client: one request, one answer, and the exit code a
//! failure maps to.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use migr_control::api;
use serde_json::{Value, json};

use super::{EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE};

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub struct CtlError {
    pub code: i32,
    pub message: String,
}

impl CtlError {
    pub(super) fn refused(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_REFUSED,
            message: message.into(),
        }
    }
    pub(super) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    pub(super) fn unreachable(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_UNREACHABLE,
            message: message.into(),
        }
    }
}

/// A connection to the agent.
pub struct Client {
    pub(super) socket: PathBuf,
    pub(super) timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// Sends one raw request line, returns the response line.
    pub fn raw(&self, line: &str) -> Result<String, CtlError> {
        let unreachable = |e: std::io::Error| {
            CtlError::unreachable(format!(
                "cannot reach migr-agent at {}: {e}",
                self.socket.display()
            ))
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        let mut out = line.trim_end().as_bytes().to_vec();
        out.push(b'\n');
        stream.write_all(&out).map_err(unreachable)?;
        let mut reader = BufReader::new(stream);
        let mut response = String::new();
        reader.read_line(&mut response).map_err(|e| {
            CtlError::unreachable(format!(
                "no answer from migr-agent at {} within {} ms: {e}",
                self.socket.display(),
                self.timeout.as_millis()
            ))
        })?;
        if response.is_empty() {
            return Err(CtlError::unreachable(format!(
                "migr-agent at {} closed the connection without an answer",
                self.socket.display()
            )));
        }
        Ok(response)
    }

    /// Sends `op` with `args`; returns the result, or the agent's error.
    pub fn call(&self, op: &str, args: Value) -> Result<Value, CtlError> {
        let mut req = json!({ "v": api::PROTOCOL_VERSION, "op": op });
        if !args.is_null() {
            req["args"] = args;
        }
        let line = self.raw(&req.to_string())?;
        let resp: api::Response = serde_json::from_str(&line)
            .map_err(|e| CtlError::refused(format!("unreadable answer from the agent: {e}")))?;
        if resp.ok {
            Ok(resp.result.unwrap_or(Value::Null))
        } else {
            let e = resp
                .error
                .unwrap_or_else(|| api::ApiError::bad("error without details"));
            Err(CtlError::refused(e.to_string()))
        }
    }
}
