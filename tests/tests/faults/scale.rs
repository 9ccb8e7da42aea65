//! 100 services at once.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use migr_testkit::{agent_harness::*, netns::mac_of};
use serde_json::{Value, json};

use crate::helpers::*;

/// 100 UDP services (one port each, one echo process serving them all),
/// frozen together, 10 requests parked for each; then the even ones abort
/// (replayed to the source) and the odd ones are restored at the
/// destination (replayed and forwarded), all in one pipelined batch. Every
/// request is answered once, in order, by its own service's socket.
#[test]
fn a_hundred_services_migrating_at_once_complete_without_cross_talk() {
    const N: u16 = 100;
    const BASE: u16 = 7100;
    const PARKED: usize = 10;
    let mut t = Topology::new(true, &[]);
    let scratch = t.scratch();
    let binds =
        |ip: &str| -> Vec<String> { (0..N).map(|i| format!("{ip}:{}", BASE + i)).collect() };
    let src_echo = start_echo_on(&t.src, &binds(SRC_IP), "src", &scratch, &[]);
    let dst_echo = start_echo_on(t.dst(), &binds(DST_IP), "dst", &scratch, &[]);
    let next_hop = mac_of(t.dst(), "v-ds").unwrap();
    let mac = next_hop
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut api = Api::connect(&t.src_agent.socket);
    let adds: Vec<Value> = (0..N)
        .map(|i| {
            let port = BASE + i;
            request(
                "service.add",
                json!({
                    "id": 100 + i,
                    "name": format!("s{port}"),
                    "rules": [{"proto": "udp", "addr": format!("{SRC_IP}:{port}")}],
                    "forward": {"addr": format!("{DST_IP}:{port}"), "iface": "v-sd", "next_hop_mac": mac},
                }),
            )
        })
        .collect();
    for r in api.pipeline(&adds) {
        assert_eq!(r["ok"], true, "{r}");
    }
    let clients: Vec<UdpClient> = (0..N)
        .map(|i| UdpClient::new(&t.client, &format!("{SRC_IP}:{}", BASE + i)))
        .collect();
    for c in &clients {
        c.send(2);
    }
    for c in &clients {
        assert_eq!(c.wait_answers(2, Duration::from_secs(10)).len(), 2);
    }

    let phase_all = |api: &mut Api, f: &dyn Fn(u16) -> &'static str| {
        let reqs: Vec<Value> = (0..N)
            .map(|i| request("phase", json!({"service": 100 + i, "phase": f(i)})))
            .collect();
        let started = Instant::now();
        let out = api.pipeline(&reqs);
        let elapsed = started.elapsed();
        for r in &out {
            assert_eq!(r["ok"], true, "{r}");
        }
        elapsed
    };
    let freeze_time = phase_all(&mut api, &|_| "freeze");
    src_echo.signal(libc::SIGSTOP);
    for _ in 0..PARKED {
        for c in &clients {
            c.send(1);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_for(
        Duration::from_secs(10),
        "every service's parked frames",
        || {
            let stats = t.src_agent.json(&["stats"]);
            stats["services"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| num(s, &["parked", "stored_frames"]) == PARKED as u64)
        },
    );
    src_echo.signal(libc::SIGCONT);
    let finish_time = phase_all(&mut api, &|i| if i % 2 == 0 { "abort" } else { "restored" });
    let total = 2 + PARKED;
    for c in &clients {
        c.wait_answers(total, Duration::from_secs(20));
    }
    // Live requests afterwards: local for the aborted, forwarded for the restored.
    for c in &clients {
        c.send(3);
    }
    let total = total + 3;
    let mut answered = 0;
    for (i, c) in clients.iter().enumerate() {
        let port = BASE + i as u16;
        let answers = c.wait_answers(total, Duration::from_secs(10));
        let (at_src, at_dst) = check_answers(&answers, total as u64);
        assert!(
            answers.iter().all(|a| a.port == Some(port)),
            "service on port {port} got answers from other ports: {answers:?}"
        );
        if i % 2 == 0 {
            assert_eq!((at_src.len(), at_dst.len()), (total, 0), "port {port}");
        } else {
            assert_eq!((at_src.len(), at_dst.len()), (2, total - 2), "port {port}");
        }
        answered += answers.len();
    }
    let stats = t.src_agent.json(&["stats"]);
    let services = stats["services"].as_array().unwrap();
    assert_eq!(services.len(), N as usize);
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for s in services {
        let id = s["spec"]["id"].as_u64().unwrap();
        assert_eq!(verdict(s, "park"), PARKED as u64, "service {id}");
        assert_eq!(num(s, &["replay", "replayed_frames"]), PARKED as u64);
        assert_eq!(num(s, &["replay", "failed_frames"]), 0);
        assert_eq!(
            verdict(s, "park_failed") + verdict(s, "forward_failed") + verdict(s, "drop"),
            0
        );
        if id % 2 == 0 {
            assert_eq!(s["state"], "aborted");
            assert_eq!(verdict(s, "pass"), total as u64);
        } else {
            assert_eq!(s["state"], "restored");
            assert_eq!(verdict(s, "forward"), (total - 2) as u64);
        }
        *states
            .entry(s["state"].as_str().unwrap().into())
            .or_default() += 1;
    }
    println!(
        "100 services: {} requests, {answered} answered once, in order, each by its own port; \
         {} parked and replayed; states {states:?}; 100 freezes took {:.1} ms, 100 aborts/restores {:.1} ms",
        N as usize * total,
        N as usize * PARKED,
        freeze_time.as_secs_f64() * 1e3,
        finish_time.as_secs_f64() * 1e3
    );
    t.procs.push(src_echo);
    t.procs.push(dst_echo);
}
