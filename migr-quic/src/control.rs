//! Plumbing shared by both roles: control streams over quinn-proto's stream API.
//!
//! Every message goes out on its own unidirectional stream, which is finished
//! right after the message; quinn-proto reports `StreamEvent::Finished` once the
//! peer has acknowledged all of it, and that is our acknowledgement of the
//! message. Incoming control streams are read to their end, then decoded.

use std::collections::HashMap;

use quinn_proto::{
    Connection, Dir, FinishError, ReadError, ReadableError, StreamEvent, StreamId, VarInt,
    WriteError,
};

use crate::frame::{self, Frame, FrameError, MAX_CONTROL_STREAM_LEN};

/// Application error code sent with STOP_SENDING on a malformed control stream.
pub const MIGR_FRAME_ERROR: u32 = 0x6d69_0001;
/// Application error code sent with STOP_SENDING on a unidirectional stream that
/// is not a control stream (a migr endpoint reserves unidirectional streams).
pub const MIGR_STREAM_REFUSED: u32 = 0x6d69_0002;

/// Identifies one outgoing message until it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageTag(pub u64);

/// What the channel observed while handling a stream event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChannelOutput {
    /// A complete, well-formed control stream arrived.
    Frames(Vec<Frame>),
    /// The peer acknowledged the whole message.
    Delivered(MessageTag),
    /// The peer refused the message's stream (STOP_SENDING).
    Refused(MessageTag),
    /// An incoming stream was malformed; it was dropped.
    Malformed(FrameError),
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

    /// Handles a stream event if it concerns a unidirectional stream, which a
    /// migr endpoint reserves for control streams. Returns false for events the
    /// application must see.
    pub(crate) fn handle(
        &mut self,
        conn: &mut Connection,
        event: &StreamEvent,
        out: &mut Vec<ChannelOutput>,
    ) -> bool {
        match *event {
            StreamEvent::Opened { dir: Dir::Uni } => {
                while let Some(id) = conn.streams().accept(Dir::Uni) {
                    self.incoming.insert(id, Vec::new());
                    self.read(conn, id, out);
                }
                true
            }
            StreamEvent::Readable { id } if id.dir() == Dir::Uni => {
                if self.incoming.contains_key(&id) {
                    self.read(conn, id, out);
                }
                true
            }
            StreamEvent::Writable { id } if id.dir() == Dir::Uni => {
                self.pump(conn);
                true
            }
            StreamEvent::Available { dir: Dir::Uni } => {
                self.pump(conn);
                true
            }
            StreamEvent::Finished { id } if id.dir() == Dir::Uni => {
                if let Some(pos) = self.position(id) {
                    let done = self.outgoing.remove(pos);
                    out.push(ChannelOutput::Delivered(done.tag));
                }
                true
            }
            StreamEvent::Stopped { id, .. } if id.dir() == Dir::Uni => {
                if let Some(pos) = self.position(id) {
                    let refused = self.outgoing.remove(pos);
                    out.push(ChannelOutput::Refused(refused.tag));
                }
                true
            }
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
        let mut complete = false;
        let mut dropped = false;
        let mut refusal = None;
        let mut recv = conn.recv_stream(id);
        match recv.read(true) {
            Ok(mut chunks) => {
                loop {
                    match chunks.next(MAX_CONTROL_STREAM_LEN + 1) {
                        Ok(Some(chunk)) => {
                            buffer.extend_from_slice(&chunk.bytes);
                            if buffer.len() > MAX_CONTROL_STREAM_LEN {
                                refusal = Some((FrameError::StreamTooLong, MIGR_FRAME_ERROR));
                                break;
                            }
                            if let Some(e) = frame::refuses_stream_prefix(buffer) {
                                refusal = Some((e, MIGR_STREAM_REFUSED));
                                break;
                            }
                        }
                        Ok(None) => {
                            complete = true;
                            break;
                        }
                        Err(ReadError::Blocked) => break,
                        Err(ReadError::Reset(_)) => {
                            dropped = true;
                            break;
                        }
                    }
                }
                let _ = chunks.finalize();
            }
            Err(ReadableError::ClosedStream) => dropped = true,
            Err(ReadableError::IllegalOrderedRead) => dropped = true,
        }
        if let Some((error, code)) = refusal {
            let _ = conn.recv_stream(id).stop(VarInt::from_u32(code));
            self.incoming.remove(&id);
            out.push(ChannelOutput::Malformed(error));
            return;
        }
        if dropped {
            self.incoming.remove(&id);
            return;
        }
        if complete && let Some(data) = self.incoming.remove(&id) {
            match frame::decode_stream(&data) {
                Ok(frames) => out.push(ChannelOutput::Frames(frames)),
                Err(e) => out.push(ChannelOutput::Malformed(e)),
            }
        }
    }
}
