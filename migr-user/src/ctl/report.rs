//! What migrctl prints: phase results, a service's status, the agent's
//! statistics, as text tables (or JSON).

use migr_control::api::{
    ForwardModeSpec, ForwardSpec, Health, PhaseResult, RuleProto, ServiceStatus, Stats,
};
use serde_json::Value;

use super::{Client, CtlError, from};

pub(super) fn describe_forward(f: Option<&ForwardSpec>) -> String {
    match f {
        None => "no forward target".into(),
        Some(f) => {
            let mode = match f.mode {
                ForwardModeSpec::AddressChanging => "address-changing",
                ForwardModeSpec::SameIp => "same-ip",
            };
            match f.addr {
                Some(a) => format!("forwards to {a} via {} ({mode})", f.iface),
                None => format!("forwards via {} ({mode})", f.iface),
            }
        }
    }
}

/// A forward link state (`ServiceStatus::forward_link`) in words.
pub(super) fn describe_link(state: &str) -> &str {
    match state {
        "no-carrier" => "no carrier",
        "missing" => "missing (gone or re-created)",
        other => other,
    }
}

pub(super) fn print_phase(r: &PhaseResult) {
    if r.unchanged {
        println!("{}: already {} (datapath {})", r.service, r.to, r.datapath);
    } else {
        println!(
            "{}: {} -> {} (datapath {}) in {} us",
            r.service, r.from, r.to, r.datapath, r.latency_us
        );
    }
}

pub(super) fn health(client: &Client, json_out: bool) -> Result<(), CtlError> {
    let v = client.call("health", Value::Null)?;
    let h: Health = from(v.clone())?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for c in &h.checks {
            let verdict = if c.ok { "ok" } else { "FAILED" };
            println!("{:<13} {verdict:<6} {}", c.name, c.detail);
        }
    }
    match h.ready {
        true => Ok(()),
        false => Err(CtlError {
            code: 1,
            message: "not ready".into(),
        }),
    }
}

pub(super) fn stats(client: &Client, json_out: bool) -> Result<(), CtlError> {
    let v = client.call("stats", Value::Null)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let s: Stats = from(v)?;
    println!(
        "migr-agent {} on {} (pins {}), up {} s, park ring backlog {} bytes, parked {} of at most {} bytes (all services)",
        s.agent.version,
        s.agent.interfaces.join(", "),
        s.agent.pin_dir,
        s.agent.uptime_s,
        s.agent.ring_backlog_bytes,
        s.agent.park_pending_bytes,
        s.agent.park_max_total_bytes
    );
    let nonzero: Vec<String> = s
        .reasons
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    println!(
        "datapath reasons: {}",
        if nonzero.is_empty() {
            "none".into()
        } else {
            nonzero.join(" ")
        }
    );
    for st in &s.services {
        println!();
        print_service(st);
    }
    Ok(())
}

