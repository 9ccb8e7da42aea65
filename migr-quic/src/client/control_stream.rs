//! The client's side of the control streams: HELLO (negotiation), TRIGGER,
//! and what the server tells it (SERVER_MIGRATION, POOL_MIGRATION_ADDRESS).
//! Apart from `strategy` because it only records what was announced;
//! acting on it (when and where to send) is the strategy's business.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{Connection, ConnectionError, Dir, Event, StreamEvent, VarInt};

use super::{ClientEvent, ClientMigration, Strategy, TriggerError};
use crate::control::{self, ChannelOutput};
use crate::frame::{Frame, FrameError, VERSION};

impl ClientMigration {
    /// Asks the server to migrate (TRIGGER frame).
    pub fn send_trigger(&mut self, conn: &mut Connection) -> Result<(), TriggerError> {
        if !self.is_negotiated() {
            return Err(TriggerError::NotNegotiated);
        }
        // TRIGGER always encodes.
        if let Ok(tag) = self.channel.send(conn, &[Frame::Trigger]) {
            self.trigger_tags.push(tag);
        }
        Ok(())
    }

    /// Feed every event of the connection. Returns true when the event
    /// belonged to the extension (control streams) and must not reach the
    /// application. Afterwards, pass the events of
    /// [`ClientMigration::poll_app_event`] to the application too. `now` is
    /// only used to close the connection on a protocol error.
    pub fn handle_event(&mut self, now: Instant, conn: &mut Connection, event: &Event) -> bool {
        match event {
            Event::Connected => {
                self.negotiate(conn);
                false
            }
            Event::Stream(stream_event) => {
                let mut outputs = Vec::new();
                let consumed = self.channel.handle(conn, stream_event, &mut outputs);
                for output in outputs {
                    self.on_channel_output(now, conn, output);
                }
                consumed
            }
            _ => false,
        }
    }

    fn negotiate(&mut self, conn: &mut Connection) {
        if self.hello_sent {
            return;
        }
        self.hello_sent = true;
        // HELLO always encodes.
        let _ = self
            .channel
            .send(conn, &[Frame::Hello { version: VERSION }]);
    }

    fn on_channel_output(&mut self, now: Instant, conn: &mut Connection, output: ChannelOutput) {
        match output {
            ChannelOutput::Frames(frames) => {
                for frame in frames {
                    self.on_frame(now, conn, frame);
                }
            }
            ChannelOutput::Delivered(tag) | ChannelOutput::Refused(tag) => {
                if let Some(pos) = self.trigger_tags.iter().position(|t| *t == tag) {
                    self.trigger_tags.remove(pos);
                    self.events.push_back(ClientEvent::TriggerAcknowledged);
                }
            }
            ChannelOutput::Malformed(error) => self.fail(now, conn, error),
            ChannelOutput::Foreign(stream) => {
                self.uni_streams.push_back(stream);
                self.app_events
                    .push_back(Event::Stream(StreamEvent::Opened { dir: Dir::Uni }));
            }
        }
    }

    fn on_frame(&mut self, now: Instant, conn: &mut Connection, frame: Frame) {
        if self.closed {
            return;
        }
        match frame {
            Frame::Hello { version } => {
                if version == VERSION && !self.negotiated {
                    self.negotiated = true;
                    self.events.push_back(ClientEvent::Negotiated);
                }
            }
            Frame::PoolMigrationAddress { address } => {
                self.mark_negotiated();
                if !self.pool.contains(&address) {
                    self.pool.push(address);
                    self.events.push_back(ClientEvent::PoolAddress { address });
                }
            }
            Frame::ServerMigration { address, .. } => {
                self.mark_negotiated();
                self.on_announcement(conn, address);
            }
            Frame::Trigger => self.fail(
                now,
                conn,
                FrameError::WrongDirection {
                    frame_type: frame.frame_type(),
                },
            ),
        }
    }

    /// A SERVER_MIGRATION can overtake the server's HELLO (different
    /// streams); the server only sends it after negotiation, so it implies it.
    fn mark_negotiated(&mut self) {
        if !self.negotiated {
            self.negotiated = true;
            self.events.push_back(ClientEvent::Negotiated);
        }
    }

    fn on_announcement(&mut self, conn: &mut Connection, address: SocketAddr) {
        self.events
            .push_back(ClientEvent::MigrationAnnounced { address });
        if address == self.primary {
            return;
        }
        self.announced = Some(address);
        match self.config.strategy {
            Strategy::ProactiveExplicit => {
                self.switch_after_ack = Some(address);
                // Makes quinn-proto acknowledge at once instead of after its ACK delay.
                conn.ping();
            }
            Strategy::ReactiveExplicit => {}
            Strategy::PoolOfAddresses => {
                if !self.pool.contains(&address) {
                    self.pool.push(address);
                }
            }
        }
    }

    /// A protocol error: close the connection with the extension's error code.
    fn fail(&mut self, now: Instant, conn: &mut Connection, error: FrameError) {
        if !self.closed {
            self.closed = true;
            conn.close(
                now,
                VarInt::from_u32(control::error_code(&error)),
                Bytes::from(control::reason_phrase(&error)),
            );
            self.events.push_back(ClientEvent::ProtocolError(error));
            // quinn-proto reports no local close to the application; it must
            // learn that its connection is gone.
            self.app_events.push_back(Event::ConnectionLost {
                reason: ConnectionError::LocallyClosed,
            });
        }
    }
}
