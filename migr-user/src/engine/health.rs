//! The agent's readiness (`health`; `/readyz` on the metrics listener):
//! its programs are attached where it put them, its maps are pinned, it
//! keeps up with the park ring, and every registered service is in force.
//! The checks are pure functions of what the engine found, tested here.

use std::{path::Path, time::Duration, time::Instant};

use migr_common::maps::map_names;
use migr_control::api::{Health, HealthCheck};

use super::Engine;
use crate::{link_info, netdev::if_index, pin_layout::maps_dir};

/// How long parked records may wait in the ring, unconsumed, before the
/// agent counts as not keeping up.
pub const RING_STALE: Duration = Duration::from_secs(5);

impl Engine {
    pub(super) fn health(&self, now: Instant) -> Health {
        let links: Vec<(String, String, LinkSeen)> = self
            .links
            .iter()
            .map(|l| ("xdp", l))
            .chain(self.tc_links.iter().map(|l| ("tc", l)))
            .map(|(kind, l)| {
                let seen = match (link_info::attached_ifindex(&l.pin), if_index(&l.iface)) {
                    (Ok(at), Ok(now)) => LinkSeen::At { at, now },
                    (Err(e), _) => LinkSeen::Unreadable(e.to_string()),
                    (Ok(at), Err(_)) => LinkSeen::At { at, now: 0 },
                };
                (kind.to_string(), l.iface.clone(), seen)
            })
            .collect();
        let faults: Vec<(String, String)> = self
            .services
            .values()
            .filter_map(|s| s.fault.clone().map(|f| (s.spec.name.clone(), f)))
            .collect();
        Health::from_checks(vec![
            attached(&links),
            maps_pinned(&self.cfg.pin_dir),
            ring_drained(
                self.ring.backlog(),
                now.saturating_duration_since(self.ring_empty_at),
            ),
            services(&faults),
        ])
    }
}

/// What the kernel says of one link.
#[derive(Debug)]
pub enum LinkSeen {
    /// Attached to interface `at` (0: detached); the link's interface has
    /// index `now` today (0: gone).
    At {
        at: u32,
        now: u32,
    },
    Unreadable(String),
}

fn check(name: &str, problems: Vec<String>, fine: String) -> HealthCheck {
    HealthCheck {
        name: name.to_string(),
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            fine
        } else {
            problems.join("; ")
        },
    }
}

/// Every link attached to the interface of its name.
pub fn attached(links: &[(String, String, LinkSeen)]) -> HealthCheck {
    let problems = links
        .iter()
        .filter_map(|(kind, iface, seen)| match seen {
            LinkSeen::At { at, now } if *at != 0 && at == now => None,
            LinkSeen::At { at: 0, .. } => Some(format!(
                "{kind} on {iface}: detached (the interface was deleted)"
            )),
            LinkSeen::At { now: 0, .. } => Some(format!("{kind} on {iface}: the interface is gone")),
            LinkSeen::At { at, now } => Some(format!(
                "{kind} on {iface}: attached to ifindex {at}, but {iface} is ifindex {now} now (re-created)"
            )),
            LinkSeen::Unreadable(e) => Some(format!("{kind} on {iface}: link unreadable: {e}")),
        })
        .collect();
    let fine = if links.is_empty() {
        "no interface".to_string()
    } else {
        let names: Vec<String> = links
            .iter()
            .map(|(k, i, _)| format!("{k} on {i}"))
            .collect();
        names.join(", ")
    };
    let mut c = check("attached", problems, fine);
    if links.is_empty() {
        c.ok = false;
    }
    c
}

/// Every state map pinned where the next agent will look for it.
pub fn maps_pinned(pin_dir: &Path) -> HealthCheck {
    let dir = maps_dir(pin_dir);
    let missing: Vec<&str> = map_names::PINNED
        .iter()
        .copied()
        .filter(|m| !dir.join(m).exists())
        .collect();
    let problems = match missing.is_empty() {
        true => Vec::new(),
        false => vec![format!(
            "not pinned in {}: {} (a restart would lose their state)",
            dir.display(),
            missing.join(", ")
        )],
    };
    check(
        "maps_pinned",
        problems,
        format!("{} maps in {}", map_names::PINNED.len(), dir.display()),
    )
}

/// The park ring was empty within [`RING_STALE`].
pub fn ring_drained(backlog_bytes: u64, since_empty: Duration) -> HealthCheck {
    let problems = match backlog_bytes > 0 && since_empty > RING_STALE {
        true => vec![format!(
            "{backlog_bytes} bytes waiting in the park ring, not empty for {:.1} s",
            since_empty.as_secs_f64()
        )],
        false => Vec::new(),
    };
    check(
        "ring_drained",
        problems,
        format!("{backlog_bytes} bytes waiting"),
    )
}

/// No registered service is switched off by a fault.
pub fn services(faults: &[(String, String)]) -> HealthCheck {
    let problems = faults
        .iter()
        .map(|(name, fault)| format!("{name}: {fault}"))
        .collect();
    check("services", problems, "none faulted".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(at: u32, now: u32) -> (String, String, LinkSeen) {
        ("xdp".into(), "eth0".into(), LinkSeen::At { at, now })
    }

    #[test]
    fn a_link_counts_as_attached_only_to_its_interface_of_today() {
        assert!(attached(&[link(3, 3)]).ok);
        let gone = attached(&[link(0, 0)]);
        assert!(!gone.ok && gone.detail.contains("detached"), "{gone:?}");
        let recreated = attached(&[link(3, 9)]);
        assert!(
            !recreated.ok && recreated.detail.contains("re-created"),
            "{recreated:?}"
        );
        assert!(!attached(&[]).ok, "no interface is not ready");
        let unreadable = (
            "tc".into(),
            "eth0".into(),
            LinkSeen::Unreadable("ENOENT".into()),
        );
        assert!(!attached(&[link(3, 3), unreadable]).ok);
    }

    #[test]
    fn a_ring_not_empty_for_long_is_not_ready() {
        assert!(ring_drained(0, Duration::from_secs(60)).ok, "empty now");
        assert!(ring_drained(4096, Duration::from_secs(1)).ok, "recently");
        let stale = ring_drained(4096, RING_STALE + Duration::from_millis(1));
        assert!(
            !stale.ok && stale.detail.contains("4096 bytes"),
            "{stale:?}"
        );
    }

    #[test]
    fn missing_pins_and_faulted_services_are_named() {
        let c = maps_pinned(Path::new("/nonexistent-migr-pins"));
        assert!(!c.ok && c.detail.contains("SERVICES"), "{c:?}");
        let s = services(&[("web".into(), "its forward interface vanished".into())]);
        assert!(!s.ok && s.detail.starts_with("web: "), "{s:?}");
        assert!(services(&[]).ok);
        let h = Health::from_checks(vec![services(&[]), c]);
        assert!(!h.ready);
    }
}
