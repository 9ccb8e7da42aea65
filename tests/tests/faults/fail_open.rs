//! Fail-open: no agent, a dead agent (its lease), services or state that cannot be recovered.

use std::time::{Duration, Instant};

use migr_testkit::agent_harness::*;
use serde_json::{Value, json};

use crate::helpers::*;

/// No agent was ever started: traffic flows as without migr, and migrctl
/// says the agent is unreachable (exit 3). Then an agent with no services:
/// the datapath is attached, sees every packet, and passes them all.
#[test]
fn without_an_agent_or_without_services_everything_passes() {
    let mut t = Topology::build(false, &[], false);
    let src_echo = start_echo(&t.src, SRC_IP, "src", &t.scratch());
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    client.send(20);
    let answers = client.wait_answers(20, Duration::from_secs(5));
    check_answers(&answers, 20);
    for args in [&["status"][..], &["stats"], &["service", "list"]] {
        let out = t.src_agent.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains("cannot reach migr-agent") && err.contains("agent.sock"),
            "{args:?}: {err}"
        );
    }
    println!(
        "no agent: 20/20 answered; migrctl status: exit 3, {}",
        String::from_utf8_lossy(&t.src_agent.ctl(&["status"]).stderr).trim()
    );

    // The datapath attached, no services. (The client forgets the source's
    // MAC, so that ARP, non-IP, goes through the datapath too.)
    t.src_agent.start(&t.src);
    t.client.ip(&["neigh", "flush", "all"]).unwrap();
    let udp_before = t.src_agent.json(&["stats"])["protocols"]["udp"]
        .as_u64()
        .unwrap();
    client.send(200);
    let answers = client.wait_answers(220, Duration::from_secs(5));
    check_answers(&answers, 220);
    // Other traffic too: TCP to a closed port (refused, i.e. the SYN went in
    // and the RST came back), non-IP (ARP).
    let tcp = t
        .client
        .run(|| {
            std::net::TcpStream::connect_timeout(
                &format!("{SRC_IP}:9").parse().unwrap(),
                Duration::from_secs(2),
            )
        })
        .unwrap();
    assert_eq!(
        tcp.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    let stats = t.src_agent.json(&["stats"]);
    assert_eq!(stats["services"], json!([]));
    assert!(stats["protocols"]["udp"].as_u64().unwrap() >= udp_before + 200);
    assert!(stats["protocols"]["non-ip"].as_u64().unwrap() >= 1);
    assert!(stats["protocols"]["tcp"].as_u64().unwrap() >= 1);
    let status = t.src_agent.ok(&["status"]);
    println!("{status}");

    // An agent killed with a service idle: the datapath stays attached and
    // passes everything; migrctl says the agent is gone.
    t.src_agent
        .add_udp_service(3, "idle", &format!("{SRC_IP}:{PORT}"));
    t.src_agent.kill9();
    assert!(t.src_agent.pin_dir.join("link-v-sc").exists());
    client.send(20);
    let answers = client.wait_answers(240, Duration::from_secs(5));
    check_answers(&answers, 240);
    assert_eq!(t.src_agent.ctl(&["status"]).status.code(), Some(3));
    t.procs.push(src_echo);
}

