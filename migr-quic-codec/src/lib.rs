//! The wire format of seed 000's server-side migration extension
//! (`docs/quic-extension.md`): [`frame`] encodes and decodes TRIGGER,
//! SERVER_MIGRATION and POOL_MIGRATION_ADDRESS and their control streams;
//! [`varint`] is QUIC's variable-length integer (RFC 9000, section 16), the
//! one encoder the project uses.

pub mod frame;
pub mod varint;
