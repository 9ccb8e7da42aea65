//! `migrctl explain PCAP`: the verdict the loaded program gives each
//! captured frame, against the agent's current tables, without touching
//! the agent's counters, rings or state (see `crate::explain`).

use std::{collections::BTreeMap, path::Path};

use serde_json::Value;

use super::{Client, CtlError};
use crate::{
    explain::{Explained, Explainer},
    pcap,
};

pub(super) fn explain(
    client: &Client,
    file: &Path,
    pin_dir: &Path,
    json_out: bool,
) -> Result<(), CtlError> {
    let bytes = std::fs::read(file)
        .map_err(|e| CtlError::usage(format!("reading {}: {e}", file.display())))?;
    let frames =
        pcap::parse(&bytes).map_err(|e| CtlError::usage(format!("{}: {e:#}", file.display())))?;
    let mut explainer = Explainer::new(pin_dir).map_err(|e| CtlError::refused(format!("{e:#}")))?;
    let mut out = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let e = explainer
            .run(i + 1, &f.data, f.truncated())
            .map_err(|e| CtlError::refused(format!("frame {}: {e:#}", i + 1)))?;
        out.push(e);
    }
    // Names, if the agent answers; ids alone otherwise.
    let names: BTreeMap<u32, String> = client
        .call("service.list", Value::Null)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Some((s["id"].as_u64()? as u32, s["name"].as_str()?.to_string())))
        .collect();
    if json_out {
        let v = serde_json::json!({
            "frames": out,
            "service_names": names,
            "copy_problems": explainer.copy_problems,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    for p in &explainer.copy_problems {
        eprintln!("migrctl: note: not copied: {p}");
    }
    println!(
        "{:>6} {:>6}  {:<44} {:<20} {:<8} {:<13} REASONS",
        "FRAME", "BYTES", "FLOW", "SERVICE", "VERDICT", "XDP"
    );
    for e in &out {
        println!("{}", line(e, &names));
    }
    Ok(())
}

/// One frame's line of the report.
fn line(e: &Explained, names: &BTreeMap<u32, String>) -> String {
    let service = match e.service {
        None => "-".to_string(),
        Some(id) => match names.get(&id) {
            Some(name) => format!("{name} ({id})"),
            None => format!("id {id}"),
        },
    };
    let mut reasons = e.reasons.join(",");
    if e.truncated {
        reasons.push_str(if reasons.is_empty() { "" } else { " " });
        reasons.push_str("[truncated capture]");
    }
    format!(
        "{:>6} {:>6}  {:<44} {:<20} {:<8} {:<13} {}",
        e.frame,
        e.bytes,
        e.flow.as_deref().unwrap_or("-"),
        service,
        e.verdict.as_deref().unwrap_or("-"),
        e.xdp,
        if reasons.is_empty() { "-" } else { &reasons }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_service_or_its_id() {
        let e = Explained {
            frame: 3,
            bytes: 74,
            truncated: true,
            flow: Some("UDP 10.0.0.1:5000 > 10.0.0.2:443".into()),
            xdp: "XDP_PASS".into(),
            service: Some(4),
            verdict: Some("park".into()),
            reasons: vec!["held_behind_backlog".into()],
        };
        let names: BTreeMap<u32, String> = [(4, "web".to_string())].into();
        let l = line(&e, &names);
        assert!(l.contains("web (4)") && l.contains("park"), "{l}");
        assert!(
            l.ends_with("held_behind_backlog [truncated capture]"),
            "{l}"
        );
        assert!(line(&e, &BTreeMap::new()).contains("id 4"));
        let none = Explained {
            service: None,
            verdict: None,
            reasons: vec![],
            truncated: false,
            ..e
        };
        assert!(line(&none, &names).ends_with(" -"));
    }
}
