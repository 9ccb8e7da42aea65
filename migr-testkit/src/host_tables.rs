//! A host-side copy of the datapath's tables, kept in plain hash maps. It
//! implements `migr_common::classify::Tables`, so the very classification the
//! XDP program runs can be run on the host and compared with the kernel's.

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
    /// Subflows learned per token (the kernel's `JOINS_LEARNED`).
    pub joins_learned: HashMap<u32, u32>,
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