pub(super) fn print_service(st: &ServiceStatus) {
    println!("service {} ({})", st.spec.id, st.spec.name);
    if let Some(fault) = &st.fault {
        println!("  FAULTED   {fault}; its frames pass (remove and add it again)");
    }
    println!(
        "  state     {}{}{}, datapath {}",
        st.state,
        st.role
            .map(|r| format!(" ({})", r.name()))
            .unwrap_or_default(),
        st.replay_stage
            .as_ref()
            .map(|s| format!(", replay {s}"))
            .unwrap_or_default(),
        st.datapath
    );
    for r in &st.spec.rules {
        let extra = if r.proto == RuleProto::Quic {
            format!(
                " server ids {:?} cid {:?}{}",
                r.server_ids,
                r.cid.map(|c| (c.len, c.offset, c.id_len)),
                if r.grease { " grease" } else { "" }
            )
        } else {
            String::new()
        };
        println!(
            "  match     {} {}{extra}",
            serde_json::to_value(r.proto)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.addr
        );
    }
    println!(
        "  forward   {}{}",
        describe_forward(st.spec.forward.as_ref()),
        st.forward_link
            .as_deref()
            .map(|l| format!(", link {}", describe_link(l)))
            .unwrap_or_default()
    );
    let v: Vec<String> = st
        .verdicts
        .iter()
        .filter(|(_, c)| c.packets > 0)
        .map(|(k, c)| format!("{k}={}", c.packets))
        .collect();
    println!(
        "  verdicts  {}",
        if v.is_empty() {
            "none".into()
        } else {
            v.join(" ")
        }
    );
    let p = &st.parked;
    let failures = match p.store_failures {
        0 => String::new(),
        n => format!(", {n} failed store writes (retried)"),
    };
    println!(
        "  parked    {} pending ({} bytes), {} stored, {} overflowed (limit {} frames / {} bytes){failures}",
        p.pending_frames,
        p.pending_bytes,
        p.stored_frames,
        p.overflow_frames,
        p.limit_frames,
        p.limit_bytes
    );
    let r = &st.replay;
    println!(
        "  replayed  {} frames ({} bytes), {} failed, {} replays; last {} frames in {:.1} ms ({:.0} frames/s){}",
        r.replayed_frames,
        r.replayed_bytes,
        r.failed_frames,
        r.replays,
        r.last_frames,
        r.last_duration_us as f64 / 1e3,
        r.last_rate_fps,
        if r.uncertain_frames > 0 {
            format!(", {} uncertain after a kill", r.uncertain_frames)
        } else {
            String::new()
        }
    );
    if r.socket_waits + r.socket_drops > 0 {
        println!(
            "  sockets   the replay waited {} times for the service to read; its sockets dropped {} datagrams (buffer full)",
            r.socket_waits, r.socket_drops
        );
    }
    if let Some(l) = st.last_phase_latency_us {
        println!("  latency   last phase change reached the datapath in {l} us");
    }
    if !st.timeline.is_empty() {
        println!("  timeline");
        let start = st.timeline[0].at_ms;
        for e in &st.timeline {
            println!(
                "    +{:>8.3} s  {:<16} ({})",
                (e.at_ms - start) as f64 / 1e3,
                e.what,
                e.cause
            );
        }
    }
}

pub(super) fn status(client: &Client) -> Result<(), CtlError> {
    let s: Stats = from(client.call("stats", Value::Null)?)?;
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|st| {
            let c = |k: &str| st.verdicts.get(k).map_or(0, |c| c.packets).to_string();
            vec![
                st.spec.id.to_string(),
                st.spec.name.clone(),
                match st.replay_stage.as_deref() {
                    Some(stage) => format!("{} ({stage})", st.state),
                    None => st.state.clone(),
                },
                st.datapath.clone(),
                c("pass"),
                c("park"),
                c("forward"),
                c("drop"),
                (st.verdicts.get("park_failed").map_or(0, |c| c.packets)
                    + st.verdicts.get("forward_failed").map_or(0, |c| c.packets))
                .to_string(),
                st.parked.pending_frames.to_string(),
                st.parked.overflow_frames.to_string(),
                st.replay.replayed_frames.to_string(),
                st.last_phase_latency_us
                    .map(|l| format!("{l}us"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!(
        "agent {} on {} up {}s, ring backlog {} bytes",
        s.agent.version,
        s.agent.interfaces.join(","),
        s.agent.uptime_s,
        s.agent.ring_backlog_bytes
    );
    print_table(
        &[
            "ID", "NAME", "STATE", "DATAPATH", "PASS", "PARK", "FORWARD", "DROP", "FAILED",
            "PENDING", "OVERFLOW", "REPLAYED", "LATENCY",
        ],
        &rows,
    );
    for st in &s.services {
        if let (Some(link), Some(f)) = (st.forward_link.as_deref(), st.spec.forward.as_ref())
            && link != "up"
        {
            let (problem, fate) = match link {
                "no-carrier" => ("has no carrier", "dropped by the kernel"),
                "down" => ("is down", "dropped by the kernel"),
                _ => (
                    "is missing (gone, or re-created since the service was added)",
                    "counted forward_failed",
                ),
            };
            println!(
                "warning: {}: forward interface {} {problem}: {}",
                st.spec.name,
                f.iface,
                if st.datapath.starts_with("forward") {
                    format!("the frames it forwards now are lost ({fate})")
                } else {
                    "it cannot forward (restored is refused, parked frames stay parked)".into()
                }
            );
        }
    }
    for problem in &s.agent.recovery_problems {
        println!("warning: at its start: {problem}");
    }
    Ok(())
}

pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
