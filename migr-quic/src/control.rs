//! Plumbing shared by both roles: control streams over quinn-proto's stream API.
//!
//! Every message goes out on its own unidirectional stream, which is finished
//! right after the message; quinn-proto reports `StreamEvent::Finished` once the
//! peer has acknowledged all of it, and that is our acknowledgement of the
//! message. Incoming unidirectional streams are read only as far as needed to
//! tell a control stream (it begins with [`frame::STREAM_TYPE_BYTES`]) from
//! any other: other streams go to the application with the bytes read so far
//! ([`IncomingUniStream`]); control streams are read to their end, then decoded.

use std::collections::HashMap;

use quinn_proto::{
    Connection, Dir, FinishError, ReadError, ReadableError, StreamEvent, StreamId, VarInt,
    WriteError,
};

use crate::frame::{self, Frame, FrameError, MAX_CONTROL_STREAM_LEN, STREAM_TYPE_BYTES};

/// Application error code with which an endpoint closes the connection when
/// the peer sent a control stream that does not decode (truncated, oversized,
/// trailing bytes, bad address, longer than [`MAX_CONTROL_STREAM_LEN`]).
pub const MIGR_FRAME_ERROR: u32 = 0x6d69_0001;
/// Application error code with which an endpoint closes the connection when
/// the peer sent a well-formed frame it must not send (a frame of the other
/// direction, or TRIGGER before negotiation).
pub const MIGR_PROTOCOL_VIOLATION: u32 = 0x6d69_0002;

/// The connection error code for `error` ([`MIGR_PROTOCOL_VIOLATION`] or [`MIGR_FRAME_ERROR`]).
pub fn error_code(error: &FrameError) -> u32 {
    match error {
        FrameError::WrongDirection { .. } => MIGR_PROTOCOL_VIOLATION,
        _ => MIGR_FRAME_ERROR,
    }
}

/// The reason phrase sent with the connection close for `error`.
pub fn reason_phrase(error: &FrameError) -> String {
    format!("migr control stream: {error}")
}

/// Identifies one outgoing message until it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageTag(pub u64);

/// How a unidirectional stream handed to the application had already ended
/// when the extension gave it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniStreamEnd {
    /// The peer finished it: [`IncomingUniStream::prefix`] is the whole stream,
    /// and quinn-proto has forgotten it (reading it again fails).
    Finished,
    /// The peer reset it with this error code; quinn-proto has forgotten it.
    Reset(VarInt),
}

/// A unidirectional stream from the peer that is not a migration control
/// stream. It belongs to the application, which must read its first bytes
/// from `prefix` (the extension read them to tell what the stream is) and
/// then, unless `end` is set, the rest from quinn-proto as usual: right away,
/// because data that arrived before the hand-over raises no new
/// `StreamEvent::Readable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingUniStream {
    pub id: StreamId,
    /// The stream's first bytes, at most `STREAM_TYPE_BYTES.len()` (8).
    pub prefix: Vec<u8>,
    /// `None`: the stream is still open in quinn-proto.
    pub end: Option<UniStreamEnd>,
}

/// What the channel observed while handling a stream event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChannelOutput {
    /// A complete, well-formed control stream arrived.
    Frames(Vec<Frame>),
    /// The peer acknowledged the whole message.
    Delivered(MessageTag),
    /// The peer refused the message's stream (STOP_SENDING).
    Refused(MessageTag),
    /// An incoming control stream was malformed.
    Malformed(FrameError),
    /// An incoming unidirectional stream is not a control stream.
    Foreign(IncomingUniStream),
}

struct Outgoing {
    tag: MessageTag,
    stream: Option<StreamId>,
    data: Vec<u8>,
    written: usize,
    finished: bool,
}

#[derive(Default)]
pub(crate) struct ControlChannel {
    outgoing: Vec<Outgoing>,
    /// Incoming unidirectional streams the channel still owns: being told
    /// apart (fewer than 8 bytes read) or control streams being read.
    incoming: HashMap<StreamId, Vec<u8>>,
    next_tag: u64,
}

impl ControlChannel {
    /// Queues one control stream carrying `frames`; sends as much as flow
    /// control allows now and the rest on later stream events.
    pub(crate) fn send(
        &mut self,
        conn: &mut Connection,
        frames: &[Frame],
    ) -> Result<MessageTag, FrameError> {
        let data = frame::encode_stream(frames)?;
        let tag = MessageTag(self.next_tag);
        self.next_tag += 1;
        self.outgoing.push(Outgoing {
            tag,
            stream: None,
            data,
            written: 0,
            finished: false,
        });
        self.pump(conn);
        Ok(tag)
    }

