//! A host-side copy of the datapath's tables: what the agent installed, kept
//! in plain hash maps. Implements `migr_common::classify::Tables`, so the very
//! classification the XDP program runs can be run on the host (tests, replay
//! planning) and compared with the kernel's.

use std::collections::HashMap;

use migr_common::{
    classify::Tables,
    maps::{FlowKey, ListenerEntry, ListenerKey, ServiceEntry},
};

#[derive(Clone, Debug, Default)]
pub struct HostTables {
    pub listeners: HashMap<ListenerKey, ListenerEntry>,
    pub flows: HashMap<FlowKey, u32>,
    pub server_ids: HashMap<u32, u32>,
    pub tokens: HashMap<u32, u32>,
    pub services: HashMap<u32, ServiceEntry>,
}

impl Tables for HostTables {
    fn listener(&self, key: &ListenerKey) -> Option<ListenerEntry> {
        self.listeners.get(key).copied()
    }
    fn flow(&self, key: &FlowKey) -> Option<u32> {
        self.flows.get(key).copied()
    }
    fn server_id(&self, server_id: u32) -> Option<u32> {
        self.server_ids.get(&server_id).copied()
    }
    fn token(&self, token: u32) -> Option<u32> {
        self.tokens.get(&token).copied()
    }
    fn service(&self, service_id: u32) -> Option<ServiceEntry> {
        // The kernel's SERVICES is an array: absent ids read as all-zero entries.
        Some(self.services.get(&service_id).copied().unwrap_or_default())
    }
}

/// The MPTCP token of a key: the most significant 32 bits of SHA-256 of the
/// key in network byte order (RFC 8684, section 3.1).
pub fn mptcp_token(key: u64) -> u32 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.to_be_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_the_top_32_bits_of_sha256_of_the_key() {
        // SHA-256 of eight zero bytes starts af5570f5 (computed independently with sha256sum).
        assert_eq!(mptcp_token(0), 0xaf55_70f5);
        assert_ne!(mptcp_token(1), mptcp_token(2));
    }
}
