use super::*;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("migr-report-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn scenario_json(name: &str, steering: bool) -> String {
    serde_json::json!({
        "schema": "migr-testbed/1",
        "scenario": name,
        "description": "test",
        "config": {"protocol": "quic", "strategy": "p-explicit", "steering": steering,
                   "technique": "cold", "preset": "none", "mode": "back-to-back",
                   "ballast_mb": 28},
        "summary": {
            "downtime_ms": {"n": 2, "mean": 150.0, "ci95": 10.0, "min": 140.0, "max": 160.0},
            "disruption_ms": {"n": 2, "mean": 155.0, "ci95": 12.0, "min": 140.0, "max": 170.0},
            "dump_ms": {"n": 1, "mean": 50.0, "ci95": null, "min": 50.0, "max": 50.0},
            "lazy_pages_ms": null,
        },
        "runs": [{}, {}],
    })
    .to_string()
}

#[test]
fn missing_directory_is_a_clear_error() {
    let e = load(Path::new("/nonexistent/migr-results"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not exist") && e.contains("cargo xtask testbed"),
        "{e}"
    );
}

#[test]
fn no_results_is_a_clear_error() {
    let d = tmpdir("empty");
    let e = load(&d).unwrap_err().to_string();
    assert!(e.contains("no migr-testbed/1 results"), "{e}");
}

#[test]
fn bad_json_names_the_file() {
    let d = tmpdir("bad");
    std::fs::write(d.join("broken.json"), "{ not json").unwrap();
    let e = format!("{:#}", load(&d).unwrap_err());
    assert!(
        e.contains("broken.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn missing_field_names_the_field() {
    let d = tmpdir("field");
    let mut v: Value = serde_json::from_str(&scenario_json("x-steering-on", true)).unwrap();
    v["config"].as_object_mut().unwrap().remove("steering");
    std::fs::write(d.join("x-steering-on.json"), v.to_string()).unwrap();
    let e = load(&d).unwrap_err().to_string();
    assert!(
        e.contains("x-steering-on.json") && e.contains("missing field `steering`"),
        "{e}"
    );
    std::fs::write(d.join("x-steering-on.json"), r#"{"scenario": "x"}"#).unwrap();
    let e = load(&d).unwrap_err().to_string();
    assert!(e.contains("no `schema`"), "{e}");
}

#[test]
fn reads_stats_csvs_and_writes_the_report() {
    let d = tmpdir("ok");
    for (name, on) in [("q-steering-on", true), ("q-steering-off", false)] {
        std::fs::write(d.join(format!("{name}.json")), scenario_json(name, on)).unwrap();
        std::fs::create_dir_all(d.join(name)).unwrap();
        let mut csv =
            String::from("index,send_time_ms,response_time_ms,service_time_ms,server_address\n");
        for i in 0..50 {
            let st = if i == 20 { 150.0 } else { 0.3 };
            let _ = writeln!(
                csv,
                "{i},{}.0,{},{st},10.60.11.2:4433",
                i * 2,
                i as f64 * 2.0 + st
            );
        }
        std::fs::write(d.join(name).join("run-1.csv"), csv).unwrap();
    }
    std::fs::write(d.join("other.json"), r#"{"schema": "something-else/1"}"#).unwrap();
    let mut baseline: Value = serde_json::from_str(&scenario_json("q-baseline", false)).unwrap();
    baseline["summary"]["disruption_ms"]["mean"] = 450.0.into();
    baseline["failed_runs"] = serde_json::json!([{"run": 3, "error": "criu dump failed\nmore"}]);
    std::fs::write(d.join("q-baseline.json"), baseline.to_string()).unwrap();
    let r = load(&d).unwrap();
    assert_eq!(r.testbed.len(), 3);
    assert_eq!(r.notes.len(), 1);
    let s = r
        .testbed
        .iter()
        .find(|s| s.name == "q-steering-on")
        .unwrap();
    assert_eq!(s.base(), "q");
    assert_eq!(s.stat("downtime_ms").map(|x| x.mean), Some(150.0));
    assert_eq!(s.stat("dump_ms").and_then(|x| x.ci95), None);
    assert_eq!(s.stat("lazy_pages_ms"), None);
    assert_eq!(s.csvs.len(), 1);
    let rows = read_csv(&s.csvs[0]).unwrap();
    assert_eq!(rows.len(), 50);
    let written = write_report(&r, &d).unwrap();
    assert!(written.contains(&"plots/steering.svg".to_string()));
    assert!(written.contains(&"plots/service-time-q.svg".to_string()));
    let md = std::fs::read_to_string(d.join("README.md")).unwrap();
    assert!(
        md.contains("| q | 150 ± 10 | 150 ± 10 | 155 ± 12 | 155 ± 12 | - | - | 1.00 | 1.00 |"),
        "{md}"
    );
    assert!(md.contains("No `results/mptcp-*.json` here"), "{md}");
    assert!(
        md.contains("| q | 2 / 2 | 150 ± 10 | 150 ± 10 | - / - | +5 ms | +300 ms | -295 ± 17 |"),
        "migr against the baseline: {md}"
    );
    assert!(
        md.contains("- q-baseline run 3: criu dump failed\n"),
        "{md}"
    );
    assert!(
        !md.contains("| q-baseline | off |"),
        "the baseline is not an unpaired scenario: {md}"
    );
    let svg = std::fs::read_to_string(d.join("plots/phases.svg")).unwrap();
    assert!(svg.contains("q-steering-on"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn malformed_csv_row_names_the_line() {
    let d = tmpdir("csv");
    let p = d.join("run-1.csv");
    std::fs::write(&p, "index,send_time_ms,response_time_ms,service_time_ms,server_address\n1,2,3,4,a\n2,x,3,4,a\n").unwrap();
    let e = read_csv(&p).unwrap_err().to_string();
    assert!(e.contains("run-1.csv:3"), "{e}");
    std::fs::write(&p, "wrong\n").unwrap();
    assert!(read_csv(&p).unwrap_err().to_string().contains("first line"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn techniques_are_tabled_against_cold_with_the_guest_named() {
    let d = tmpdir("techniques");
    for (t, downtime) in [("cold", 150.0), ("pre-copy", 75.0)] {
        let mut doc: Value = serde_json::from_str(&scenario_json(
            &format!("techniques-quic-p-explicit-{t}-steering-on"),
            true,
        ))
        .unwrap();
        doc["summary"]["downtime_ms"]["mean"] = serde_json::json!(downtime);
        std::fs::write(
            d.join(format!("techniques-quic-p-explicit-{t}-steering-on.json")),
            doc.to_string(),
        )
        .unwrap();
    }
    std::fs::write(
        d.join(crate::vm::GUEST_FILE),
        "Linux 6.12 in QEMU with TCG\n",
    )
    .unwrap();
    let r = load(&d).unwrap();
    write_report(&r, &d).unwrap();
    let md = std::fs::read_to_string(d.join("README.md")).unwrap();
    assert!(
        md.contains("Measured in a guest: Linux 6.12 in QEMU with TCG."),
        "{md}"
    );
    let row = md
        .lines()
        .find(|l| l.starts_with("| quic-p-explicit | steering-on | pre-copy |"))
        .unwrap_or_else(|| panic!("no pre-copy row:\n{md}"));
    assert!(
        row.contains("| 0.50 |"),
        "pre-copy's downtime is half cold's: {row}"
    );
    assert!(d.join("plots/techniques.svg").exists());
}

#[test]
fn a_guests_results_are_linked_from_the_hosts_report() {
    let d = tmpdir("guest-link");
    std::fs::write(
        d.join("quic-b2b-p-explicit-small-steering-on.json"),
        scenario_json("quic-b2b-p-explicit-small-steering-on", true),
    )
    .unwrap();
    let guest = d.join("vm-6.12");
    std::fs::create_dir_all(&guest).unwrap();
    std::fs::write(
        guest.join(crate::vm::GUEST_FILE),
        "Linux 6.12 in QEMU with TCG\n",
    )
    .unwrap();
    write_report(&load(&d).unwrap(), &d).unwrap();
    let md = std::fs::read_to_string(d.join("README.md")).unwrap();
    assert!(
        md.contains("- [vm-6.12/README.md](vm-6.12/README.md): Linux 6.12 in QEMU with TCG"),
        "{md}"
    );
}
