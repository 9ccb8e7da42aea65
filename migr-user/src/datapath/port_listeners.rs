//! `PORT_LISTENERS` and `LISTENER_SLOTS`: the fast path's way to a frame's
//! listener without a lookup in the `LISTENERS` hash map. The rules they
//! follow are `migr_common::maps::PORT_LISTENERS_LEN`'s; the agent is their
//! only writer, and `LISTENERS` stays the truth they are rebuilt from.

use std::collections::{HashMap as StdHashMap, HashSet};

use anyhow::Result;
use aya::maps::Array;
use migr_common::maps::{
    LISTENER_SLOTS_LEN, LISTENERS_ONLY, ListenerEntry, ListenerKey, ListenerSlot, map_names,
    port_listener_index,
};

use super::Datapath;

/// Which `LISTENER_SLOTS` slots `PORT_LISTENERS` names, and which one is
/// taken next: round robin from the last one taken, so that a freed slot is
/// taken again only after every other free slot (a reader that found it just
/// before it was freed has long read it whole by then).
#[derive(Debug)]
pub struct SlotAllocator {
    named: Vec<bool>,
    last: u32,
}

impl SlotAllocator {
    /// `slots` slots, slot 0 never taken (it means "none").
    pub fn new(slots: u32) -> Self {
        let mut named = vec![false; slots as usize];
        if let Some(none) = named.first_mut() {
            *none = true;
        }
        Self { named, last: 0 }
    }

    /// `slot` is named (found so in pinned maps).
    pub fn mark(&mut self, slot: u32) {
        if let Some(named) = self.named.get_mut(slot as usize) {
            *named = true;
        }
    }

    /// The next free slot after the last one taken, now named; None: all are.
    pub fn take(&mut self) -> Option<u32> {
        let n = self.named.len() as u32;
        let slot = (1..=n)
            .map(|step| (self.last + step) % n)
            .find(|&slot| !self.named[slot as usize])?;
        self.named[slot as usize] = true;
        self.last = slot;
        Some(slot)
    }

    pub fn free(&mut self, slot: u32) {
        if slot != 0
            && let Some(named) = self.named.get_mut(slot as usize)
        {
            *named = false;
        }
    }
}

impl Datapath {
    /// The `PORT_LISTENERS` entry of a port and protocol (0: no listener).
    pub fn port_listener(&self, port: u16, proto: u8) -> Result<u32> {
        let Some(index) = port_listener_index(port, proto) else {
            return Ok(0);
        };
        let map = Array::<_, u32>::try_from(self.map(map_names::PORT_LISTENERS)?)?;
        Ok(map.get(&index, 0)?)
    }

    /// Names `listener` (None: no listener) for its port and protocol
    /// (`index`): its key and entry in a fresh slot first, then the slot in
    /// `PORT_LISTENERS`; the slot named before is freed.
    pub(super) fn name_listener(
        &mut self,
        index: u32,
        listener: Option<(ListenerKey, ListenerEntry)>,
    ) -> Result<()> {
        let named = match listener {
            None => 0,
            Some((key, entry)) => match self.listener_slots.take() {
                Some(slot) => {
                    let mut slots = Array::<_, ListenerSlot>::try_from(
                        self.map_mut(map_names::LISTENER_SLOTS)?,
                    )?;
                    slots.set(slot, ListenerSlot { key, entry }, 0)?;
                    slot
                }
                None => LISTENERS_ONLY,
            },
        };
        let mut ports = Array::<_, u32>::try_from(self.map_mut(map_names::PORT_LISTENERS)?)?;
        let before = ports.get(&index, 0)?;
        ports.set(index, named, 0)?;
        if before != LISTENERS_ONLY {
            self.listener_slots.free(before);
        }
        Ok(())
    }

    /// Names one of the listeners `LISTENERS` holds for `port` and `proto`,
    /// or none.
    pub(super) fn name_port_listener(&mut self, port: u16, proto: u8) -> Result<()> {
        let Some(index) = port_listener_index(port, proto) else {
            return Ok(());
        };
        let listener = self
            .listeners()?
            .into_iter()
            .find(|(key, _)| key.port == port && key.proto == proto);
        self.name_listener(index, listener)
    }

    /// Makes `PORT_LISTENERS` say what `LISTENERS` holds, keeping the slots
    /// a previous agent named that are still right (with maps pinned by it,
    /// no frame then ever misses the fast way to its listener).
    pub(super) fn rebuild_port_listeners(&mut self) -> Result<()> {
        let listeners: StdHashMap<ListenerKey, ListenerEntry> =
            self.listeners()?.into_iter().collect();
        // One listener of each port and protocol, to name where a name is due
        // (from this table, not a scan of `LISTENERS` per port).
        let mut one_per_port = StdHashMap::new();
        for (key, entry) in &listeners {
            one_per_port
                .entry((key.port, key.proto))
                .or_insert((*key, *entry));
        }
        let slots = Array::<_, ListenerSlot>::try_from(self.map(map_names::LISTENER_SLOTS)?)?;
        let ports = Array::<_, u32>::try_from(self.map(map_names::PORT_LISTENERS)?)?;
        let mut kept = Vec::new();
        let mut due = HashSet::new();
        for slot in 1..LISTENER_SLOTS_LEN {
            let found = slots.get(&slot, 0)?;
            let Some(index) = port_listener_index(found.key.port, found.key.proto) else {
                continue;
            };
            if ports.get(&index, 0)? != slot {
                continue;
            }
            if listeners.get(&found.key) == Some(&found.entry) {
                kept.push(slot);
            } else {
                due.insert((found.key.port, found.key.proto));
            }
        }
        for &(port, proto) in one_per_port.keys() {
            if let Some(index) = port_listener_index(port, proto)
                && ports.get(&index, 0)? == 0
            {
                due.insert((port, proto));
            }
        }
        for slot in kept {
            self.listener_slots.mark(slot);
        }
        for (port, proto) in due {
            if let Some(index) = port_listener_index(port, proto) {
                self.name_listener(index, one_per_port.get(&(port, proto)).copied())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_round_robin_and_never_slot_0() {
        let mut slots = SlotAllocator::new(4);
        assert_eq!(
            [slots.take(), slots.take(), slots.take()],
            [Some(1), Some(2), Some(3)]
        );
        assert_eq!(slots.take(), None, "all named");
        slots.free(2);
        slots.free(0);
        assert_eq!(slots.take(), Some(2));
        slots.free(1);
        slots.free(3);
        // After 2: 3 first, then 1 (freed before 3, but 3 comes next).
        assert_eq!([slots.take(), slots.take()], [Some(3), Some(1)]);
    }

    #[test]
    fn a_freed_slot_is_taken_again_last() {
        let mut slots = SlotAllocator::new(5);
        let first = slots.take().unwrap();
        slots.free(first);
        let next: Vec<u32> = (0..4).map(|_| slots.take().unwrap()).collect();
        assert_eq!(next, [2, 3, 4, first]);
    }

    #[test]
    fn marked_slots_are_not_taken() {
        let mut slots = SlotAllocator::new(4);
        slots.mark(1);
        slots.mark(3);
        assert_eq!([slots.take(), slots.take()], [Some(2), None]);
    }
}
