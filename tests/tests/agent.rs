//! migr-agent and migrctl end to end, in network namespaces.
//!
//! Topology (each test builds its own; `dst` only where needed):
//!
//! ```text
//!   cli --v-cs / v-sc-- src --v-sd / v-ds-- dst
//!   10.41.1.1      10.41.1.2   10.41.2.1      10.41.2.2
//!                  (agent on v-sc)            (agent on v-ds)
//! ```
//!
//! The service is a UDP request/response ("echo") process: a request
//! `seq=N` is answered with `seq=N inst=NAME rx=K`, K counting the requests
//! that instance received. Sorting the answers by (instance, K) gives the
//! order in which the service saw the requests, whatever the way back did.
//!
//! Every test drives the agents only through the `migrctl` binary (and raw
//! socket writes in the bad-request test), as an operator or CRIU would.
//! The harness (agents, topology, the echo process, the client) is
//! `migr_testkit::agent_harness`, shared with `faults/`.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    process::Command,
    time::{Duration, Instant},
};

use migr_testkit::agent_harness::*;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Tests

/// The full cycle, driven only through migrctl. The "move" is a stand-in
/// for CRIU: at freeze the source instance is stopped with SIGSTOP, and an
/// instance with the same logic is started at the destination (new address)
/// before restored. The client sends a request every 2 ms throughout.
#[test]
fn full_cycle_through_migrctl_answers_every_request_once_and_in_order() {
    let mut t = Topology::new(true, &["--metrics", "127.0.0.1:9465"]);
    let scratch = t.scratch();
    let src_echo = start_echo(&t.src, SRC_IP, "src", &scratch);
    let dst_port = PORT.to_string();
    // The next hop's MAC comes from the source's neighbour table.
    t.src_agent.ok(&[
        "service",
        "add",
        "--id",
        "1",
        "--name",
        "echo",
        "--udp",
        &format!("{SRC_IP}:{PORT}"),
        "--forward-to",
        &format!("{DST_IP}:{dst_port}"),
        "--forward-iface",
        "v-sd",
    ]);
    t.dst_agent()
        .add_udp_service(1, "echo", &format!("{DST_IP}:{PORT}"));
    let listed = t.src_agent.ok(&["service", "list"]);
    assert!(
        listed.contains("echo") && listed.contains("idle"),
        "{listed}"
    );

    let mut client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    client.start_stream(Duration::from_millis(2));
    wait_for(
        Duration::from_secs(5),
        "answers before the migration",
        || client.answered() >= 20,
    );

    let mut latencies = Vec::new();
    latencies.push(t.src_agent.phase("echo", "prepare"));
    latencies.push(t.dst_agent().phase("echo", "prepare"));
    let frozen_at = Instant::now();
    latencies.push(t.src_agent.phase("echo", "freeze"));
    // Let the source answer what it had queued before the freeze, then stop it.
    std::thread::sleep(Duration::from_millis(100));
    src_echo.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    latencies.push(t.dst_agent().phase("echo", "restoring"));
    let dst_echo = start_echo(t.dst(), DST_IP, "dst", &scratch);
    latencies.push(t.dst_agent().phase("echo", "restored"));
    latencies.push(t.src_agent.phase("echo", "restored"));
    let downtime = frozen_at.elapsed();
    // Keep sending while the backlog is replayed and afterwards (forwarded).
    std::thread::sleep(Duration::from_millis(400));
    client.stop_stream();
    let sent = client.sent();
    let answers = client.wait_answers(sent as usize, Duration::from_secs(10));
    latencies.push(
        t.src_agent
            .phase_with("echo", "done", &["--drain-ms", "200"]),
    );

    let (at_src, at_dst) = check_answers(&answers, sent);
    assert!(!at_src.is_empty() && !at_dst.is_empty());
    let last_src = at_src.iter().map(|a| a.seq).max().unwrap();
    let first_dst = at_dst.iter().map(|a| a.seq).min().unwrap();
    assert!(
        last_src < first_dst,
        "every request the destination answered was sent after the last one the source answered"
    );

    let src = t.src_agent.service("echo");
    let dst = t.dst_agent().service("echo");
    println!(
        "source: {}",
        serde_json::to_string(&src["verdicts"]).unwrap()
    );
    println!(
        "destination: {}",
        serde_json::to_string(&dst["verdicts"]).unwrap()
    );
    let reasons = t.src_agent.json(&["stats"])["reasons"].clone();
    println!(
        "source datapath: {} frames replayed, {} fresh frames held behind unconsumed parked records",
        reasons["replayed"], reasons["held_behind_backlog"]
    );
    assert_eq!(
        reasons["replayed"].as_u64(),
        Some(num(&src, &["replay", "replayed_frames"]))
    );
    // The counters agree with what the client saw.
    assert_eq!(
        verdict(&src, "pass"),
        at_src.len() as u64,
        "source: pass = answered by the source"
    );
    assert_eq!(
        verdict(&src, "forward"),
        at_dst.len() as u64,
        "source: forward = answered at the destination"
    );
    assert_eq!(
        verdict(&dst, "pass"),
        at_dst.len() as u64,
        "destination: pass = answered there"
    );
    let parked = verdict(&src, "park");
    assert!(parked > 50, "the freeze parked requests ({parked})");
    assert_eq!(num(&src, &["parked", "stored_frames"]), parked);
    assert_eq!(
        num(&src, &["replay", "replayed_frames"]),
        parked,
        "every parked frame replayed once"
    );
    assert_eq!(
        verdict(&dst, "park"),
        num(&dst, &["replay", "replayed_frames"])
    );
    for svc in [&src, &dst] {
        assert_eq!(num(svc, &["parked", "overflow_frames"]), 0);
        assert_eq!(num(svc, &["replay", "failed_frames"]), 0);
        assert_eq!(num(svc, &["parked", "pending_frames"]), 0);
        assert_eq!(
            verdict(svc, "park_failed") + verdict(svc, "forward_failed"),
            0
        );
    }
    println!(
        "client: {sent} requests, {} answered by the source, {} by the destination; {parked} parked and replayed in order; freeze to restored {:.0} ms",
        at_src.len(),
        at_dst.len(),
        downtime.as_secs_f64() * 1e3
    );
    println!(
        "replay at the source: {} frames in {:.2} ms = {:.0} frames/s",
        num(&src, &["replay", "last_frames"]),
        num(&src, &["replay", "last_duration_us"]) as f64 / 1e3,
        src["replay"]["last_rate_fps"].as_f64().unwrap_or(0.0)
    );
    latencies.sort();
    println!(
        "phase-to-datapath latency over {} phase commands: min {} us, median {} us, max {} us",
        latencies.len(),
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // The source drains, then stops forwarding.
    wait_for(Duration::from_secs(10), "the drain time to pass", || {
        t.src_agent.service("echo")["state"] == "done"
    });
    assert_eq!(t.src_agent.service("echo")["datapath"], "pass");

    // The timeline is in the log (with timestamps) and in `service show`.
    let log = t.src_agent.log_text();
    for phase in ["frozen", "restored", "draining", "done"] {
        assert!(
            log.lines().any(|l| l.contains("phase transition")
                && l.contains(&format!("to=\"{phase}\""))
                && l.starts_with("20")),
            "the log records the transition to {phase}:\n{log}"
        );
    }
    let show = t.src_agent.ok(&["service", "show", "echo"]);
    assert!(
        show.contains("timeline") && show.contains("frozen"),
        "{show}"
    );
    println!("{show}");
    let status = t.src_agent.ok(&["status"]);
    assert!(
        status.contains("NAME") && status.contains("echo"),
        "{status}"
    );
    println!("{status}");

    // Prometheus metrics on --metrics.
    let (status, metrics) = http_get(&t.src, "127.0.0.1:9465", "/metrics").expect("fetch /metrics");
    assert!(status.starts_with("HTTP/1.0 200"), "{status}\n{metrics}");
    for needle in [
        format!(
            "migr_service_packets_total{{service=\"echo\",id=\"1\",verdict=\"park\"}} {parked}"
        ),
        format!("migr_replayed_frames_total{{service=\"echo\",id=\"1\"}} {parked}"),
        "migr_phase_timestamp_seconds{service=\"echo\",id=\"1\",phase=\"frozen\"}".to_string(),
        "migr_replay_last_rate_frames_per_second{service=\"echo\",id=\"1\"}".to_string(),
        // The migration ended here once its backlog was replayed.
        "migr_migration_downtime_seconds_count{role=\"source\"} 1".to_string(),
        "migr_migration_replayed_frames_count{role=\"source\"} 1".to_string(),
        "migr_migration_client_gap_seconds_count{role=\"source\"} 1".to_string(),
    ] {
        assert!(
            metrics.contains(&needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    // Its record: what the backlog replay handled (a frame held behind it
    // during the settling that followed is not part of it).
    let last = &t.src_agent.service("echo")["last_migration"];
    let replayed = num(last, &["replayed_frames"]);
    assert!(replayed > 50 && replayed <= parked, "{last}");
    assert!(num(last, &["downtime_ms"]) > 0, "{last}");
    assert!(num(last, &["client_gap_ms"]) > 0, "{last}");
    println!("the migration's record at the source: {last}");
    t.procs.push(src_echo);
    t.procs.push(dst_echo);
}

/// Abort, driven through the CRIU hook: pre-dump freezes, network-unlock
/// (what CRIU runs when the dumped tasks go on running here) aborts. The
/// parked requests reach the source instance, in order. The replay here is
/// unpaced (`--replay-rate 0`, and a socket buffer that takes the burst), to
/// measure the raw replay rate.
#[test]
fn abort_replays_parked_requests_to_the_source_in_order() {
    const PARKED: usize = 1000;
    let mut t = Topology::new(false, &["--replay-rate", "0"]);
    let (src_echo, client) = web_service_at_source(&t, "8388608");
    let hook = |action: &str| criu_hook_web(&t, action, None);
    freeze_and_park(&t, &hook, &src_echo, &client, PARKED);
    assert_eq!(
        hook("post-dump"),
        "",
        "post-dump does not concern the agent"
    );
    // CRIU unlocks the network and thaws the tasks together.
    src_echo.signal(libc::SIGCONT);
    let said = hook("network-unlock");
    assert!(said.contains("frozen -> aborted"), "{said}");
    let total = PARKED + 5;
    let answers = client.wait_answers(total, Duration::from_secs(10));
    let (at_src, _) = check_answers(&answers, total as u64);
    assert_eq!(at_src.len(), total);
    let web = t.src_agent.service("web");
    assert_eq!(verdict(&web, "park"), PARKED as u64);
    assert_eq!(num(&web, &["replay", "replayed_frames"]), PARKED as u64);
    assert_eq!(
        verdict(&web, "pass"),
        total as u64,
        "5 before the freeze, the rest replayed"
    );
    assert_eq!(web["state"], "aborted");
    println!(
        "unpaced local replay: {} frames in {:.2} ms = {:.0} frames/s",
        num(&web, &["replay", "last_frames"]),
        num(&web, &["replay", "last_duration_us"]) as f64 / 1e3,
        web["replay"]["last_rate_fps"].as_f64().unwrap_or(0.0)
    );
    // After the abort the service is simply running again.
    client.send(5);
    let answers = client.wait_answers(total + 5, Duration::from_secs(5));
    check_answers(&answers, total as u64 + 5);
    t.procs.push(src_echo);
}

/// A replay into a service that does not read: with the PID CRIU names
/// (`CRTOOLS_INIT_PID`), the agent fills the service's socket up to its
/// limit and waits instead of overflowing it (a stopped process with
/// Linux's default 208 KiB receive buffer takes about 45 replayed frames).
/// Nothing is dropped; once the process runs, every request is answered,
/// in order.
#[test]
fn a_replay_waits_for_a_full_socket_and_loses_nothing() {
    const PARKED: usize = 300;
    let mut t = Topology::new(false, &["--replay-rate", "0"]);
    // 106,496 is doubled by the kernel: the default 208 KiB buffer.
    let (src_echo, client) = web_service_at_source(&t, "106496");
    let pid = src_echo.pid();
    let hook = |action: &str| criu_hook_web(&t, action, Some(pid));
    freeze_and_park(&t, &hook, &src_echo, &client, PARKED);
    // The abort's replay starts while the service is still stopped.
    let said = hook("network-unlock");
    assert!(said.contains("frozen -> aborted"), "{said}");
    wait_for(Duration::from_secs(5), "the replay to wait", || {
        num(&t.src_agent.service("web"), &["replay", "socket_waits"]) > 0
    });
    std::thread::sleep(Duration::from_millis(200));
    let web = t.src_agent.service("web");
    let in_socket = num(&web, &["replay", "replayed_frames"]);
    let udp = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap();
    let queue = migr_user::socket_room::parse_proc_net_udp(&udp, &[PORT]);
    println!(
        "stopped service: {in_socket} frames replayed into its socket, {} bytes queued ({} per frame)",
        queue.fullest_rx_queue,
        queue.fullest_rx_queue / in_socket.max(1)
    );
    assert!(
        in_socket > 0 && in_socket < PARKED as u64,
        "the replay stopped part way: {in_socket} of {PARKED}"
    );
    assert!(
        queue.fullest_rx_queue <= migr_user::socket_room::REPLAY_FILL_LIMIT,
        "the socket was filled past the limit: {queue:?}"
    );
    assert_eq!(queue.drops, 0, "the socket dropped nothing: {queue:?}");
    src_echo.signal(libc::SIGCONT);
    let total = PARKED + 5;
    let answers = client.wait_answers(total, Duration::from_secs(10));
    let (at_src, _) = check_answers(&answers, total as u64);
    assert_eq!(at_src.len(), total, "every request answered once");
    let web = t.src_agent.service("web");
    assert_eq!(num(&web, &["replay", "replayed_frames"]), PARKED as u64);
    assert_eq!(num(&web, &["replay", "socket_drops"]), 0);
    let snmp = t.src.exec(&["cat", "/proc/net/snmp"]).unwrap();
    assert_eq!(
        migr_testbed::stats::udp_rcvbuf_errors(&snmp),
        Some(0),
        "no UDP receive-buffer errors in the service's namespace:\n{snmp}"
    );
    t.procs.push(src_echo);
}

/// The agent is SIGKILLed while the service is frozen, more requests arrive
/// while it is dead, and it is started again: every parked request is
/// replayed, once, in order.
#[test]
fn sigkill_during_a_freeze_loses_no_parked_frame() {
    let mut t = Topology::new(false, &[]);
    let src_echo = start_echo(&t.src, SRC_IP, "src", &t.scratch());
    t.src_agent
        .add_udp_service(3, "kv", &format!("{SRC_IP}:{PORT}"));
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    t.src_agent.phase("kv", "freeze");
    src_echo.signal(libc::SIGSTOP);
    client.send(40);
    wait_for(Duration::from_secs(5), "40 stored frames", || {
        num(&t.src_agent.service("kv"), &["parked", "stored_frames"]) == 40
    });
    t.src_agent.kill9();
    // The XDP program stays attached (pinned link) and keeps parking into the pinned ring.
    client.send(40);
    std::thread::sleep(Duration::from_millis(100));
    let killed_at = Instant::now();
    let src = &t.src;
    t.src_agent.start(src);
    println!(
        "agent restarted in {:.0} ms",
        killed_at.elapsed().as_secs_f64() * 1e3
    );
    let log = t.src_agent.log_text();
    assert!(log.contains("re-used the pinned XDP link"), "{log}");
    let kv = t.src_agent.service("kv");
    assert_eq!(kv["state"], "frozen", "the phase survives the restart");
    wait_for(Duration::from_secs(5), "80 pending frames", || {
        num(&t.src_agent.service("kv"), &["parked", "pending_frames"]) == 80
    });
    src_echo.signal(libc::SIGCONT);
    t.src_agent.phase("kv", "abort");
    let answers = client.wait_answers(80, Duration::from_secs(10));
    let (at_src, _) = check_answers(&answers, 80);
    assert_eq!(at_src.len(), 80);
    let kv = t.src_agent.service("kv");
    assert_eq!(verdict(&kv, "park"), 80);
    assert_eq!(num(&kv, &["replay", "replayed_frames"]), 80);
    assert_eq!(num(&kv, &["replay", "uncertain_frames"]), 0);
    t.procs.push(src_echo);
}

/// More frames than the store takes: the newest are dropped and counted
/// exactly, the oldest are replayed, and the service recovers.
#[test]
fn overflow_is_counted_exactly_and_the_service_recovers() {
    let mut t = Topology::new(false, &[]);
    let src_echo = start_echo(&t.src, SRC_IP, "src", &t.scratch());
    t.src_agent.ok(&[
        "service",
        "add",
        "--id",
        "9",
        "--name",
        "small",
        "--udp",
        &format!("{SRC_IP}:{PORT}"),
        "--park-limit-frames",
        "10",
    ]);
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    t.src_agent.phase("small", "freeze");
    src_echo.signal(libc::SIGSTOP);
    client.send(25);
    wait_for(Duration::from_secs(5), "25 parked frames handled", || {
        let s = t.src_agent.service("small");
        num(&s, &["parked", "stored_frames"]) + num(&s, &["parked", "overflow_frames"]) == 25
    });
    let s = t.src_agent.service("small");
    assert_eq!(num(&s, &["parked", "overflow_frames"]), 15);
    assert_eq!(num(&s, &["parked", "pending_frames"]), 10);
    assert_eq!(verdict(&s, "park"), 25, "the datapath parked all 25");
    src_echo.signal(libc::SIGCONT);
    t.src_agent.phase("small", "abort");
    let answers = client.wait_answers(10, Duration::from_secs(5));
    let seqs: Vec<u64> = answers.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "the oldest 10, in order");
    // Recovered: new requests are answered.
    client.send(5);
    let answers = client.wait_answers(15, Duration::from_secs(5));
    let late: Vec<u64> = answers[10..].iter().map(|a| a.seq).collect();
    assert_eq!(late, (25..30).collect::<Vec<_>>());
    let status = t.src_agent.ok(&["status"]);
    println!("{status}");
    t.procs.push(src_echo);
}

/// Malformed requests and bad arguments get clear errors and change nothing.
#[test]
fn bad_requests_and_arguments_are_refused_without_a_state_change() {
    let t = Topology::new(false, &[]);
    let a = &t.src_agent;
    a.add_udp_service(2, "dns", &format!("{SRC_IP}:53"));
    let before = a.json(&["service", "list"]);

    // Raw protocol errors.
    let raw = |line: &str| -> Value {
        let mut s = UnixStream::connect(&a.socket).unwrap();
        // The agent may refuse (and close) before it has read all of an
        // oversized request: a write then fails with EPIPE, and the answer
        // is still there to read.
        match s.write_all(format!("{line}\n").as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.ends_with('\n') {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the agent closed without answering {line}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        serde_json::from_str(&text).unwrap()
    };
    for (line, code, needle) in [
        ("this is not json", "bad_request", "not valid JSON"),
        (
            r#"{"v":1,"op":"stats","x":1}"#,
            "bad_request",
            "unknown field `x`",
        ),
        (
            r#"{"v":9,"op":"stats"}"#,
            "unsupported_version",
            "version 9",
        ),
        (
            r#"{"v":1,"op":"reboot"}"#,
            "unknown_op",
            "unknown operation",
        ),
        (
            r#"{"v":1,"op":"phase","args":{"service":"dns","phase":"melt"}}"#,
            "bad_request",
            "unknown variant",
        ),
        (
            r#"{"v":1,"op":"phase","args":{"service":"nope","phase":"freeze"}}"#,
            "not_found",
            "no service nope",
        ),
        (
            r#"{"v":1,"op":"phase","args":{"service":"dns","phase":"done"}}"#,
            "invalid_transition",
            "no migration",
        ),
        (
            r#"{"v":1,"op":"phase","args":{"service":"dns","phase":"restored"}}"#,
            "invalid_transition",
            "ambiguous",
        ),
        (
            r#"{"v":1,"op":"service.add","args":{"id":2,"name":"other"}}"#,
            "conflict",
            "taken",
        ),
        (
            r#"{"v":1,"op":"service.add","args":{"id":5,"name":"dup","rules":[{"proto":"udp","addr":"10.41.1.2:53"}]}}"#,
            "conflict",
            "belongs to service",
        ),
        (
            r#"{"v":1,"op":"service.add","args":{"id":5,"name":"x","forward":{"iface":"nope0","addr":"10.0.0.1:1","next_hop_mac":"02:00:00:00:00:01"}}}"#,
            "bad_request",
            "no interface",
        ),
        (
            r#"{"v":1,"id":"abc","op":"service.add","args":{"id":5000,"name":"x"}}"#,
            "bad_request",
            "out of range",
        ),
    ] {
        let v = raw(line);
        assert_eq!(v["ok"], false, "{line} -> {v}");
        assert_eq!(v["error"]["code"], code, "{line} -> {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{line} -> {msg:?} lacks {needle:?}");
    }
    assert_eq!(
        raw(r#"{"v":1,"id":"abc","op":"bad"}"#)["id"],
        "abc",
        "the id is echoed"
    );
    let huge = format!(
        r#"{{"v":1,"op":"stats","args":{{"x":"{}"}}}}"#,
        "a".repeat(70_000)
    );
    assert_eq!(raw(&huge)["error"]["code"], "bad_request");

    // migrctl argument errors: exit 2 and a message, before reaching the agent.
    for (args, needle) in [
        (vec!["phase", "dns", "melt"], "invalid value 'melt'"),
        (vec!["phase", "dns"], "required"),
        (
            vec![
                "service", "add", "--id", "4", "--name", "x", "--udp", "nonsense",
            ],
            "invalid value",
        ),
        (
            vec![
                "service",
                "add",
                "--id",
                "4",
                "--name",
                "x",
                "--server-id",
                "1",
            ],
            "need a --quic",
        ),
        (
            vec!["service", "add", "--id", "0", "--name", "x"],
            "out of range",
        ),
        (vec!["service", "frobnicate"], "unrecognized subcommand"),
    ] {
        let out = a.ctl(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    }
    // Refusals by the agent: exit 1.
    for (args, needle) in [
        (vec!["phase", "dns", "done"], "no migration in progress"),
        (vec!["phase", "ghost", "freeze"], "no service ghost"),
        (
            vec!["service", "add", "--id", "2", "--name", "again"],
            "taken",
        ),
    ] {
        let out = a.ctl(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    }
    // The CRIU hook: unreachable agent, lenient by default, strict on request.
    let hook = |extra: &[&str], action: &str| {
        Command::new(&bins().ctl)
            .args([
                "--socket",
                "/nonexistent/agent.sock",
                "criu-hook",
                "--service",
                "dns",
            ])
            .args(extra)
            .env("CRTOOLS_SCRIPT_ACTION", action)
            .output()
            .unwrap()
    };
    let out = hook(&[], "pre-dump");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
    assert_eq!(hook(&["--strict"], "pre-dump").status.code(), Some(1));
    let quiet = hook(&["--strict"], "post-dump");
    assert_eq!(
        (quiet.status.code(), quiet.stderr.len()),
        (Some(0), 0),
        "ignored actions do not contact the agent"
    );

    // Nothing changed.
    assert_eq!(a.json(&["service", "list"]), before);
    assert_eq!(a.service("dns")["state"], "idle");
    assert_eq!(
        a.service("dns")["timeline"].as_array().map(Vec::len),
        Some(1)
    );
    let help = a.ok(&["--help"]);
    for cmd in ["service", "phase", "stats", "status", "criu-hook"] {
        assert!(help.contains(cmd), "--help lists {cmd}");
    }
}

/// SIGTERM detaches and keeps the state; `--keep-attached` leaves the
/// datapath attached; a restarted agent carries on either way.
#[test]
fn sigterm_detaches_or_keeps_the_datapath_and_a_restart_keeps_the_state() {
    let mut t = Topology::new(false, &[]);
    let a = &t.src_agent;
    a.add_udp_service(4, "ntp", &format!("{SRC_IP}:123"));
    a.phase("ntp", "prepare");
    let link = t.src_agent.pin_dir.join("link-v-sc");
    assert!(link.exists(), "the XDP link is pinned while the agent runs");
    let stop = |agent: &mut Agent| {
        let mut p = agent.proc.take().expect("running");
        p.signal(libc::SIGTERM);
        let status = p.child.wait().unwrap();
        assert!(status.success(), "clean exit on SIGTERM: {status}");
        assert!(!agent.socket.exists(), "the socket is removed");
    };
    stop(&mut t.src_agent);
    assert!(!link.exists(), "SIGTERM detaches");
    assert!(
        migr_user::pin_layout::maps_dir(&t.src_agent.pin_dir)
            .join("SERVICES")
            .exists(),
        "the maps stay pinned"
    );
    let src = &t.src;
    t.src_agent.start(src);
    assert_eq!(
        t.src_agent.service("ntp")["state"],
        "prepared",
        "no state lost"
    );
    // In-place restart: the datapath stays attached in between.
    stop(&mut t.src_agent);
    t.src_agent.args.push("--keep-attached".into());
    t.src_agent.start(src);
    stop(&mut t.src_agent);
    assert!(link.exists(), "--keep-attached leaves the link pinned");
    t.src_agent.start(src);
    assert!(
        t.src_agent
            .log_text()
            .contains("re-used the pinned XDP link")
    );
    assert_eq!(t.src_agent.service("ntp")["state"], "prepared");
    // Pins without state (the state directory was wiped): the datapath entry
    // nobody can serve any more is switched off, failing open.
    stop(&mut t.src_agent);
    for f in migr_user::statefile::all_paths(&t.src_agent.state_dir) {
        let _ = std::fs::remove_file(f);
    }
    assert!(
        migr_user::statefile::all_paths(&t.src_agent.state_dir)
            .iter()
            .all(|f| !f.exists())
    );
    t.src_agent.start(src);
    assert!(
        t.src_agent
            .log_text()
            .contains("has a service this agent has no state for"),
        "{}",
        t.src_agent.log_text()
    );
    assert_eq!(t.src_agent.json(&["service", "list"]), Value::Array(vec![]));
}

/// The source's UDP service `web` in an echo process whose sockets have a
/// `rcvbuf`-byte receive buffer (the kernel doubles it), registered with
/// the source agent and answering; its client.
fn web_service_at_source(t: &Topology, rcvbuf: &str) -> (Proc, UdpClient) {
    let echo = start_echo_with(
        &t.src,
        SRC_IP,
        "src",
        &t.scratch(),
        &[("MIGR_ECHO_RCVBUF", rcvbuf)],
    );
    t.src_agent
        .add_udp_service(7, "web", &format!("{SRC_IP}:{PORT}"));
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    client.send(5);
    client.wait_answers(5, Duration::from_secs(5));
    (echo, client)
}

/// `migrctl criu-hook --service web` against the source agent, as CRIU
/// runs it for `action` (with `CRTOOLS_INIT_PID` when given); what it said.
fn criu_hook_web(t: &Topology, action: &str, init_pid: Option<i32>) -> String {
    let mut cmd = Command::new(&bins().ctl);
    cmd.args([
        "--socket",
        t.src_agent.socket.to_str().unwrap(),
        "criu-hook",
        "--service",
        "web",
    ])
    .env("CRTOOLS_SCRIPT_ACTION", action);
    if let Some(pid) = init_pid {
        cmd.env("CRTOOLS_INIT_PID", pid.to_string());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "criu-hook {action}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// CRIU's pre-dump through `hook` (the source freezes), the echo process
/// stopped, then `parked` requests sent and stored by the agent.
fn freeze_and_park(
    t: &Topology,
    hook: &dyn Fn(&str) -> String,
    echo: &Proc,
    client: &UdpClient,
    parked: usize,
) {
    let said = hook("pre-dump");
    assert!(said.contains("idle -> frozen"), "{said}");
    echo.signal(libc::SIGSTOP);
    for _ in 0..parked / 50 {
        client.send(50);
        // Do not outrun the veth's XDP ring.
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_for(
        Duration::from_secs(5),
        "the parked frames to be stored",
        || num(&t.src_agent.service("web"), &["parked", "stored_frames"]) == parked as u64,
    );
}
