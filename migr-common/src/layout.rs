//! The version of the pinned maps' layout. Maps pinned by one agent are
//! re-opened by the next (a restart or an upgrade keeps every parked frame
//! and learned flow), which is only sound if both read their bytes alike.
//! The agent therefore pins them in `<pin dir>/maps-v<N>` and refuses maps
//! pinned under another version (`migr-user/src/pin_layout.rs`).
//!
//! Bump [`MAP_LAYOUT_VERSION`] with any change to what a pinned map holds:
//! a key or value type, a ring record, or a fixed table size. The unit test
//! below fails until the version and the recorded fingerprint are updated
//! together. It sees sizes only: a change that keeps every size (two fields
//! swapped, a flag's meaning) must bump the version by hand.

use core::mem::size_of;

use crate::maps::{
    Event, EventBudget, FLOW_PORTS_LEN, FlowKey, LISTENER_SLOTS_LEN, ListenerEntry, ListenerKey,
    ListenerSlot, MAX_SERVICES, PORT_LISTENERS_LEN, ParkedHeader, ProtoClass, Reason, ReplaySlot,
    SMALL_SERVER_ID_LIMIT, ServiceCounters, ServiceEntry, map_names as n,
};

/// The layout of the maps this build pins.
pub const MAP_LAYOUT_VERSION: u32 = 3;

/// Each pinned map's name, key size, value (or ring record header) size and
/// fixed number of entries (0: sized at load time).
pub const PINNED_LAYOUT: [(&str, usize, usize, u32); 19] = [
    (n::SERVICES, 4, size_of::<ServiceEntry>(), MAX_SERVICES),
    (
        n::LISTENERS,
        size_of::<ListenerKey>(),
        size_of::<ListenerEntry>(),
        0,
    ),
    (n::SERVER_IDS, 4, 4, 0),
    (n::SMALL_SERVER_IDS, 4, 4, SMALL_SERVER_ID_LIMIT),
    (n::TOKENS, 4, 4, 0),
    (n::JOINS_LEARNED, 4, 4, 0),
    (n::FLOWS, size_of::<FlowKey>(), 4, 0),
    // struct bpf_devmap_val: the ifindex and a program fd.
    (n::FORWARD_DEVICES, 4, 8, MAX_SERVICES),
    (
        n::SERVICE_COUNTERS,
        4,
        size_of::<ServiceCounters>(),
        MAX_SERVICES,
    ),
    (n::REASONS, 4, 8, Reason::COUNT),
    (n::PROTO_COUNTERS, 4, 8, ProtoClass::COUNT),
    (n::PARKED, 0, size_of::<ParkedHeader>(), 0),
    (n::EVENTS, 0, size_of::<Event>(), 0),
    (n::EVENT_BUDGET, 4, size_of::<EventBudget>(), 1),
    // Sized by this build (`REPLAY_BATCH`), read by the agent from the map
    // it finds (older pins hold fewer slots).
    (n::REPLAY_SLOTS, 4, size_of::<ReplaySlot>(), 0),
    (n::REPLAY_NEXT, 4, 4, 1),
    (n::FLOW_PORTS, 4, 4, FLOW_PORTS_LEN),
    (n::PORT_LISTENERS, 4, 4, PORT_LISTENERS_LEN),
    (
        n::LISTENER_SLOTS,
        4,
        size_of::<ListenerSlot>(),
        LISTENER_SLOTS_LEN,
    ),
];

/// FNV-1a over [`PINNED_LAYOUT`].
pub const fn layout_fingerprint() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < PINNED_LAYOUT.len() {
        let (name, key, value, entries) = PINNED_LAYOUT[i];
        let name = name.as_bytes();
        let mut j = 0;
        while j < name.len() {
            h = (h ^ name[j] as u64).wrapping_mul(0x100_0000_01b3);
            j += 1;
        }
        let words = [key as u64, value as u64, entries as u64];
        let mut w = 0;
        while w < words.len() {
            h = (h ^ words[w]).wrapping_mul(0x100_0000_01b3);
            w += 1;
        }
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_layout() {
        let named: Vec<&str> = PINNED_LAYOUT.iter().map(|l| l.0).collect();
        assert_eq!(named, n::PINNED);
    }

    #[test]
    fn the_pinned_layout_matches_its_version() {
        // Version 3: NODE_STATE (one word: may FLOWS have entries) became
        // FLOW_PORTS (a mark per destination port); SMALL_SERVER_IDS is new;
        // LISTENER_PORTS (a bit per port) became PORT_LISTENERS and LISTENER_SLOTS.
        assert_eq!(
            (MAP_LAYOUT_VERSION, layout_fingerprint()),
            (3, 0xe19f_8b1e_952c_46c9),
            "a pinned map's layout changed: bump MAP_LAYOUT_VERSION and record the new fingerprint here"
        );
    }
}
