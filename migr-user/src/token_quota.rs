//! How many MPTCP tokens one client address may make the agent learn.
//!
//! The agent installs the token of every MP_CAPABLE key report. Keys are the
//! client's to choose, so a single address can forge a new connection in
//! every frame and fill `TOKENS` with tokens no join will ever use (the LRU
//! then pushes out real ones). Each source address therefore has a token
//! bucket: [`TOKEN_BURST`] at once, then [`TOKENS_PER_SECOND`]. That is far
//! more than one client opens MPTCP connections (a NAT in front of many
//! clients shares it, a documented limit); the datapath's event budget
//! bounds the reports of all sources together.

use std::{collections::HashMap, net::IpAddr, time::Instant};

/// Tokens one address may have learned at once.
pub const TOKEN_BURST: f64 = 256.0;
/// Tokens one address may have learned per second after its burst.
pub const TOKENS_PER_SECOND: f64 = 64.0;
/// Addresses tracked at most (the idlest make room): a flood from spoofed
/// addresses costs bounded memory.
pub const TRACKED_SOURCES: usize = 4096;

#[derive(Debug, Default)]
pub struct TokenQuota {
    /// Per address: tokens left and when that was.
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// Tokens refused so far.
    pub refused: u64,
}

impl TokenQuota {
    /// May `source` have one more token learned at `now`?
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= TRACKED_SOURCES {
            self.forget_fullest(now);
        }
        let (left, at) = self.buckets.entry(source).or_insert((TOKEN_BURST, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * TOKENS_PER_SECOND;
        *left = (*left + refill).min(TOKEN_BURST);
        *at = now;
        if *left >= 1.0 {
            *left -= 1.0;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// Drops the address with the fullest bucket by now (it has learned the
    /// fewest tokens lately; forgetting it gives it a full burst, which is
    /// close to what it has).
    fn forget_fullest(&mut self, now: Instant) {
        let level = |(left, at): &(f64, Instant)| {
            left + now.saturating_duration_since(*at).as_secs_f64() * TOKENS_PER_SECOND
        };
        if let Some(addr) = self
            .buckets
            .iter()
            .max_by(|a, b| level(a.1).total_cmp(&level(b.1)))
            .map(|(addr, _)| *addr)
        {
            self.buckets.remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_address_gets_its_burst_then_the_rate() {
        let mut q = TokenQuota::default();
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let first = (0..1000).filter(|_| q.allow(a, t0)).count();
        assert_eq!(first, TOKEN_BURST as usize);
        assert_eq!(q.refused, 1000 - TOKEN_BURST as u64);
        assert!(q.allow(b, t0), "another address has its own bucket");
        let later = t0 + Duration::from_secs(1);
        let refilled = (0..1000).filter(|_| q.allow(a, later)).count();
        assert_eq!(refilled, TOKENS_PER_SECOND as usize);
        assert!(!q.allow(a, later));
        let one_token = Duration::from_secs_f64(1.0 / TOKENS_PER_SECOND);
        assert!(q.allow(a, later + one_token));
    }

    #[test]
    fn a_flood_of_addresses_costs_bounded_memory() {
        let mut q = TokenQuota::default();
        let t0 = Instant::now();
        for i in 0..(TRACKED_SOURCES as u32 + 100) {
            assert!(q.allow(IpAddr::from(i.to_be_bytes()), t0));
        }
        assert_eq!(q.buckets.len(), TRACKED_SOURCES);
    }
}
