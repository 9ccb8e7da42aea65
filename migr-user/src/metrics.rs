//! Prometheus text exposition (format 0.0.4) of the agent's [`Stats`].

use std::fmt::Write as _;

use migr_control::api::{Histogram, MigrationHistograms, MigrationRecord, Stats};

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// Renders every metric. Families are listed even when they have no samples.
pub fn render(stats: &Stats) -> String {
    let mut o = Out {
        text: String::new(),
    };
    o.family(
        "migr_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
    );
    o.sample("migr_agent_uptime_seconds", &[], stats.agent.uptime_s);
    o.family(
        "migr_park_ring_backlog_bytes",
        "gauge",
        "Bytes in the kernel park ring the agent has not consumed yet.",
    );
    o.sample(
        "migr_park_ring_backlog_bytes",
        &[],
        stats.agent.ring_backlog_bytes,
    );
    o.family(
        "migr_park_unknown_service_records_total",
        "counter",
        "Parked records of services the agent does not know (dropped).",
    );
    o.sample(
        "migr_park_unknown_service_records_total",
        &[],
        stats.agent.unknown_service_records,
    );
    o.family(
        "migr_park_pending_bytes",
        "gauge",
        "Bytes of parked frames stored and not replayed yet, all services.",
    );
    o.sample(
        "migr_park_pending_bytes",
        &[],
        stats.agent.park_pending_bytes,
    );
    o.family(
        "migr_park_max_total_bytes",
        "gauge",
        "Bound of the parked frames all services may hold not replayed (--park-max-total-bytes).",
    );
    o.sample(
        "migr_park_max_total_bytes",
        &[],
        stats.agent.park_max_total_bytes,
    );
    o.family(
        "migr_datapath_full_path_missed_total",
        "counter",
        "Frames passed unclassified because the full classifier the XDP program tail-calls was missing (0 unless the datapath was loaded wrong).",
    );
    o.sample(
        "migr_datapath_full_path_missed_total",
        &[],
        stats.agent.full_path_missed,
    );
    o.family(
        "migr_mptcp_late_joins_learned_total",
        "counter",
        "MPTCP subflows learned from MP_JOINs that arrived before their token.",
    );
    o.sample(
        "migr_mptcp_late_joins_learned_total",
        &[],
        stats.agent.late_joins_learned,
    );
    o.family(
        "migr_mptcp_tokens_refused_total",
        "counter",
        "MPTCP key reports whose token was not learned: their client address was over its quota.",
    );
    o.sample(
        "migr_mptcp_tokens_refused_total",
        &[],
        stats.agent.tokens_refused,
    );
    o.family(
        "migr_datapath_packets_total",
        "counter",
        "Packets the XDP program saw, by protocol class.",
    );
    for (class, n) in &stats.protocols {
        o.sample("migr_datapath_packets_total", &[("class", class)], n);
    }
    o.family(
        "migr_datapath_reason_total",
        "counter",
        "Reason counters of the XDP program (all services).",
    );
    for (reason, n) in &stats.reasons {
        o.sample("migr_datapath_reason_total", &[("reason", reason)], n);
    }

    type Getter = fn(&migr_control::api::ServiceStatus) -> String;
    let per_service: [(&str, &str, &str, Getter); 19] = [
        (
            "migr_parked_pending_frames",
            "gauge",
            "Parked frames stored and not replayed yet.",
            |s| s.parked.pending_frames.to_string(),
        ),
        (
            "migr_parked_pending_bytes",
            "gauge",
            "Bytes of parked frames stored and not replayed yet.",
            |s| s.parked.pending_bytes.to_string(),
        ),
        (
            "migr_parked_frames_total",
            "counter",
            "Parked frames stored.",
            |s| s.parked.stored_frames.to_string(),
        ),
        (
            "migr_parked_bytes_total",
            "counter",
            "Bytes of parked frames stored.",
            |s| s.parked.stored_bytes.to_string(),
        ),
        (
            "migr_parked_checksums_completed_total",
            "counter",
            "Parked frames whose offloaded (partial) UDP/TCP checksum was completed before replay.",
            |s| s.parked.checksums_completed.to_string(),
        ),
        (
            "migr_parked_checksums_bad_total",
            "counter",
            "Parked frames with a wrong, not partial, checksum (replayed as they are).",
            |s| s.parked.checksums_bad.to_string(),
        ),
        (
            "migr_park_overflow_frames_total",
            "counter",
            "Parked frames dropped because the service's store, or all stores together, were full.",
            |s| s.parked.overflow_frames.to_string(),
        ),
        (
            "migr_park_overflow_bytes_total",
            "counter",
            "Bytes of parked frames dropped because the service's store, or all stores together, were full.",
            |s| s.parked.overflow_bytes.to_string(),
        ),
        (
            "migr_park_store_failures_total",
            "counter",
            "Writes to the service's store that failed (the frames stayed in the park ring and were retried).",
            |s| s.parked.store_failures.to_string(),
        ),
        (
            "migr_replayed_frames_total",
            "counter",
            "Parked frames replayed through the XDP program.",
            |s| s.replay.replayed_frames.to_string(),
        ),
        (
            "migr_replayed_bytes_total",
            "counter",
            "Bytes of parked frames replayed.",
            |s| s.replay.replayed_bytes.to_string(),
        ),
        (
            "migr_replay_failed_frames_total",
            "counter",
            "Parked frames the kernel refused to replay (dropped).",
            |s| s.replay.failed_frames.to_string(),
        ),
        (
            "migr_replay_socket_drops_total",
            "counter",
            "Datagrams the service's UDP sockets dropped (receive buffer full) during local replays.",
            |s| s.replay.socket_drops.to_string(),
        ),
        (
            "migr_replay_socket_waits_total",
            "counter",
            "Times a local replay waited for the service to read its full sockets.",
            |s| s.replay.socket_waits.to_string(),
        ),
        (
            "migr_replays_total",
            "counter",
            "Replays started (restored or abort).",
            |s| s.replay.replays.to_string(),
        ),
        (
            "migr_replay_last_duration_seconds",
            "gauge",
            "Duration of the last backlog replay.",
            |s| format!("{}", s.replay.last_duration_us as f64 / 1e6),
        ),
        (
            "migr_replay_last_frames",
            "gauge",
            "Frames of the last backlog replay.",
            |s| s.replay.last_frames.to_string(),
        ),
        (
            "migr_replay_last_rate_frames_per_second",
            "gauge",
            "Replay rate of the last backlog replay.",
            |s| format!("{:.1}", s.replay.last_rate_fps),
        ),
        (
            "migr_phase_latency_seconds",
            "gauge",
            "Time from receiving the last phase command to the datapath update.",
            |s| {
                s.last_phase_latency_us
                    .map(|us| format!("{}", us as f64 / 1e6))
                    .unwrap_or_else(|| "NaN".into())
            },
        ),
    ];

    o.family(
        "migr_service_packets_total",
        "counter",
        "Packets the XDP program handled, by service and verdict (a replayed frame counts again with its replay verdict).",
    );
    for s in &stats.services {
        let id = s.spec.id.to_string();
        for (verdict, c) in &s.verdicts {
            o.sample(
                "migr_service_packets_total",
                &[("service", &s.spec.name), ("id", &id), ("verdict", verdict)],
                c.packets,
            );
        }
    }
    o.family(
        "migr_service_bytes_total",
        "counter",
        "Bytes the XDP program handled, by service and verdict.",
    );
    for s in &stats.services {
        let id = s.spec.id.to_string();
        for (verdict, c) in &s.verdicts {
            o.sample(
                "migr_service_bytes_total",
                &[("service", &s.spec.name), ("id", &id), ("verdict", verdict)],
                c.bytes,
            );
        }
    }
    for (name, kind, help, get) in per_service {
        o.family(name, kind, help);
        for s in &stats.services {
            let id = s.spec.id.to_string();
            o.sample(name, &[("service", &s.spec.name), ("id", &id)], get(s));
        }
    }
    o.family(
        "migr_service_state",
        "gauge",
        "1 for the phase state the service is in.",
    );
    for s in &stats.services {
        let id = s.spec.id.to_string();
        o.sample(
            "migr_service_state",
            &[
                ("service", &s.spec.name),
                ("id", &id),
                ("state", &s.state),
                ("datapath", &s.datapath),
            ],
            1,
        );
    }
    o.family(
        "migr_phase_timestamp_seconds",
        "gauge",
        "When the service last entered each state (Unix time), for the migration timeline.",
    );
    for s in &stats.services {
        let id = s.spec.id.to_string();
        let mut seen: Vec<&str> = Vec::new();
        for e in s.timeline.iter().rev() {
            if seen.contains(&e.what.as_str()) {
                continue;
            }
            seen.push(&e.what);
            o.sample(
                "migr_phase_timestamp_seconds",
                &[("service", &s.spec.name), ("id", &id), ("phase", &e.what)],
                format!("{:.3}", e.at_ms as f64 / 1e3),
            );
        }
    }
    migrations(&mut o, stats);
    o.text
}