/// A service whose forward interface vanished while no agent ran cannot be
/// installed again. It must not keep the agent, or the other services,
/// down: it is switched off (its frames pass), reported as faulted, and
/// refuses phase commands; the other service works.
#[test]
fn a_service_that_cannot_be_reinstalled_fails_open_and_the_rest_carry_on() {
    let mut t = Topology::new(false, &[]);
    t.src
        .exec(&[
            "ip", "link", "add", "v-gone", "type", "veth", "peer", "name", "v-gone-p",
        ])
        .unwrap();
    t.src.exec(&["ip", "link", "set", "v-gone", "up"]).unwrap();
    t.src
        .exec(&["ip", "link", "set", "v-gone-p", "up"])
        .unwrap();
    let add = |id: &str, name: &str, port: u16, forward: bool| {
        let addr = format!("{SRC_IP}:{port}");
        let to = format!("{DST_IP}:{port}");
        let mut args = vec!["service", "add", "--id", id, "--name", name, "--udp", &addr];
        if forward {
            args.extend([
                "--forward-to",
                &to,
                "--forward-iface",
                "v-gone",
                "--next-hop-mac",
                "02:00:00:00:00:09",
            ]);
        }
        t.src_agent.ok(&args);
    };
    add("1", "gone", 7300, true);
    add("2", "kept", 7301, false);
    t.src_agent.kill9();
    t.src.exec(&["ip", "link", "del", "v-gone"]).unwrap();
    t.src_agent.start(&t.src);

    let gone = t.src_agent.service("gone");
    let fault = gone["fault"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault: {gone}"));
    assert!(fault.contains("re-installing"), "{fault}");
    assert_eq!(gone["datapath"], "pass", "{gone}");
    let refused = t.src_agent.ctl(&["phase", "gone", "prepare"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("faulted"));
    let kept = t.src_agent.service("kept");
    assert!(kept.get("fault").is_none(), "{kept}");
    t.src_agent.ok(&["phase", "kept", "prepare"]);
    t.src_agent.ok(&["phase", "kept", "freeze"]);
    assert_eq!(t.src_agent.service("kept")["datapath"], "park");
    println!("faulted service: {fault}");
}

/// A dead agent must not hold up services that run again. Service b has
/// aborted and settles (held behind any parked record), service a is frozen
/// (parking); the agent is SIGKILLed, and frames to a fill the ring that no
/// one drains. Within the agent's lease (500 ms here) frames keep waiting
/// for it; after it, the datapath fails open: b's and a's fresh frames pass,
/// counted as `lease_expired`. A restarted agent renews the lease and
/// replays what was parked in the meantime, so nothing is lost.
#[test]
fn a_dead_agents_lease_runs_out_and_its_services_fail_open() {
    let mut t = Topology::new(false, &["--lease-ms", "500", "--settle-ms", "600000"]);
    let (echo, a_addr, b_addr) = two_udp_services(&t, 7400, "ab");
    let (a, b) = (
        UdpClient::new(&t.client, &a_addr),
        UdpClient::new(&t.client, &b_addr),
    );
    t.src_agent.phase("b", "freeze");
    t.src_agent.phase("b", "abort");
    wait_for(Duration::from_secs(5), "b to settle", || {
        t.src_agent.service("b")["replay_stage"] == "settling"
    });
    t.src_agent.phase("a", "freeze");
    t.src_agent.kill9();
    let killed = Instant::now();
    a.send(5);
    b.send(5);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        killed.elapsed() < Duration::from_millis(450),
        "the checks within the lease came too late to mean anything"
    );
    assert_eq!(
        (a.answered(), b.answered()),
        (0, 0),
        "within the lease frames wait for the agent"
    );
    std::thread::sleep(
        Duration::from_millis(500).saturating_sub(killed.elapsed()) + Duration::from_millis(100),
    );
    b.send(5);
    a.send(5);
    let b_answers = b.wait_answers(5, Duration::from_secs(5));
    let a_answers = a.wait_answers(5, Duration::from_secs(5));
    assert_eq!(
        b_answers.len(),
        5,
        "b's fresh frames pass once the lease ran out; its 5 held ones wait in the ring: {b_answers:?}"
    );
    assert_eq!(a_answers.len(), 5, "a fails open too: {a_answers:?}");

    t.src_agent.start(&t.src);
    assert_eq!(reason(&t.src_agent, "lease_expired"), 10);
    // b is not parking: the restarted agent replays its held frames at once;
    // a's parked frames come back when it is restored (aborted here).
    let b_answers = b.wait_answers(10, Duration::from_secs(5));
    assert_eq!(b_answers.len(), 10, "{b_answers:?}");
    t.src_agent.phase("a", "abort");
    let a_answers = a.wait_answers(10, Duration::from_secs(5));
    assert_eq!(a_answers.len(), 10, "{a_answers:?}");
    for (client, answers) in [("a", &a_answers), ("b", &b_answers)] {
        let mut seqs: Vec<u64> = answers.iter().map(|x| x.seq).collect();
        seqs.sort();
        assert_eq!(
            seqs,
            (0..10).collect::<Vec<_>>(),
            "{client}: each answered once"
        );
    }
    println!(
        "dead agent, lease 500 ms: 5 + 5 frames waited within the lease, 10 fresh frames \
         passed after it (lease_expired 10), all 20 answered once after the restart"
    );
    t.procs.push(echo);
}

/// Saved state that does not read back must not keep the agent down. A
/// saved service that does not parse is left out, reported, and its frames
/// pass (its datapath entry is switched off); the others carry on. A state
/// that does not read at all (both slots damaged) is set aside, reported,
/// and the agent starts without services, failing open.
#[test]
fn unreadable_saved_state_is_reported_and_fails_open_service_by_service() {
    let mut t = Topology::new(false, &[]);
    let (echo, a_addr, b_addr) = two_udp_services(&t, 7600, "state");
    for name in ["a", "b"] {
        t.src_agent.phase(name, "freeze");
    }
    t.src_agent.kill9();
    // Service a's saved spec is damaged; the rest of the state is whole.
    let mut file = migr_user::statefile::StateFile::new(&t.src_agent.state_dir);
    let mut state: Value = serde_json::from_slice(&file.load().unwrap().unwrap()).unwrap();
    let saved = state["services"].as_array_mut().unwrap();
    let a = saved.iter_mut().find(|s| s["spec"]["name"] == "a").unwrap();
    a["spec"]["rules"] = json!("not a list of rules");
    file.save(&serde_json::to_vec(&state).unwrap()).unwrap();
    t.src_agent.start(&t.src);
    let stats = t.src_agent.json(&["stats"]);
    let problems = stats["agent"]["recovery_problems"].to_string();
    assert!(
        problems.contains("id 1") && problems.contains("rules"),
        "{problems}"
    );
    let listed = t.src_agent.json(&["service", "list"]).to_string();
    assert!(
        !listed.contains("\"a\"") && listed.contains("\"b\""),
        "{listed}"
    );
    assert_eq!(t.src_agent.service("b")["state"], "frozen");
    let a_client = UdpClient::new(&t.client, &a_addr);
    a_client.send(5);
    assert_eq!(
        a_client.wait_answers(5, Duration::from_secs(5)).len(),
        5,
        "a's frames pass: its entry was switched off"
    );
    let status = t.src_agent.ok(&["status"]);
    assert!(status.contains("warning: at its start"), "{status}");

    // Both slots damaged: set aside, the agent starts without services.
    t.src_agent.kill9();
    for slot in migr_user::statefile::slot_paths(&t.src_agent.state_dir) {
        std::fs::write(&slot, b"migrst01 damaged beyond repair").unwrap();
    }
    t.src_agent.start(&t.src);
    let stats = t.src_agent.json(&["stats"]);
    let problems = stats["agent"]["recovery_problems"].to_string();
    assert!(problems.contains("set aside"), "{problems}");
    assert!(t.src_agent.state_dir.join("state.0.unreadable").exists());
    assert_eq!(t.src_agent.json(&["service", "list"]), json!([]));
    let b_client = UdpClient::new(&t.client, &b_addr);
    b_client.send(5);
    assert_eq!(
        b_client.wait_answers(5, Duration::from_secs(5)).len(),
        5,
        "b's frames pass: no stale PARK entry is left"
    );
    println!("unreadable state: {problems}");
    t.procs.push(echo);
}
