//! The application's handles: a connection, and the two halves of its
//! streams. Generic over the [`Role`], so server and client share them; each
//! call locks the endpoint, tries, and waits for a change if it cannot yet.

use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use quinn_proto::{
    ConnectionHandle, ConnectionStats, Dir, ReadError, ReadableError, StreamId, VarInt, WriteError,
};

use super::{Role, Shared, State, lost};
use crate::control::UniStreamEnd;

/// A connection as the application sees it (either role).
pub struct Connection<R: Role> {
    pub(super) shared: Arc<Shared<R>>,
    pub(super) ch: ConnectionHandle,
    /// Which connection behind `ch` this is (see `State::generations`).
    pub(super) generation: u64,
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
