//! Faults in mid-migration, fail-open, and a locked-down control plane
//! (issue 10), on real agents in network namespaces. The harness and the
//! topology are `migr_testkit::agent_harness` (the same as `agent.rs`):
//!
//! ```text
//!   cli --v-cs / v-sc-- src --v-sd / v-ds-- dst
//!   10.41.1.1      10.41.1.2   10.41.2.1      10.41.2.2
//! ```
//!
//! Each test names the fault it injects and asserts the outcome the design
//! promises, on counts (not on timings). The figures they print are the ones
//! in docs/reliability.md.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use migr_common::{maps::REPLAY_META_MAGIC, wire::tcp::TCP_ACK};
use migr_testkit::{
    NetNs,
    agent_harness::*,
    corpus::{Rng, mutate},
    frames::{FrameBuilder, mptcp},
    netns::{ifindex_of, mac_of},
};
use migr_user::{
    servers::MAX_CONTROL_CONNECTIONS,
    token_quota::{TOKEN_BURST, TOKENS_PER_SECOND},
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Helpers

/// Sends `n` requests in chunks of 50, so as not to outrun the veth's ring.
fn send_paced(client: &UdpClient, n: usize) {
    let mut left = n;
    while left > 0 {
        let k = left.min(50);
        client.send(k);
        left -= k;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Brings the destination's end of the link up again, with the route the
/// link's going down removed.
fn link_up(dst: &NetNs) {
    dst.ip(&["link", "set", "v-ds", "up"]).unwrap();
    dst.ip(&["route", "replace", "default", "via", "10.41.2.1"])
        .unwrap();
}

fn reasons(agent: &Agent) -> Value {
    agent.json(&["stats"])["reasons"].clone()
}

fn reason(agent: &Agent, name: &str) -> u64 {
    let reasons = reasons(agent);
    reasons[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no reason {name} in the stats: {reasons}"))
}

/// One connection to an agent's control socket, speaking the raw protocol
/// (several requests in flight, as an orchestrator may send them).
struct Api {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Api {
    fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect to the agent");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Self { stream, reader }
    }

    /// Writes every request, then reads one response per request, in order.
    fn pipeline(&mut self, requests: &[Value]) -> Vec<Value> {
        let mut out = Vec::new();
        for r in requests {
            out.extend_from_slice(r.to_string().as_bytes());
            out.push(b'\n');
        }
        self.stream.write_all(&out).unwrap();
        (0..requests.len())
            .map(|_| {
                let mut line = String::new();
                self.reader.read_line(&mut line).expect("a response line");
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
            })
            .collect()
    }

    fn call(&mut self, request: Value) -> Value {
        self.pipeline(&[request]).remove(0)
    }
}

fn request(op: &str, args: Value) -> Value {
    json!({"v": 1, "op": op, "args": args})
}

/// Sends raw bytes on a fresh connection; returns the response line (parsed)
/// and whether the agent closed the connection after it.
fn raw_bytes(socket: &Path, bytes: &[u8]) -> (Value, bool) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent may answer and close before it has read everything.
    let _ = s.write_all(bytes);
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while !text.ends_with(b"\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer to {} bytes: {e}", bytes.len()),
        }
    }
    let v: Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&text)));
    let _ = s.shutdown(std::net::Shutdown::Write);
    let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
    (v, closed)
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Entries of a pinned hash map of u32 keys and values.
fn pinned_u32_entries(pin_dir: &Path, map: &str) -> usize {
    let data = aya::maps::MapData::from_pin(pin_dir.join(map)).expect("the pinned map");
    let map = aya::maps::Map::from_map_data(data).unwrap();
    let hash = aya::maps::HashMap::<_, u32, u32>::try_from(map).unwrap();
    hash.keys().filter(Result::is_ok).count()
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may contain spaces): state is 3rd, utime 14th, stime 15th.
    let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// A raw (AF_PACKET) socket on one interface of a namespace: whole frames,
/// as a NIC would receive them.
struct PacketSocket {
    fd: libc::c_int,
    addr: libc::sockaddr_ll,
}

