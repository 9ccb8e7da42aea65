//! `migrctl explain PCAP` against a running agent's tables.

use std::net::Ipv4Addr;

use migr_testkit::{agent_harness::*, frames::FrameBuilder};
use serde_json::Value;

/// A capture of known frames: one to a frozen service (parked), one to a
/// serving one (passed), one to no service, a cut IPv4 header and an ARP
/// frame. Explain gives each its verdict and reasons, and the agent's
/// counters, park ring and stores are the same afterwards.
#[test]
fn explain_gives_each_captured_frame_its_verdict_and_changes_nothing() {
    let t = Topology::new(false, &[]);
    for (id, name, port) in [(5, "frozen", PORT), (6, "open", PORT + 1)] {
        t.src_agent
            .add_udp_service(id, name, &format!("{SRC_IP}:{port}"));
    }
    t.src_agent.phase("frozen", "freeze");
    let (client, node): (Ipv4Addr, Ipv4Addr) =
        (CLIENT_IP.parse().unwrap(), SRC_IP.parse().unwrap());
    let udp = |port| {
        FrameBuilder::udp_v4(client, 40000, node, port)
            .payload(b"seq=1")
            .build()
    };
    let mut cut = udp(PORT);
    cut.truncate(14 + 12);
    let arp = FrameBuilder::ethernet(0x0806).payload(&[0; 28]).build();
    let frames = [udp(PORT), udp(PORT + 1), udp(9), cut, arp];
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let file = t.scratch().join("known.pcap");
    std::fs::write(&file, migr_user::pcap::write(&refs)).unwrap();

    let before = t.src_agent.json(&["stats"]);
    let json: Value = serde_json::from_str(&t.src_agent.ok(&[
        "explain",
        file.to_str().unwrap(),
        "--pin-dir",
        t.src_agent.pin_dir.to_str().unwrap(),
        "--json",
    ]))
    .expect("explain --json prints JSON");
    let after = t.src_agent.json(&["stats"]);

    let got: Vec<(Value, Value, Value)> = json["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| {
            (
                f["service"].clone(),
                f["verdict"].clone(),
                f["reasons"].clone(),
            )
        })
        .collect();
    let none = Value::Null;
    assert_eq!(got.len(), 5, "{json}");
    assert_eq!(
        (&got[0].0, &got[0].1),
        (&Value::from(5), &Value::from("park")),
        "{json}"
    );
    assert_eq!(
        (&got[1].0, &got[1].1),
        (&Value::from(6), &Value::from("pass")),
        "{json}"
    );
    assert_eq!((&got[2].0, &got[2].1), (&none, &none), "no service: {json}");
    assert!(
        got[3]
            .2
            .as_array()
            .unwrap()
            .contains(&Value::from("malformed")),
        "{json}"
    );
    assert!(
        got[4]
            .2
            .as_array()
            .unwrap()
            .contains(&Value::from("not_ip")),
        "{json}"
    );
    assert_eq!(
        json["frames"][0]["xdp"], "XDP_DROP",
        "a parked frame leaves the wire: {json}"
    );
    assert_eq!(json["service_names"]["5"], "frozen");
    assert_eq!(
        json["frames"][0]["flow"],
        format!("UDP {CLIENT_IP}:40000 > {SRC_IP}:{PORT}")
    );
    assert_eq!(json["frames"][4]["flow"], Value::Null);

    // The agent saw nothing of it.
    assert_eq!(
        before["reasons"], after["reasons"],
        "reason counters untouched"
    );
    assert_eq!(before["protocols"], after["protocols"]);
    for (b, a) in before["services"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["services"].as_array().unwrap())
    {
        assert_eq!(b["verdicts"], a["verdicts"], "verdict counters untouched");
        assert_eq!(b["parked"], a["parked"], "nothing stored");
    }
    assert_eq!(after["agent"]["ring_backlog_bytes"], 0);
    let table = t.src_agent.ok(&[
        "explain",
        file.to_str().unwrap(),
        "--pin-dir",
        t.src_agent.pin_dir.to_str().unwrap(),
    ]);
    assert!(
        table.contains("frozen (5)") && table.contains("park"),
        "{table}"
    );
    println!("{table}");
}
