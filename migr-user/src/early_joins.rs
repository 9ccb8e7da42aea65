//! MP_JOIN SYNs that overtook their token.
//!
//! A client sends its first MP_JOIN right after the MP_CAPABLE handshake's
//! third ACK, which carries the keys the agent derives the token from. The
//! join SYN can therefore reach the datapath before the agent has read the
//! keys and installed the token: the datapath then passes it unclassified and
//! reports it (`EventKind::UnknownJoin`). The agent keeps such joins for a
//! short while; when it installs a token, it learns the subflows that joined
//! with it, so their packets are steered like every other subflow's.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use migr_common::maps::FlowKey;

/// How long an unmatched join is kept. A token is installed within
/// milliseconds of its keys; joins older than this belong to no service.
pub const EARLY_JOIN_TTL: Duration = Duration::from_secs(10);
/// At most this many joins are kept (the oldest make room): a flood of joins
/// with made-up tokens costs bounded memory.
pub const EARLY_JOIN_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub struct EarlyJoins {
    /// (arrival, token, subflow), oldest first.
    joins: VecDeque<(Instant, u32, FlowKey)>,
}

impl EarlyJoins {
    /// Keeps a join whose token was unknown when it arrived.
    pub fn note(&mut self, now: Instant, token: u32, flow: FlowKey) {
        self.expire(now);
        if self.joins.len() == EARLY_JOIN_CAPACITY {
            self.joins.pop_front();
        }
        self.joins.push_back((now, token, flow));
    }

    /// The subflows that joined with `token`, forgotten here.
    pub fn take(&mut self, now: Instant, token: u32) -> Vec<FlowKey> {
        self.expire(now);
        let mut flows = Vec::new();
        self.joins.retain(|&(_, t, flow)| {
            if t == token {
                flows.push(flow);
                false
            } else {
                true
            }
        });
        flows
    }

    pub fn len(&self) -> usize {
        self.joins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.joins.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _, _)) = self.joins.front() {
            if now.duration_since(at) <= EARLY_JOIN_TTL {
                break;
            }
            self.joins.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            src_port: port,
            ..Default::default()
        }
    }

    #[test]
    fn a_token_installed_later_takes_its_joins_only() {
        let t0 = Instant::now();
        let mut joins = EarlyJoins::default();
        joins.note(t0, 7, flow(1));
        joins.note(t0, 8, flow(2));
        joins.note(t0 + Duration::from_millis(1), 7, flow(3));
        assert_eq!(
            joins.take(t0 + Duration::from_millis(2), 7),
            vec![flow(1), flow(3)]
        );
        assert_eq!(joins.take(t0 + Duration::from_millis(2), 7), vec![]);
        assert_eq!(joins.len(), 1);
    }

    #[test]
    fn old_joins_expire_and_the_store_is_bounded() {
        let t0 = Instant::now();
        let mut joins = EarlyJoins::default();
        joins.note(t0, 7, flow(1));
        let later = t0 + EARLY_JOIN_TTL + Duration::from_millis(1);
        assert_eq!(joins.take(later, 7), vec![], "expired");
        for i in 0..EARLY_JOIN_CAPACITY + 10 {
            joins.note(later, i as u32, flow(i as u16));
        }
        assert_eq!(joins.len(), EARLY_JOIN_CAPACITY);
        assert_eq!(joins.take(later, 0), vec![], "the oldest made room");
        assert_eq!(joins.take(later, 10), vec![flow(10)]);
    }
}
