//! The agent's lease on the datapath's PARK and hold entries.
//!
//! PARK and `SERVICE_HOLD` make frames wait for this agent: parked frames
//! come back only through its replay, and a hold lasts while the ring holds
//! records that only it consumes. Were it to die with no agent taking over,
//! those frames would wait for ever; a held service that already runs again
//! would park its fresh frames and, once the ring is full, drop them. So each
//! such entry carries a deadline (`ServiceEntry::lease_until_ns`) after which
//! the XDP program fails open (PASS, no hold; counted as `lease_expired`),
//! and the engine renews it every quarter of the lease while it runs. An
//! agent restarted within the lease takes over without a frame passing.

use std::time::{Duration, Instant};

use super::Engine;
use crate::datapath::monotonic_ns;

/// The deadline of a lease of `lease` taken now.
pub(super) fn lease_until_ns(lease: Duration) -> u64 {
    monotonic_ns().saturating_add(lease.as_nanos().try_into().unwrap_or(u64::MAX))
}

impl Engine {
    /// When the leases are to be renewed next.
    pub(super) fn next_lease_renewal(&self) -> Instant {
        self.leases_renewed + self.cfg.lease / 4
    }

    /// Renews the lease of every entry that makes frames wait for the agent,
    /// once a quarter of the lease has passed since the last renewal.
    pub(super) fn renew_leases_if_due(&mut self) {
        if Instant::now() < self.next_lease_renewal() {
            return;
        }
        self.leases_renewed = Instant::now();
        let until = lease_until_ns(self.cfg.lease);
        for (id, svc) in &self.services {
            let dps = svc.machine.datapath();
            if svc.fault.is_some() || !dps.waits_for_agent() {
                continue;
            }
            if let Err(e) = self.dp.set_service(*id, &svc.entry(dps, until)) {
                tracing::error!(service = %svc.spec.name, error = %format!("{e:#}"),
                    "renewing the datapath lease failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_is_the_monotonic_one_and_moves_forward() {
        let a = monotonic_ns();
        let until = lease_until_ns(Duration::from_millis(2_000));
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
        assert!(until >= a + 2_000_000_000 && until <= b + 2_000_000_000);
    }
}