/// The migration histograms (per role) and each service's last migration.
fn migrations(o: &mut Out, stats: &Stats) {
    type Pick = fn(&MigrationHistograms) -> &Histogram;
    let families: [(&str, &str, Pick); 5] = [
        (
            "migr_migration_downtime_seconds",
            "Per migration: from the freeze (or the restore's start) to restored or aborted.",
            |h| &h.downtime_seconds,
        ),
        (
            "migr_migration_client_gap_seconds",
            "Per migration: from the first parked frame's arrival to the last replayed frame's hand-over.",
            |h| &h.client_gap_seconds,
        ),
        (
            "migr_migration_replay_seconds",
            "Per migration: how long the backlog replay took.",
            |h| &h.replay_seconds,
        ),
        (
            "migr_migration_parked_frames",
            "Per migration: frames parked (replayed or given up).",
            |h| &h.parked_frames,
        ),
        (
            "migr_migration_replayed_frames",
            "Per migration: frames replayed.",
            |h| &h.replayed_frames,
        ),
    ];
    for (name, help, pick) in families {
        o.family(name, "histogram", help);
        for (role, hs) in &stats.migrations.roles {
            let h = pick(hs);
            let bucket = format!("{name}_bucket");
            for (bound, n) in h.bounds.iter().zip(h.cumulative()) {
                o.sample(&bucket, &[("role", role), ("le", &bound.to_string())], n);
            }
            o.sample(&bucket, &[("role", role), ("le", "+Inf")], h.count);
            o.sample(&format!("{name}_sum"), &[("role", role)], h.sum);
            o.sample(&format!("{name}_count"), &[("role", role)], h.count);
        }
    }
    type Last = fn(&MigrationRecord) -> Option<f64>;
    let last: [(&str, &str, Last); 2] = [
        (
            "migr_service_last_migration_downtime_seconds",
            "The service's last migration here: its downtime.",
            |r| r.downtime_ms.map(|ms| ms as f64 / 1e3),
        ),
        (
            "migr_service_last_migration_client_gap_seconds",
            "The service's last migration here: the client's gap as the datapath saw it.",
            |r| r.client_gap_ms.map(|ms| ms as f64 / 1e3),
        ),
    ];
    for (name, help, get) in last {
        o.family(name, "gauge", help);
        for s in &stats.services {
            if let Some(v) = s.last_migration.as_ref().and_then(get) {
                let id = s.spec.id.to_string();
                o.sample(name, &[("service", &s.spec.name), ("id", &id)], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use migr_control::{
        api::{AgentInfo, Count, ParkedStats, ReplayStats, ServiceSpec, ServiceStatus},
        phase::TimelineEntry,
    };

    #[test]
    fn renders_every_family_with_labels() {
        let mut verdicts = BTreeMap::new();
        verdicts.insert(
            "park".to_string(),
            Count {
                packets: 7,
                bytes: 700,
            },
        );
        let stats = Stats {
            agent: AgentInfo {
                version: "0".into(),
                protocol: 1,
                interfaces: vec!["eth0".into()],
                pin_dir: "/sys/fs/bpf/migr".into(),
                uptime_s: 5,
                ring_backlog_bytes: 0,
                unknown_service_records: 0,
                late_joins_learned: 0,
                tokens_refused: 0,
                recovery_problems: Vec::new(),
                park_pending_bytes: 7 * 60,
                park_max_total_bytes: 1 << 28,
                full_path_missed: 0,
            },
            reasons: [("replayed".to_string(), 3u64)].into_iter().collect(),
            protocols: [("udp".to_string(), 9u64)].into_iter().collect(),
            services: vec![ServiceStatus {
                spec: ServiceSpec {
                    id: 2,
                    name: "echo".into(),
                    rules: vec![],
                    forward: None,
                    park_limit: None,
                    drain_ms: None,
                    replay_rate: None,
                    container: None,
                    announce: false,
                },
                state: "frozen".into(),
                role: None,
                replay_stage: None,
                datapath: "park".into(),
                verdicts,
                parked: ParkedStats {
                    pending_frames: 7,
                    ..Default::default()
                },
                replay: ReplayStats::default(),
                forward_link: None,
                forward_path: None,
                last_phase_latency_us: Some(120),
                timeline: vec![
                    TimelineEntry {
                        at_ms: 1000,
                        what: "idle".into(),
                        cause: "x".into(),
                    },
                    TimelineEntry {
                        at_ms: 2500,
                        what: "frozen".into(),
                        cause: "freeze".into(),
                    },
                ],
                fault: None,
                last_migration: Some(MigrationRecord {
                    role: "source".into(),
                    finished_at_ms: 3000,
                    downtime_ms: Some(250),
                    client_gap_ms: Some(300),
                    replay_ms: 20,
                    parked_frames: 7,
                    replayed_frames: 7,
                }),
            }],
            migrations: Default::default(),
        };
        let mut stats = stats;
        let record = stats.services[0].last_migration.clone().unwrap();
        stats.migrations.observe(&record);
        let text = render(&stats);
        for line in [
            r#"migr_service_packets_total{service="echo",id="2",verdict="park"} 7"#,
            r#"migr_parked_pending_frames{service="echo",id="2"} 7"#,
            r#"migr_phase_timestamp_seconds{service="echo",id="2",phase="frozen"} 2.500"#,
            r#"migr_phase_latency_seconds{service="echo",id="2"} 0.00012"#,
            r#"migr_datapath_reason_total{reason="replayed"} 3"#,
            "migr_park_pending_bytes 420",
            "migr_park_max_total_bytes 268435456",
            r#"migr_park_store_failures_total{service="echo",id="2"} 0"#,
            "# TYPE migr_replays_total counter",
            r#"migr_migration_downtime_seconds_bucket{role="source",le="0.1"} 0"#,
            r#"migr_migration_downtime_seconds_bucket{role="source",le="0.25"} 1"#,
            r#"migr_migration_downtime_seconds_bucket{role="source",le="+Inf"} 1"#,
            r#"migr_migration_downtime_seconds_count{role="source"} 1"#,
            r#"migr_migration_parked_frames_bucket{role="source",le="10"} 1"#,
            r#"migr_service_last_migration_client_gap_seconds{service="echo",id="2"} 0.3"#,
            "# TYPE migr_migration_client_gap_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
