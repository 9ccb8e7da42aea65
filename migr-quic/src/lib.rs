//! Server-side QUIC connection migration (seed 000) on top of quinn-proto,
//! without forking it.
//!
//! - [`cid::RoutableCidGenerator`]: connection IDs that carry the service's
//!   server id where migr's XDP classifier reads it.
//! - [`frame`]: TRIGGER, SERVER_MIGRATION and POOL_MIGRATION_ADDRESS, and the
//!   control streams that carry them (`docs/quic-extension.md`).
//! - [`server`]: [`server::ServerMigration`] per connection and the sans-I/O
//!   [`server::ServerEndpoint`] (announcements, pool, TRIGGER events).
//! - [`client`]: the P-Explicit, R-Explicit and Pool-of-Addresses strategies
//!   ([`client::ClientMigration`]) and the sans-I/O [`client::ClientEndpoint`].
//! - [`driver`]: a thin tokio shell around both endpoints.
//! - [`tls`]: self-signed certificates and matching configs for tests and tools.
//! - [`service_gaps`]: when an echo server's answers paused (the service's own
//!   downtime, for the testbed).

pub mod cid;
pub mod client;
pub mod control;
pub mod driver;
pub mod server;
pub mod service_gaps;
pub mod tls;

// The codec is its own crate (the fuzz targets build it alone); it stays
// reachable here under the names the rest of migr-quic uses.
pub use migr_quic_codec::{frame, varint};

pub use cid::RoutableCidGenerator;
pub use client::{
    ClientDatagram, ClientEndpoint, ClientEvent, ClientMigration, ClientMigrationConfig, ProbeMode,
    Route, Strategy,
};
pub use control::{IncomingUniStream, MIGR_FRAME_ERROR, MIGR_PROTOCOL_VIOLATION, UniStreamEnd};
pub use frame::{Frame, FrameError};
pub use server::{
    AnnounceError, MigrationId, ServerConnection, ServerDatagram, ServerEndpoint,
    ServerEndpointConfig, ServerEvent, ServerMigration,
};