impl PacketSocket {
    fn new(ns: &NetNs, dev: &str) -> Self {
        let ifindex = ifindex_of(ns, dev).unwrap();
        let fd = ns
            .run(|| {
                // SAFETY: plain socket(2).
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) }
            })
            .unwrap();
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: zeroed sockaddr_ll is valid; the fields are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        Self { fd, addr }
    }

    /// Sends one frame; false if the kernel refused it (e.g. a full queue).
    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: sendto with a valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        n == frame.len() as isize
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str, mode: u32) -> Self {
        let path = std::env::temp_dir().join(format!("migr-t{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fields of a service status that only the control plane may change.
fn control_state(svc: &Value) -> Value {
    json!({
        "spec": svc["spec"],
        "state": svc["state"],
        "role": svc["role"],
        "datapath": svc["datapath"],
        "timeline": svc["timeline"],
    })
}

// ---------------------------------------------------------------------------
// The agent is killed during a replay

/// A paced replay (500 frames/s) of 2,000 parked requests, the agent
/// SIGKILLed twice in the middle of it and restarted with the same
/// directories, more requests arriving while it is dead: every request is
/// answered exactly once, in order, and no frame is uncertain.
#[test]
fn sigkill_during_a_paced_replay_resumes_without_duplicates_or_loss() {
    const PARKED: usize = 2000;
    const WHILE_DEAD: usize = 100;
    let mut t = Topology::new(false, &["--replay-rate", "500"]);
    let src_echo = start_echo(&t.src, SRC_IP, "src", &t.scratch());
    t.src_agent.ok(&[
        "service",
        "add",
        "--id",
        "11",
        "--name",
        "replay",
        "--udp",
        &format!("{SRC_IP}:{PORT}"),
    ]);
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    client.send(5);
    assert_eq!(client.wait_answers(5, Duration::from_secs(5)).len(), 5);
    t.src_agent.phase("replay", "freeze");
    src_echo.signal(libc::SIGSTOP);
    send_paced(&client, PARKED);
    wait_for(Duration::from_secs(10), "the parked frames stored", || {
        num(&t.src_agent.service("replay"), &["parked", "stored_frames"]) == PARKED as u64
    });
    src_echo.signal(libc::SIGCONT);
    t.src_agent.phase("replay", "abort");
    let mut killed_at = Vec::new();
    for at in [PARKED / 4, PARKED / 2] {
        let mut replayed = 0;
        wait_for(Duration::from_secs(30), "the replay to progress", || {
            replayed = num(
                &t.src_agent.service("replay"),
                &["replay", "replayed_frames"],
            );
            replayed >= at as u64
        });
        t.src_agent.kill9();
        killed_at.push(replayed);
        // The datapath stays attached and parks behind the backlog.
        send_paced(&client, WHILE_DEAD);
        std::thread::sleep(Duration::from_millis(50));
        t.src_agent.start(&t.src);
        let s = t.src_agent.service("replay");
        assert_eq!(s["state"], "aborted", "{s}");
        assert_eq!(s["replay_stage"], "backlog", "the replay resumes: {s}");
        assert!(
            t.src_agent
                .log_text()
                .contains("re-used the pinned XDP link")
        );
    }
    let total = 5 + PARKED + 2 * WHILE_DEAD;
    let answers = client.wait_answers(total, Duration::from_secs(60));
    let (at_src, _) = check_answers(&answers, total as u64);
    assert_eq!(at_src.len(), total);
    wait_for(Duration::from_secs(10), "the replay to finish", || {
        t.src_agent.service("replay")["replay_stage"].is_null()
    });
    let s = t.src_agent.service("replay");
    let parked = (PARKED + 2 * WHILE_DEAD) as u64;
    assert_eq!(verdict(&s, "park"), parked);
    assert_eq!(
        verdict(&s, "pass"),
        total as u64,
        "5 live, the rest replayed once"
    );
    assert_eq!(num(&s, &["replay", "uncertain_frames"]), 0);
    assert_eq!(num(&s, &["replay", "failed_frames"]), 0);
    assert_eq!(num(&s, &["parked", "overflow_frames"]), 0);
    assert_eq!(num(&s, &["parked", "pending_frames"]), 0);
    assert_eq!(num(&s, &["replay", "replayed_frames"]), parked);
    assert_eq!(reason(&t.src_agent, "replayed"), parked);
    println!(
        "kill during replay: {parked} parked frames, agent SIGKILLed after {killed_at:?} replayed, \
         {} requests sent while it was dead; {total} requests, {} answered once and in order, 0 lost, \
         0 duplicated, 0 uncertain",
        2 * WHILE_DEAD,
        at_src.len()
    );
    t.procs.push(src_echo);
}

// ---------------------------------------------------------------------------
// A service busier than the replay rate

/// A service that receives about three times the replay rate (some 6,000
/// requests of 1 KB a second, `--replay-rate 2000`) is frozen for a second and aborted while the
/// requests keep coming. The backlog drains at the replay rate above what
/// arrives meanwhile, the store stays far smaller than all it ever held
/// (replayed frames are compacted away while frames are pending), the
/// agent's memory stays bounded, and every request is answered once, in
/// order.
#[test]
fn a_service_busier_than_the_replay_rate_drains_its_backlog_in_bounded_memory() {
    const PER_MS: usize = 8;
    let mut t = Topology::new(false, &["--replay-rate", "2000"]);
    let echo = start_echo(&t.src, SRC_IP, "src", &t.scratch());
    t.src_agent.ok(&[
        "service",
        "add",
        "--id",
        "12",
        "--name",
        "busy",
        "--udp",
        &format!("{SRC_IP}:{PORT}"),
    ]);
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    let store = t.src_agent.state_dir.join("spool").join("12.frames");
    let (_, hwm_before) = memory_kib(t.src_agent.pid());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent = std::sync::atomic::AtomicU64::new(0);
    let mut largest_store = 0u64;
    let mut drained_after = None;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Padded to about 1 KB, so that the store holds megabytes.
            let pad = "x".repeat(900);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..PER_MS {
                    let seq = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let request = format!("seq={seq} pad={pad}");
                    client
                        .socket
                        .send_to(request.as_bytes(), client.target)
                        .unwrap();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        t.src_agent.phase("busy", "freeze");
        std::thread::sleep(Duration::from_secs(1));
        t.src_agent.phase("busy", "abort");
        let aborted = Instant::now();
        // Requests keep coming: the backlog must drain all the same.
        while aborted.elapsed() < Duration::from_secs(30) {
            largest_store = largest_store.max(std::fs::metadata(&store).map_or(0, |m| m.len()));
            if t.src_agent.service("busy")["replay_stage"] != "backlog" {
                drained_after = Some(aborted.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let drained_after = drained_after.expect("the backlog never drained within 30 s of the abort");
    let sent = sent.into_inner();
    let answers = client.wait_answers(sent as usize, Duration::from_secs(30));
    check_answers(&answers, sent);
    let s = t.src_agent.service("busy");
    let stored_bytes = num(&s, &["parked", "stored_bytes"]);
    assert_eq!(num(&s, &["parked", "overflow_frames"]), 0, "{s}");
    assert_eq!(num(&s, &["replay", "failed_frames"]), 0, "{s}");
    assert!(
        largest_store < stored_bytes / 2,
        "the store grew to {largest_store} bytes of {stored_bytes} stored: replayed frames were not given back"
    );
    let (_, hwm_after) = memory_kib(t.src_agent.pid());
    // The pending frames are held in memory (and copied once by a
    // compaction); what was replayed is not.
    assert!(
        hwm_after.saturating_sub(hwm_before) * 1024 < stored_bytes * 2 / 3,
        "agent peak memory grew by {} KiB with {stored_bytes} bytes stored",
        hwm_after - hwm_before
    );
    println!(
        "busy service, about 3x the replay rate: {sent} requests answered once and in order; backlog drained \
         {:.1} s after the abort; {} frames ({stored_bytes} bytes) stored, the store file at most \
         {largest_store} bytes; agent peak memory +{} KiB",
        drained_after.as_secs_f64(),
        num(&s, &["parked", "stored_frames"]),
        hwm_after.saturating_sub(hwm_before)
    );
    t.procs.push(echo);
}

// ---------------------------------------------------------------------------
// The destination is unreachable during FORWARD

/// The source forwards to the destination (after a replay of the parked
/// requests), then the way there fails twice: the destination's end of the
/// link goes down (no carrier), and the link is removed. The agent stays up,
/// says so in `service show` and `status`, refuses to replay parked frames
/// into a dead link, and counts what the datapath could not forward.
#[test]
fn an_unreachable_destination_during_forward_is_counted_with_a_clear_status() {
    let mut t = Topology::new(true, &[]);
    let scratch = t.scratch();
    let src_echo = start_echo(&t.src, SRC_IP, "src", &scratch);
    let dst_echo = start_echo(t.dst(), DST_IP, "dst", &scratch);
    let a = &t.src_agent;
    a.ok(&[
        "service",
        "add",
        "--id",
        "1",
        "--name",
        "echo",
        "--udp",
        &format!("{SRC_IP}:{PORT}"),
        "--forward-to",
        &format!("{DST_IP}:{PORT}"),
        "--forward-iface",
        "v-sd",
    ]);
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    a.phase("echo", "freeze");
    src_echo.signal(libc::SIGSTOP);
    client.send(20);
    wait_for(Duration::from_secs(5), "20 parked frames", || {
        num(&a.service("echo"), &["parked", "stored_frames"]) == 20
    });
    let show = a.ok(&["service", "show", "echo"]);
    assert!(show.contains("link up"), "{show}");
    a.phase("echo", "restored");
    client.send(10);
    let answers = client.wait_answers(30, Duration::from_secs(5));
    let (_, at_dst) = check_answers(&answers, 30);
    assert_eq!(
        at_dst.len(),
        30,
        "replayed and forwarded to the destination"
    );

    // Fault 1: the destination's end goes down. The datapath still forwards
    // (it cannot see the link), the kernel drops the frames on v-sd, and
    // the agent reports the link without carrier.
    t.dst().ip(&["link", "set", "v-ds", "down"]).unwrap();
    let tx_dropped = || -> u64 {
        let text = t
            .src
            .exec(&["ip", "-s", "-j", "link", "show", "dev", "v-sd"])
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v[0]["stats64"]["tx"]["dropped"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx dropped count in `ip -s -j link`: {v}"))
    };
    let dropped_before = tx_dropped();
    client.send(10);
    std::thread::sleep(Duration::from_millis(200));
    let svc = a.service("echo");
    assert_eq!(svc["forward_link"], "no-carrier", "{svc}");
    assert_eq!(verdict(&svc, "forward"), 40);
    let dropped = tx_dropped() - dropped_before;
    assert!(dropped >= 10, "the kernel dropped them ({dropped})");
    assert_eq!(client.answered(), 30, "nothing reached the destination");
    let show = a.ok(&["service", "show", "echo"]);
    assert!(show.contains("no carrier"), "{show}");
    let status = a.ok(&["status"]);
    assert!(status.contains("no carrier"), "{status}");
    println!("{status}");
    // The link comes back: forwarding works again.
    link_up(t.dst());
    wait_for(Duration::from_secs(10), "the carrier", || {
        a.service("echo")["forward_link"] == "up"
    });
    client.send(10);
    let answers = client.wait_answers(40, Duration::from_secs(5));
    let lost: Vec<u64> = (30..40)
        .filter(|s| !answers.iter().any(|a| a.seq == *s))
        .collect();
    assert_eq!(lost, (30..40).collect::<Vec<_>>(), "lost while down");
    assert!((40..50).all(|s| answers.iter().any(|a| a.seq == s)));

    // A second migration of the same service with the link down: `restored`
    // is refused, so the parked frames are not replayed into a dead link;
    // abort gives them back to the source.
    a.phase_with("echo", "done", &["--drain-ms", "0"]);
    wait_for(Duration::from_secs(5), "done", || {
        a.service("echo")["state"] == "done"
    });
    src_echo.signal(libc::SIGCONT);
    a.phase("echo", "freeze");
    src_echo.signal(libc::SIGSTOP);
    client.send(10);
    wait_for(Duration::from_secs(5), "10 more parked frames", || {
        num(&a.service("echo"), &["parked", "pending_frames"]) == 10
    });
    t.dst().ip(&["link", "set", "v-ds", "down"]).unwrap();
    wait_for(Duration::from_secs(5), "no carrier", || {
        a.service("echo")["forward_link"] == "no-carrier"
    });
    let out = a.ctl(&["phase", "echo", "restored"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no carrier"), "{err}");
    let svc = a.service("echo");
    assert_eq!(svc["state"], "frozen", "refused, nothing changed");
    assert_eq!(num(&svc, &["parked", "pending_frames"]), 10);
    src_echo.signal(libc::SIGCONT);
    a.phase("echo", "abort");
    let answers = client.wait_answers(50, Duration::from_secs(5));
    assert!(
        (50..60).all(|s| answers.iter().any(|a| a.seq == s && a.inst == "src")),
        "the parked requests went back to the source"
    );

    // Fault 2: the link toward the destination is removed. The datapath
    // counts every frame it cannot forward; the agent says the interface is
    // missing.
    link_up(t.dst());
    src_echo.signal(libc::SIGSTOP);
    a.phase("echo", "freeze");
    wait_for(Duration::from_secs(5), "the carrier", || {
        a.service("echo")["forward_link"] == "up"
    });
    a.phase("echo", "restored");
    t.src.ip(&["link", "del", "v-sd"]).unwrap();
    let failed_before = verdict(&a.service("echo"), "forward_failed");
    let no_target_before = reason(a, "no_redirect_target");
    client.send(25);
    wait_for(Duration::from_secs(5), "25 failed forwards", || {
        verdict(&a.service("echo"), "forward_failed") == failed_before + 25
    });
    assert_eq!(reason(a, "no_redirect_target"), no_target_before + 25);
    let svc = a.service("echo");
    assert_eq!(svc["forward_link"], "missing", "{svc}");
    assert_eq!(svc["state"], "restored");
    let status = a.ok(&["status"]);
    println!("{status}");
    assert!(status.contains("missing"), "{status}");
    let show = a.ok(&["service", "show", "echo"]);
    assert!(show.contains("forward_failed=25"), "{show}");
    let stats = a.ok(&["stats"]);
    assert!(stats.contains("no_redirect_target=25"), "{stats}");
    println!(
        "unreachable destination: peer down: 10 frames forwarded into a link without carrier, \
         10 dropped by the kernel (v-sd tx dropped), status 'no carrier'; a restored with the link \
         down refused, its 10 parked frames returned to the source by abort; link removed: \
         25 of 25 frames counted forward_failed / no_redirect_target, status 'missing'"
    );
    t.procs.push(src_echo);
    t.procs.push(dst_echo);
}

// ---------------------------------------------------------------------------
// 100 services at once

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

// ---------------------------------------------------------------------------
// Fail-open

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
    t.src_agent.ok(&[
        "service",
        "add",
        "--id",
        "3",
        "--name",
        "idle",
        "--udp",
        &format!("{SRC_IP}:{PORT}"),
    ]);
    t.src_agent.kill9();
    assert!(t.src_agent.pin_dir.join("link-v-sc").exists());
    client.send(20);
    let answers = client.wait_answers(240, Duration::from_secs(5));
    check_answers(&answers, 240);
    assert_eq!(t.src_agent.ctl(&["status"]).status.code(), Some(3));
    t.procs.push(src_echo);
}

// ---------------------------------------------------------------------------
// Control-plane security

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

/// Under a supervisor's low soft limit of open files (64), the agent raises
/// it to the hard limit and so takes a hundred services, each of which holds
/// two files.
#[test]
fn a_low_open_file_limit_is_raised_so_a_hundred_services_fit() {
    const N: u16 = 100;
    let mut t = Topology::build(false, &[], false);
    t.src_agent.nofile = Some(64);
    t.src_agent.start(&t.src);
    let mut api = Api::connect(&t.src_agent.socket);
    let adds: Vec<Value> = (0..N)
        .map(|i| {
            request(
                "service.add",
                json!({
                    "id": 300 + i,
                    "name": format!("f{i}"),
                    "rules": [{"proto": "udp", "addr": format!("{SRC_IP}:{}", 8100 + i)}],
                }),
            )
        })
        .collect();
    for r in api.pipeline(&adds) {
        assert_eq!(r["ok"], true, "{r}");
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", t.src_agent.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    println!("soft limit 64 raised to 4096; {N} services added");
}

/// `ip netns exec` gives the agent a mount namespace of its own with a fresh
/// /sys: a bpffs it mounted there would vanish with it, and the pinned
/// datapath and parked frames with it. The agent refuses and says how to run
/// instead; under `nsenter --net` (the harness's way) it serves.
#[test]
fn an_agent_in_a_private_mount_namespace_refuses_a_bpffs_that_dies_with_it() {
    let t = Topology::build(false, &[], false);
    let mut args = t.src_agent.args.clone();
    args.insert(0, bins().agent.to_str().unwrap().to_string());
    let mut child = Command::new("ip")
        .args(["netns", "exec", t.src.name()])
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent served under `ip netns exec` instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("nsenter --net"),
        "the refusal says what to do: {err}"
    );
    assert!(!t.src_agent.pin_dir.exists(), "nothing was pinned");
    println!(
        "ip netns exec: refused ({status}): {}",
        err.lines().last().unwrap_or("")
    );
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
    let (a_addr, b_addr) = (format!("{SRC_IP}:7400"), format!("{SRC_IP}:7401"));
    let echo = start_echo_on(
        &t.src,
        &[a_addr.clone(), b_addr.clone()],
        "ab",
        &t.scratch(),
        &[],
    );
    for (id, name, addr) in [("1", "a", &a_addr), ("2", "b", &b_addr)] {
        t.src_agent
            .ok(&["service", "add", "--id", id, "--name", name, "--udp", addr]);
    }
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

/// The engine thread panics (a test hook makes it panic on `stats`): the
/// agent must exit with a failure status, so that its supervisor restarts
/// it, rather than live on answering every request with an error. The
/// pinned datapath goes on parking meanwhile, and the restarted agent has
/// the service and its parked frames.
#[test]
fn an_engine_panic_ends_the_agent_with_a_failure_status() {
    let mut t = Topology::build(false, &[], false);
    t.src_agent
        .env
        .push(("MIGR_TEST_ENGINE_PANIC".into(), "1".into()));
    t.src_agent.start(&t.src);
    let addr = format!("{SRC_IP}:7500");
    let echo = start_echo_on(
        &t.src,
        std::slice::from_ref(&addr),
        "panic",
        &t.scratch(),
        &[],
    );
    t.src_agent
        .ok(&["service", "add", "--id", "3", "--name", "p", "--udp", &addr]);
    t.src_agent.phase("p", "freeze");
    let stats = t.src_agent.ctl(&["stats"]);
    assert!(
        !stats.status.success(),
        "stats answered although the engine panicked"
    );
    let mut status = None;
    wait_for(Duration::from_secs(10), "the agent to exit", || {
        let p = t.src_agent.proc.as_mut().expect("started");
        status = p.child.try_wait().expect("wait for the agent");
        status.is_some()
    });
    let status = status.expect("exited");
    assert_eq!(status.code(), Some(1), "{status}");
    let log = t.src_agent.log_text();
    assert!(log.contains("the engine thread panicked"), "{log}");
    t.src_agent.proc = None;
    let client = UdpClient::new(&t.client, &addr);
    client.send(5);
    t.src_agent.env.clear();
    t.src_agent.start(&t.src);
    let s = t.src_agent.service("p");
    assert_eq!(s["state"], "frozen", "{s}");
    t.src_agent.phase("p", "abort");
    let answers = client.wait_answers(5, Duration::from_secs(5));
    assert_eq!(
        answers.len(),
        5,
        "parked while no agent ran, replayed after: {answers:?}"
    );
    println!(
        "engine panic: agent exited with {status}; 5 of 5 frames parked meanwhile were replayed"
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
    let (a_addr, b_addr) = (format!("{SRC_IP}:7600"), format!("{SRC_IP}:7601"));
    let echo = start_echo_on(
        &t.src,
        &[a_addr.clone(), b_addr.clone()],
        "state",
        &t.scratch(),
        &[],
    );
    for (id, name, addr) in [("1", "a", &a_addr), ("2", "b", &b_addr)] {
        t.src_agent
            .ok(&["service", "add", "--id", id, "--name", name, "--udp", addr]);
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

/// Hostile requests on the socket: each is refused with a reason, the agent
/// stays up, the connection limits hold, and nothing changes.
#[test]
fn hostile_control_requests_are_refused_and_change_nothing() {
    let t = Topology::new(false, &[]);
    let a = &t.src_agent;
    a.ok(&[
        "service",
        "add",
        "--id",
        "2",
        "--name",
        "dns",
        "--udp",
        &format!("{SRC_IP}:53"),
    ]);
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

// ---------------------------------------------------------------------------
// Packets cannot change control state; events are rate-limited

/// MPTCP keys are read while the engine is busy. Its loop is held busy
/// (test hook `MIGR_TEST_ENGINE_NEVER_IDLE`: it never sleeps, as under a
/// flood to a frozen service or a long unpaced replay); key reports must
/// still become tokens at once, not when the loop next has nothing to do.
#[test]
fn mptcp_keys_are_read_while_the_engine_is_busy() {
    const MPTCP_PORT: u16 = 8081;
    const KEYS: u64 = 5;
    let mut t = Topology::build(false, &[], false);
    t.src_agent
        .env
        .push(("MIGR_TEST_ENGINE_NEVER_IDLE".into(), "1".into()));
    t.src_agent.start(&t.src);
    let a = &t.src_agent;
    let addr = format!("{SRC_IP}:{MPTCP_PORT}");
    a.ok(&[
        "service", "add", "--id", "5", "--name", "mp", "--mptcp", &addr,
    ]);
    let src_mac = mac_of(&t.client, "v-cs").unwrap();
    let dst_mac = mac_of(&t.src, "v-sc").unwrap();
    let raw = PacketSocket::new(&t.client, "v-cs");
    for i in 0..KEYS {
        let frame =
            FrameBuilder::tcp_v4([10, 41, 1, 1], 21000 + i as u16, [10, 41, 1, 2], MPTCP_PORT)
                .flags(TCP_ACK)
                .tcp_options(&mptcp::capable_ack(1, 0x01, 0x1111 + i, 0x2222 + i))
                .src_mac(src_mac)
                .dst_mac(dst_mac)
                .build();
        assert!(raw.send(&frame), "sending key report {i}");
    }
    wait_for(Duration::from_secs(5), "the tokens installed", || {
        pinned_u32_entries(&a.pin_dir, "TOKENS") == KEYS as usize
    });
    assert_eq!(reason(a, "mptcp_keys_reported"), KEYS);
    println!("busy engine: {KEYS} of {KEYS} key reports became tokens");
}

/// A flood of MP_CAPABLE third ACKs, each with new keys, at an MPTCP
/// service, then a flood of malformed and replay-tag-carrying frames: the
/// datapath's event budget suppresses most key reports
/// (`events_rate_limited`), the agent's memory stays bounded, and no
/// service's control state (spec, phase, datapath action, timeline) moves.
#[test]
fn packet_floods_move_only_counters_and_the_agent_memory_stays_bounded() {
    const MPTCP_PORT: u16 = 8080;
    const FLOOD: Duration = Duration::from_secs(3);
    let mut t = Topology::new(false, &[]);
    let a = &t.src_agent;
    a.ok(&[
        "service",
        "add",
        "--id",
        "5",
        "--name",
        "mp",
        "--mptcp",
        &format!("{SRC_IP}:{MPTCP_PORT}"),
    ]);
    a.ok(&[
        "service",
        "add",
        "--id",
        "6",
        "--name",
        "kv",
        "--udp",
        &format!("{SRC_IP}:{PORT}"),
    ]);
    a.phase("kv", "freeze");
    let services_before: Vec<Value> = ["mp", "kv"]
        .iter()
        .map(|s| control_state(&a.service(s)))
        .collect();
    let reasons_before = reasons(a);
    let pid = a.pid();
    let (rss_before, hwm_before) = memory_kib(pid);

    let src_mac = mac_of(&t.client, "v-cs").unwrap();
    let dst_mac = mac_of(&t.src, "v-sc").unwrap();
    let raw = PacketSocket::new(&t.client, "v-cs");
    let mut rng = Rng(0x0f10_0d00_0000_0010);
    // One frame, its receiver key (so its token) and source port patched
    // for every send: building each frame would measure the builder. The
    // patched frames' TCP checksums are wrong (the stack drops them after
    // the datapath; XDP does not check them), like any forged flood's.
    let template = |sport: u16, k1: u64, k2: u64| {
        FrameBuilder::tcp_v4([10, 41, 1, 1], sport, [10, 41, 1, 2], MPTCP_PORT)
            .flags(TCP_ACK)
            .tcp_options(&mptcp::capable_ack(1, 0x01, k1, k2))
            .src_mac(src_mac)
            .dst_mac(dst_mac)
            .build()
    };
    const MARK: u64 = 0x6d69_6772_6b65_7921;
    let mut frame = template(20000, rng.next_u64(), MARK);
    let key_at = frame
        .windows(8)
        .position(|w| w == MARK.to_be_bytes())
        .expect("the receiver key in the frame");
    let started = Instant::now();
    let mut sent = 0u64;
    let mut refused = 0u64;
    while started.elapsed() < FLOOD {
        for _ in 0..1024 {
            let key = rng.next_u64();
            frame[key_at..key_at + 8].copy_from_slice(&key.to_be_bytes());
            frame[34..36].copy_from_slice(&(20000 + (key % 40000) as u16).to_be_bytes());
            if raw.send(&frame) {
                sent += 1;
            } else {
                refused += 1;
            }
        }
    }
    let flood_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let (rss_after, hwm_after) = memory_kib(pid);
    let after = reasons(a);
    let delta = |name: &str| after[name].as_u64().unwrap() - reasons_before[name].as_u64().unwrap();
    let mp = a.service("mp");
    let seen = verdict(&mp, "pass");
    let reported = delta("mptcp_keys_reported");
    let limited = delta("events_rate_limited");
    let dropped = delta("events_dropped");
    println!(
        "MP_CAPABLE flood: {sent} frames sent in {flood_s:.1} s ({:.0} frames/s; {refused} refused by the \
         socket), {seen} seen by the datapath ({:.0}/s); {reported} key reports passed to the agent, \
         {limited} rate-limited, {dropped} dropped; agent VmRSS {rss_before} -> {rss_after} KiB, \
         VmHWM {hwm_before} -> {hwm_after} KiB",
        sent as f64 / flood_s,
        seen as f64 / flood_s
    );
    // Each report that reached the agent installed the token of its key.
    let tokens = pinned_u32_entries(&a.pin_dir, "TOKENS");
    println!(
        "MPTCP tokens learned from the flood: {tokens} of {reported} reports (TOKENS holds at most 65,536)"
    );
    // One source address: its tokens are bounded by its quota (256 at once,
    // 64 a second), however many reports pass the datapath's budget.
    let quota = TOKEN_BURST + TOKENS_PER_SECOND * (flood_s + 1.0);
    let refused = num(&a.json(&["stats"]), &["agent", "tokens_refused"]);
    println!("tokens refused by the per-address quota: {refused}");
    assert!(
        tokens as f64 <= quota,
        "{tokens} tokens learned from one address"
    );
    assert_eq!(
        tokens as u64 + refused,
        reported,
        "each report learned or refused"
    );
    assert!(tokens > 0, "the reports that passed were acted on");
    assert!(seen > 10_000, "the flood reached the datapath ({seen})");
    assert_eq!(
        reported + limited + dropped,
        seen,
        "every key report accounted for"
    );
    assert!(limited > 0, "the event budget held back reports");
    // 256 per 100 ms window per CPU: at most this many, whatever the flood.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let windows = (flood_s / 0.1).ceil() as u64 + 2;
    assert!(
        reported <= 256 * windows * cpus,
        "{reported} reports passed"
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < 4 * 1024,
        "the agent's peak memory grew by {} KiB",
        hwm_after - hwm_before
    );

    // Malformed frames at both services, and frames that carry the replay
    // tag in their payload (only XDP metadata can mark a replay).
    let mut rng = Rng(0xbad_f00d);
    let mut malformed = 0u64;
    for i in 0..20_000u32 {
        let mut frame = if i % 2 == 0 {
            template(30000, rng.next_u64(), rng.next_u64())
        } else {
            let mut payload = REPLAY_META_MAGIC.to_le_bytes().to_vec();
            payload.extend_from_slice(&[0; 4]);
            payload.extend_from_slice(&i.to_be_bytes());
            FrameBuilder::udp_v4([10, 41, 1, 1], 40000, [10, 41, 1, 2], PORT)
                .payload(&payload)
                .src_mac(src_mac)
                .dst_mac(dst_mac)
                .build()
        };
        if i % 4 != 1 {
            mutate(&mut rng, &mut frame);
        }
        if raw.send(&frame) {
            malformed += 1;
        }
        if i % 64 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after2 = reasons(a);
    assert_eq!(
        after2["replayed"], reasons_before["replayed"],
        "no frame from the wire is a replay"
    );
    assert_eq!(after2["replay_failed"], reasons_before["replay_failed"]);
    let services_after: Vec<Value> = ["mp", "kv"]
        .iter()
        .map(|s| control_state(&a.service(s)))
        .collect();
    assert_eq!(
        services_after, services_before,
        "no packet changed a service's control state"
    );
    assert_eq!(a.json(&["service", "list"]).as_array().unwrap().len(), 2);
    let kv = a.service("kv");
    println!(
        "malformed/replay-tag flood: {malformed} frames sent; kv parked {} (frozen), malformed reasons {} -> {}; \
         service states unchanged",
        verdict(&kv, "park"),
        reasons_before["malformed"],
        after2["malformed"]
    );
    // The agent still works normally.
    a.phase("kv", "abort");
    let (rss_end, hwm_end) = memory_kib(pid);
    println!("agent after both floods: VmRSS {rss_end} KiB, VmHWM {hwm_end} KiB");
    assert!(hwm_end.saturating_sub(hwm_before) < 8 * 1024);
    t.src_agent.kill9();
}
