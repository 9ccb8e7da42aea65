//! Control-plane security: socket permissions and hostile requests.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    process::Command,
    time::{Duration, Instant},
};

use migr_testkit::agent_harness::*;
use migr_user::servers::MAX_CONTROL_CONNECTIONS;
use serde_json::{Value, json};

use crate::helpers::*;

/// The socket is root-only by default: an unprivileged user cannot connect.
/// With `--socket-group` the group's members can, others still cannot. The
/// socket sits in the agent's state directory, as with the default paths
/// (/run/migr/agent.sock), so the directory's mode counts too; the state
/// files beside it stay unreadable to the group.
#[test]
fn the_control_socket_refuses_non_root_users_unless_in_the_socket_group() {
    const NOBODY: u32 = 65534;
    const GROUP: u32 = 43210;
    let mut t = Topology::build(false, &[], false);
    let socket = t.src_agent.socket.clone();
    assert_eq!(socket.parent(), Some(t.src_agent.state_dir.as_path()));
    // migrctl where the unprivileged users may run it.
    let dir = TempDir::new("sock", 0o755);
    let ctl = dir.0.join("migrctl");
    std::fs::copy(&bins().ctl, &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = |uid: u32, gid: u32| {
        Command::new(&ctl)
            .args(["--socket", socket.to_str().unwrap(), "service", "list"])
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    use std::os::unix::{fs::MetadataExt as _, process::CommandExt as _};

    t.src_agent.start(&t.src);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
    let state_dir = std::fs::metadata(&t.src_agent.state_dir).unwrap();
    assert_eq!(state_dir.mode() & 0o777, 0o700);
    let out = as_user(NOBODY, NOBODY);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    let out = as_user(0, 0);
    assert!(out.status.success());
    println!(
        "default socket (0600 root): uid {NOBODY}: exit 3, {}",
        err.trim()
    );

    // Restarted with --socket-group.
    t.src_agent.kill9();
    t.src_agent
        .args
        .extend(["--socket-group".into(), GROUP.to_string()]);
    t.src_agent.start(&t.src);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, GROUP));
    let state_dir = std::fs::metadata(&t.src_agent.state_dir).unwrap();
    assert_eq!(
        (state_dir.mode() & 0o777, state_dir.gid()),
        (0o710, GROUP),
        "the group may pass through the state directory, not list it"
    );
    let member = as_user(NOBODY, GROUP);
    assert!(
        member.status.success(),
        "a member of the socket group: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    let other = as_user(NOBODY, NOBODY);
    assert_eq!(other.status.code(), Some(3));
    // The files the agent wrote are its own: a member reads none of them.
    let mut files = 0;
    for entry in std::fs::read_dir(&t.src_agent.state_dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if !meta.is_file() || path == t.src_agent.log {
            continue; // the socket; the harness's own log
        }
        files += 1;
        assert_eq!(meta.mode() & 0o077, 0, "{} is owner-only", path.display());
        let read = Command::new("cat")
            .arg(&path)
            .uid(NOBODY)
            .gid(GROUP)
            .output()
            .unwrap();
        assert!(!read.status.success(), "a member read {}", path.display());
    }
    assert!(
        files > 0,
        "the agent saved its state in {}",
        t.src_agent.state_dir.display()
    );
    println!(
        "--socket-group {GROUP} (0660): uid {NOBODY} gid {GROUP}: ok; uid {NOBODY} gid {NOBODY}: exit 3"
    );

    // Read-only: members read, only root changes (told apart by SO_PEERCRED).
    t.src_agent.kill9();
    t.src_agent.args.push("--socket-group-read-only".into());
    t.src_agent.start(&t.src);
    let member_ctl = |args: &[&str]| {
        Command::new(&ctl)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .uid(NOBODY)
            .gid(GROUP)
            .output()
            .unwrap()
    };
    assert!(member_ctl(&["status"]).status.success());
    let add = [
        "service",
        "add",
        "--id",
        "9",
        "--name",
        "ro",
        "--udp",
        "10.41.1.2:7999",
    ];
    let refused = member_ctl(&add);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a member changed the agent");
    assert!(err.contains("may only read"), "{err}");
    assert_eq!(t.src_agent.json(&["service", "list"]), json!([]));
    t.src_agent.ok(&add);
    println!(
        "--socket-group-read-only: a member's service add refused: {}",
        err.trim()
    );
}

/// Hostile requests on the socket: each is refused with a reason, the agent
/// stays up, the connection limits hold, and nothing changes.
#[test]
fn hostile_control_requests_are_refused_and_change_nothing() {
    let t = Topology::new(false, &[]);
    let a = &t.src_agent;
    a.add_udp_service(2, "dns", &format!("{SRC_IP}:53"));
    let before = a.service("dns");
    let list_before = a.json(&["service", "list"]);
    let socket = &a.socket;

    // Oversized: a megabyte without a newline, a line just over 64 KiB.
    let (v, closed) = raw_bytes(socket, &vec![b'{'; 1 << 20]);
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert!(closed, "the connection is closed after an oversized line");
    let mut long = format!(r#"{{"v":1,"op":"stats","id":"{}"}}"#, "x".repeat(65_536));
    long.push('\n');
    assert_eq!(
        raw_bytes(socket, long.as_bytes()).0["error"]["code"],
        "bad_request"
    );
    // Deep nesting, inside the size limit.
    let deep = format!(
        r#"{{"v":1,"op":"service.add","args":{}{}}}"#,
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let cases: Vec<(String, &[&str])> = vec![
        (deep, &["bad_request"]),
        ("[".repeat(60_000), &["bad_request"]),
        // Wrong types.
        (r#"{"v":"1","op":"stats"}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":5}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":"stats","args":[1,2]}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":"phase","args":"freeze"}"#.into(), &["bad_request"]),
        (
            r#"{"v":1,"op":"phase","args":{"service":"dns","phase":"freeze","role":7}}"#.into(),
            &["bad_request"],
        ),
        (
            r#"{"v":1,"op":"phase","args":{"service":["dns"],"phase":"freeze"}}"#.into(),
            &["bad_request"],
        ),
        (
            r#"{"v":1,"op":"service.add","args":{"id":"seven","name":"x"}}"#.into(),
            &["bad_request"],
        ),
        (
            r#"{"v":1,"op":"service.add","args":{"id":6,"name":"x","rules":{"proto":"udp"}}}"#.into(),
            &["bad_request"],
        ),
        // Out of range.
        (r#"{"v":4294967296,"op":"stats"}"#.into(), &["bad_request", "unsupported_version"]),
        (r#"{"v":1,"op":"service.add","args":{"id":0,"name":"x"}}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":"service.add","args":{"id":4096,"name":"x"}}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":"service.add","args":{"id":-1,"name":"x"}}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":"service.add","args":{"id":1.5,"name":"x"}}"#.into(), &["bad_request"]),
        (
            r#"{"v":1,"op":"service.add","args":{"id":18446744073709551616,"name":"x"}}"#.into(),
            &["bad_request"],
        ),
        (r#"{"v":1,"op":"service.add","args":{"id":1e300,"name":"x"}}"#.into(), &["bad_request"]),
        (
            format!(r#"{{"v":1,"op":"service.add","args":{{"id":6,"name":"{}"}}}}"#, "n".repeat(65)),
            &["bad_request"],
        ),
        (r#"{"v":1,"op":"service.add","args":{"id":6,"name":"../../etc"}}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":"service.add","args":{"id":6,"name":"123"}}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":"service.add","args":{"id":6,"name":"a\u0000b"}}"#.into(), &["bad_request"]),
        (r#"{"v":1,"op":"service.add","args":{"id":6,"name":""}}"#.into(), &["bad_request"]),
        (
            r#"{"v":1,"op":"service.add","args":{"id":6,"name":"x","rules":[{"proto":"udp","addr":"10.41.1.2:70000"}]}}"#.into(),
            &["bad_request"],
        ),
        (
            r#"{"v":1,"op":"service.add","args":{"id":6,"name":"x","rules":[{"proto":"sctp","addr":"10.41.1.2:1"}]}}"#.into(),
            &["bad_request"],
        ),
        (
            r#"{"v":1,"op":"service.add","args":{"id":6,"name":"x","replay_rate":1e20}}"#.into(),
            &["bad_request"],
        ),
        (
            r#"{"v":1,"op":"service.add","args":{"id":6,"name":"x","park_limit":{"frames":-5,"bytes":1}}}"#.into(),
            &["bad_request"],
        ),
        (
            r#"{"v":1,"op":"phase","args":{"service":4096,"phase":"freeze"}}"#.into(),
            &["not_found", "bad_request"],
        ),
        (
            r#"{"v":1,"op":"phase","args":{"service":"99999999999999999999999","phase":"freeze"}}"#.into(),
            &["not_found", "bad_request"],
        ),
        (
            r#"{"v":1,"op":"phase","args":{"service":"dns","phase":"freeze","drain_ms":-1}}"#.into(),
            &["bad_request"],
        ),
    ];
    let mut refused = 0;
    for (line, codes) in &cases {
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        let (v, _) = raw_bytes(socket, &bytes);
        let code = v["error"]["code"].as_str().unwrap_or("");
        let shown: String = line.chars().take(100).collect();
        assert_eq!(v["ok"], false, "{shown} -> {v}");
        assert!(codes.contains(&code), "{shown} -> {v}");
        assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty());
        refused += 1;
    }
    // Invalid UTF-8 and control bytes.
    let (v, _) = raw_bytes(socket, b"{\"v\":1,\"op\":\"\xff\xfe\"}\n");
    assert_eq!(v["ok"], false, "{v}");
    refused += 1;
    // An unknown CRIU action is not an error (CRIU adds actions), and does nothing.
    let (v, _) = raw_bytes(
        socket,
        b"{\"v\":1,\"op\":\"criu\",\"args\":{\"service\":\"dns\",\"action\":\"pre-dump; rm -rf /\"}}\n",
    );
    assert_eq!(
        (&v["ok"], &v["result"]["unchanged"]),
        (&json!(true), &json!(true)),
        "{v}"
    );

    // Extreme but well-typed values must not break the agent's timers: a
    // service draining "forever" (drain_ms = u64::MAX) next to a paced
    // replay, which must finish on its own (nobody talks to the agent
    // meanwhile; the replay's pace is the engine's only wake-up).
    let mut api = Api::connect(socket);
    let forever = api.call(request(
        "service.add",
        json!({"id": 8, "name": "forever", "rules": [{"proto": "udp", "addr": format!("{SRC_IP}:54")}],
               "forward": {"addr": "10.41.1.1:54", "iface": "v-sc", "next_hop_mac": "02:00:00:00:00:01"}}),
    ));
    assert_eq!(forever["ok"], true, "{forever}");
    for phase in ["freeze", "restored"] {
        let r = api.call(request(
            "phase",
            json!({"service": "forever", "phase": phase}),
        ));
        assert_eq!(r["ok"], true, "{r}");
    }
    let r = api.call(request(
        "phase",
        json!({"service": "forever", "phase": "done", "drain_ms": u64::MAX}),
    ));
    assert_eq!(r["ok"], true, "{r}");
    let r = api.call(request(
        "service.add",
        json!({"id": 9, "name": "paced", "rules": [{"proto": "udp", "addr": format!("{SRC_IP}:55")}],
               "replay_rate": 100}),
    ));
    assert_eq!(r["ok"], true, "{r}");
    let paced = UdpClient::new(&t.client, &format!("{SRC_IP}:55"));
    assert_eq!(
        api.call(request(
            "phase",
            json!({"service": "paced", "phase": "freeze"})
        ))["ok"],
        true
    );
    paced.send(50);
    wait_for(Duration::from_secs(5), "50 parked frames", || {
        num(&a.service("paced"), &["parked", "stored_frames"]) == 50
    });
    let cpu_before = cpu_seconds(a.pid());
    assert_eq!(
        api.call(request(
            "phase",
            json!({"service": "paced", "phase": "abort"})
        ))["ok"],
        true
    );
    std::thread::sleep(Duration::from_millis(2500));
    let cpu = cpu_seconds(a.pid()) - cpu_before;
    println!("agent CPU time over 2.5 s with a service draining for u64::MAX ms: {cpu:.2} s");
    assert!(cpu < 1.0, "the agent spins: {cpu:.2} s of CPU in 2.5 s");
    let p = a.service("paced");
    assert_eq!(
        num(&p, &["replay", "replayed_frames"]),
        50,
        "the paced replay finished by itself: {p}"
    );
    assert_eq!(a.service("forever")["state"], "draining");

    // Many idle or half-written connections do not block anyone else.
    let idle: Vec<UnixStream> = (0..200)
        .map(|i| {
            let mut s = UnixStream::connect(socket).unwrap();
            if i % 2 == 0 {
                s.write_all(br#"{"v":1,"op":"sta"#).unwrap();
            }
            s
        })
        .collect();
    let started = Instant::now();
    a.ok(&["stats"]);
    println!(
        "with 200 idle/half-written connections open, a stats request took {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    // Over the cap, a connection is told why and closed: the agent's file
    // descriptors and tasks stay bounded.
    let extra: Vec<UnixStream> = (0..MAX_CONTROL_CONNECTIONS - 200)
        .map(|_| UnixStream::connect(socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = UnixStream::connect(socket).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    BufReader::new(&mut over).read_line(&mut answer).unwrap();
    let answer: Value = serde_json::from_str(&answer).expect("a JSON error line");
    assert_eq!(answer["error"]["code"], "busy", "{answer}");
    drop(idle);
    drop(extra);
    std::thread::sleep(Duration::from_millis(200));
    a.ok(&["stats"]);

    // Nothing changed (but for the two services added above).
    let list: Vec<Value> = a
        .json(&["service", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["id"] != 8 && s["id"] != 9)
        .cloned()
        .collect();
    assert_eq!(Value::Array(list), list_before);
    assert_eq!(control_state(&a.service("dns")), control_state(&before));
    assert_eq!(
        Api::connect(socket).call(request("hello", Value::Null))["ok"],
        true
    );
    println!(
        "hostile requests: {refused} refused (plus 2 oversized lines), agent up, state unchanged"
    );
}