    /// Handles a stream event if it concerns one of the channel's streams.
    /// Returns false for events the application must see (bidirectional
    /// streams, and unidirectional streams that are not control streams).
    pub(crate) fn handle(
        &mut self,
        conn: &mut Connection,
        event: &StreamEvent,
        out: &mut Vec<ChannelOutput>,
    ) -> bool {
        match *event {
            // Every new unidirectional stream is the channel's until its first
            // bytes show whether it is a control stream.
            StreamEvent::Opened { dir: Dir::Uni } => {
                while let Some(id) = conn.streams().accept(Dir::Uni) {
                    self.incoming.insert(id, Vec::new());
                    self.read(conn, id, out);
                }
                true
            }
            StreamEvent::Readable { id } if self.incoming.contains_key(&id) => {
                self.read(conn, id, out);
                true
            }
            StreamEvent::Writable { id } if id.dir() == Dir::Uni => {
                let ours = self.position(id).is_some();
                self.pump(conn);
                ours
            }
            // The application may be waiting for stream credit too.
            StreamEvent::Available { dir: Dir::Uni } => {
                self.pump(conn);
                false
            }
            StreamEvent::Finished { id } => match self.position(id) {
                Some(pos) => {
                    let done = self.outgoing.remove(pos);
                    out.push(ChannelOutput::Delivered(done.tag));
                    true
                }
                None => false,
            },
            StreamEvent::Stopped { id, .. } => match self.position(id) {
                Some(pos) => {
                    let refused = self.outgoing.remove(pos);
                    out.push(ChannelOutput::Refused(refused.tag));
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    fn position(&self, id: StreamId) -> Option<usize> {
        self.outgoing.iter().position(|o| o.stream == Some(id))
    }

    /// Opens streams for queued messages and writes what flow control allows.
    fn pump(&mut self, conn: &mut Connection) {
        for message in &mut self.outgoing {
            let id = match message.stream {
                Some(id) => id,
                None => match conn.streams().open(Dir::Uni) {
                    Some(id) => {
                        message.stream = Some(id);
                        id
                    }
                    // Stream limit reached: retried on `Available`.
                    None => return,
                },
            };
            let mut stream = conn.send_stream(id);
            while message.written < message.data.len() {
                match stream.write(&message.data[message.written..]) {
                    Ok(n) => message.written += n,
                    // Flow control: retried on `Writable`.
                    Err(WriteError::Blocked) => break,
                    // Stopped or closed: `Stopped` reports it.
                    Err(_) => break,
                }
            }
            if message.written == message.data.len() && !message.finished {
                match stream.finish() {
                    Ok(()) | Err(FinishError::Stopped(_)) | Err(FinishError::ClosedStream) => {
                        message.finished = true
                    }
                }
            }
        }
    }

    fn read(&mut self, conn: &mut Connection, id: StreamId, out: &mut Vec<ChannelOutput>) {
        let Some(buffer) = self.incoming.get_mut(&id) else {
            return;
        };
        let mut end = None;
        let mut gone = false;
        let mut recv = conn.recv_stream(id);
        match recv.read(true) {
            Ok(mut chunks) => {
                loop {
                    // While the stream's kind is unknown, read no byte past the
                    // stream type: the rest may be the application's.
                    let want = if buffer.len() < STREAM_TYPE_BYTES.len() {
                        STREAM_TYPE_BYTES.len() - buffer.len()
                    } else {
                        MAX_CONTROL_STREAM_LEN + 1 - buffer.len()
                    };
                    match chunks.next(want) {
                        Ok(Some(chunk)) => {
                            buffer.extend_from_slice(&chunk.bytes);
                            if !frame::may_be_control_stream(buffer)
                                || buffer.len() > MAX_CONTROL_STREAM_LEN
                            {
                                break;
                            }
                        }
                        Ok(None) => {
                            end = Some(UniStreamEnd::Finished);
                            break;
                        }
                        Err(ReadError::Blocked) => break,
                        Err(ReadError::Reset(code)) => {
                            end = Some(UniStreamEnd::Reset(code));
                            break;
                        }
                    }
                }
                let _ = chunks.finalize();
            }
            // Already freed (cannot happen for a stream we have not finished
            // reading) or unordered reads (never used here): forget it.
            Err(ReadableError::ClosedStream) | Err(ReadableError::IllegalOrderedRead) => {
                gone = true
            }
        }

        let control =
            buffer.len() >= STREAM_TYPE_BYTES.len() && frame::may_be_control_stream(buffer);
        if !control {
            // Not a control stream, or it ended before it could be one.
            if !frame::may_be_control_stream(buffer) || end.is_some() || gone {
                let prefix = self.incoming.remove(&id).unwrap_or_default();
                if !gone {
                    out.push(ChannelOutput::Foreign(IncomingUniStream {
                        id,
                        prefix,
                        end,
                    }));
                }
            }
            return;
        }
        if buffer.len() > MAX_CONTROL_STREAM_LEN {
            self.incoming.remove(&id);
            out.push(ChannelOutput::Malformed(FrameError::StreamTooLong));
            return;
        }
        match end {
            Some(UniStreamEnd::Finished) => {
                let data = self.incoming.remove(&id).unwrap_or_default();
                match frame::decode_stream(&data) {
                    Ok(frames) => out.push(ChannelOutput::Frames(frames)),
                    Err(e) => out.push(ChannelOutput::Malformed(e)),
                }
            }
            // The sender abandoned the message: nothing to decode.
            Some(UniStreamEnd::Reset(_)) => {
                self.incoming.remove(&id);
            }
            None if gone => {
                self.incoming.remove(&id);
            }
            None => {}
        }
    }
}
