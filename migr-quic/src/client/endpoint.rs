//! [`ClientEndpoint`]: one quinn-proto client connection and its
//! [`ClientMigration`], without I/O. Apart from the state machine because
//! it only plumbs: datagrams and timers in, routed datagrams out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, ConnectError, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint,
    EndpointConfig, Event,
};

use super::{ClientEvent, ClientMigration, ClientMigrationConfig, Route, TriggerError};
use crate::control::IncomingUniStream;

/// A datagram the client wants sent.
#[derive(Debug, Clone)]
pub struct ClientDatagram {
    pub route: Route,
    pub contents: Vec<u8>,
}

/// One quinn-proto client connection with the extension. No I/O: feed it
/// datagrams and time, send what it returns where its [`Route`] says.
pub struct ClientEndpoint {
    endpoint: Endpoint,
    handle: ConnectionHandle,
    conn: Connection,
    migration: ClientMigration,
    app_events: VecDeque<Event>,
    responses: VecDeque<ClientDatagram>,
    buf: Vec<u8>,
    /// The latest time the endpoint was given (for closes from `process`).
    now: Instant,
}

impl ClientEndpoint {
    /// Starts a connection to `server`.
    pub fn connect(
        now: Instant,
        client_config: ClientConfig,
        migration_config: ClientMigrationConfig,
        server: SocketAddr,
        server_name: &str,
    ) -> Result<Self, ConnectError> {
        Self::connect_with_endpoint_config(
            now,
            EndpointConfig::default(),
            client_config,
            migration_config,
            server,
            server_name,
        )
    }

    /// Like [`ClientEndpoint::connect`] with quinn-proto endpoint settings of
    /// the caller's, e.g. `rng_seed` for a reproducible simulation.
    pub fn connect_with_endpoint_config(
        now: Instant,
        endpoint_config: EndpointConfig,
        client_config: ClientConfig,
        migration_config: ClientMigrationConfig,
        server: SocketAddr,
        server_name: &str,
    ) -> Result<Self, ConnectError> {
        let mut endpoint = Endpoint::new(std::sync::Arc::new(endpoint_config), None, true, None);
        let (handle, conn) = endpoint.connect(now, client_config, server, server_name)?;
        Ok(Self {
            endpoint,
            handle,
            conn,
            migration: ClientMigration::new(migration_config, server),
            app_events: VecDeque::new(),
            responses: VecDeque::new(),
            buf: Vec::new(),
            now,
        })
    }

    /// A datagram arrived from `from`. Returns false when it was dropped
    /// because `from` is not one of the server's known addresses.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) -> bool {
        self.now = now;
        let accepted = if self.extension() {
            self.migration.accepts(from)
        } else {
            from == self.migration.anchor()
        };
        if !accepted {
            return false;
        }
        self.buf.clear();
        let anchor = self.migration.anchor();
        match self
            .endpoint
            .handle(now, anchor, None, None, data, &mut self.buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, event)) if ch == self.handle => {
                self.conn.handle_event(event);
            }
            Some(DatagramEvent::Response(transmit)) => {
                self.responses.push_back(ClientDatagram {
                    route: Route {
                        destinations: vec![from],
                        fresh_local_address: false,
                    },
                    contents: self.buf[..transmit.size].to_vec(),
                });
            }
            _ => {}
        }
        if self.extension() {
            self.migration.datagram_received(now, from, &mut self.conn);
        }
        self.process();
        true
    }

    /// Next datagram to send, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<ClientDatagram> {
        self.now = now;
        if let Some(response) = self.responses.pop_front() {
            return Some(response);
        }
        self.buf.clear();
        let transmit = self.conn.poll_transmit(now, 1, &mut self.buf)?;
        let route = if self.extension() {
            self.migration.route(now, &mut self.conn)
        } else {
            Route {
                destinations: vec![self.migration.anchor()],
                fresh_local_address: false,
            }
        };
        Some(ClientDatagram {
            route,
            contents: self.buf[..transmit.size].to_vec(),
        })
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let conn_timeout = self.conn.poll_timeout();
        let migration_timeout = self
            .extension()
            .then(|| self.migration.poll_timeout(&self.conn))
            .flatten();
        [conn_timeout, migration_timeout]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        if self.extension() {
            self.migration.handle_timeout(now, &mut self.conn);
        }
        self.process();
    }

    /// Call after the application used the connection (wrote to a stream, ...).
    pub fn process(&mut self) {
        while let Some(endpoint_event) = self.conn.poll_endpoint_events() {
            if let Some(conn_event) = self.endpoint.handle_event(self.handle, endpoint_event) {
                self.conn.handle_event(conn_event);
            }
        }
        while let Some(event) = self.conn.poll() {
            if !self.extension() {
                self.app_events.push_back(event);
                continue;
            }
            if !self
                .migration
                .handle_event(self.now, &mut self.conn, &event)
            {
                self.app_events.push_back(event);
            }
            while let Some(event) = self.migration.poll_app_event() {
                self.app_events.push_back(event);
            }
        }
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn migration(&self) -> &ClientMigration {
        &self.migration
    }

    /// Asks the server to migrate (TRIGGER).
    pub fn send_trigger(&mut self) -> Result<(), TriggerError> {
        let result = self.migration.send_trigger(&mut self.conn);
        self.process();
        result
    }

    /// Next event for the application (never a control-stream event).
    /// `Opened { dir: Uni }` means: take the streams from
    /// [`ClientEndpoint::accept_uni`], not from quinn-proto.
    pub fn poll_app_event(&mut self) -> Option<Event> {
        self.app_events.pop_front()
    }

    /// Next unidirectional stream of the server's that is not a control
    /// stream; read its first bytes from `prefix`, the rest from the connection.
    pub fn accept_uni(&mut self) -> Option<IncomingUniStream> {
        if !self.extension() {
            let id = self.conn.streams().accept(Dir::Uni)?;
            return Some(IncomingUniStream {
                id,
                prefix: Vec::new(),
                end: None,
            });
        }
        self.migration.accept_uni()
    }

    /// Whether this client speaks the extension
    /// ([`ClientMigrationConfig::extension`]).
    pub fn extension(&self) -> bool {
        self.migration.config.extension
    }

    /// Next event of the migration extension.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.migration.poll_event()
    }
}
