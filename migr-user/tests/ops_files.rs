//! The example alert rules and Grafana dashboard in docs/ops/ use only
//! metrics the agent exports, and the files are what they claim to be.

use std::collections::BTreeSet;

use migr_control::api::Stats;
use yaml_rust2::{Yaml, YamlLoader};

/// Every metric name /metrics can carry: each family's `# TYPE` line (the
/// agent lists every family even without samples), and a histogram's
/// `_bucket`, `_sum` and `_count` series.
fn exported() -> BTreeSet<String> {
    let stats: Stats = serde_json::from_value(serde_json::json!({
        "agent": {
            "version": "0", "protocol": 1, "interfaces": ["eth0"], "pin_dir": "/p",
            "uptime_s": 1, "ring_backlog_bytes": 0, "unknown_service_records": 0
        },
        "reasons": {}, "protocols": {}, "services": []
    }))
    .expect("a minimal stats document");
    let text = migr_user::metrics::render(&stats);
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            panic!("a malformed TYPE line: {line}");
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The `migr_*` names in a PromQL expression.
fn used_in(expr: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("migr_") {
        let start = i + at;
        let end = expr[start..]
            .find(|c: char| !is_name(c))
            .map_or(expr.len(), |n| start + n);
        if !expr[..start].ends_with(is_name) {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

fn ops_file(file: &str) -> String {
    let path = format!("{}/../docs/ops/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn check_uses(known: &BTreeSet<String>, what: &str, expr: &str) {
    let used = used_in(expr);
    assert!(!used.is_empty(), "{what} uses no migr metric: {expr}");
    for metric in used {
        assert!(
            known.contains(&metric),
            "{what} uses {metric}, which the agent does not export"
        );
    }
}

#[test]
fn every_alert_rule_uses_exported_metrics() {
    let known = exported();
    let docs = YamlLoader::load_from_str(&ops_file("alerts.yml")).expect("alerts.yml is YAML");
    let groups = docs[0]["groups"].as_vec().expect("a groups list");
    let mut rules = 0;
    for group in groups {
        for rule in group["rules"].as_vec().expect("a rules list") {
            let name = rule["alert"]
                .as_str()
                .expect("every rule is an alert with a name");
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no expr"));
            check_uses(&known, name, expr);
            assert!(
                !matches!(rule["annotations"]["summary"], Yaml::BadValue),
                "{name} has no summary"
            );
            rules += 1;
        }
    }
    assert!(rules >= 5, "only {rules} rules");
}

#[test]
fn every_dashboard_panel_uses_exported_metrics() {
    let known = exported();
    let dash: serde_json::Value =
        serde_json::from_str(&ops_file("dashboard.json")).expect("dashboard.json is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        let title = panel["title"].as_str().expect("a titled panel");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title} has no targets"));
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            check_uses(&known, title, expr);
        }
    }
    // The per-migration figures are on the board.
    let text = dash.to_string();
    for needle in [
        "migr_migration_client_gap_seconds_bucket",
        "migr_migration_downtime_seconds_bucket",
    ] {
        assert!(text.contains(needle), "the dashboard lacks {needle}");
    }
}

#[test]
fn the_name_reader_finds_whole_names_only() {
    assert_eq!(
        used_in("rate(migr_a_total[5m]) / xmigr_b + migr_c{x=\"migr_d\"}"),
        ["migr_a_total", "migr_c", "migr_d"]
    );
    let known = exported();
    assert!(known.contains("migr_migration_downtime_seconds_bucket"));
    assert!(known.contains("migr_agent_uptime_seconds"));
    assert!(!known.contains("migr_nothing"));
}
