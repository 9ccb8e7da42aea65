//! Control latency and replay throughput: a real `migr-agent` process, driven
//! through its control socket (and `migrctl criu-hook`), measured against the
//! floor of doing the same by hand in the same run.
//!
//! Topology: `peer` (the clients) -- veth -- `node` (the agent, attached to
//! `bc-n`) -- veth -- `dst` (where a source forwards to). The bench loads its
//! own copy of the XDP program over the agent's pinned maps, so a
//! BPF_PROG_TEST_RUN probe sees exactly the state the agent wrote.

use std::{
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use migr_common::maps::{Action, FAMILY_V4, ListenerEntry};
use migr_testkit::{
    NetNs,
    fixture::{listener_key, service, v4},
    frames::FrameBuilder,
    netns::{full_checksums, mac_of},
    veth_pair,
};
use migr_user::{
    ctl::Client,
    datapath::{Datapath, DatapathConfig, MAIN_PROGRAM, PASS_PROGRAM, XdpAction},
};
use serde_json::{Value, json};

use crate::{Case, Target, median};

const SERVICE: &str = "bench";
/// A service the agent does not know: the by-hand baseline writes its entry.
const BASELINE_ID: u32 = 2;
const NODE_IP: [u8; 4] = [10, 53, 0, 2];
const PEER_IP: [u8; 4] = [10, 53, 0, 1];
const PORT: u16 = 7000;
const BASELINE_PORT: u16 = 7001;
const DST_ADDR: &str = "10.54.0.2:7000";
/// Payload of the replayed datagrams: a 1400-byte frame.
const PAYLOAD: usize = 1358;

struct Bench {
    peer: NetNs,
    node: NetNs,
    dst: NetNs,
    ctl: Client,
    agent_pid: u32,
    agent_bin: PathBuf,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        // Stop the agent (it detaches and removes its socket), then remove its
        // pins and files; the namespaces kill whatever is left by PID.
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(self.agent_pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new(&self.agent_bin)
            .arg("cleanup")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The binaries built next to this one (`cargo xtask bench` builds them).
fn sibling(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .context("the bench binary has no directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing; build it with `cargo build --release -p migr-user --bins` (cargo xtask bench does)",
            path.display()
        );
    }
    Ok(path)
}

impl Bench {
    /// An agent whose FORWARDs leave by `forward_path` (`--forward-path`).
    fn start(forward_path: &str) -> Result<Self> {
        let agent_bin = sibling("migr-agent")?;
        let peer = NetNs::new("bpeer")?;
        let mut node = NetNs::new("bnode")?;
        let dst = NetNs::new("bdst")?;
        veth_pair(&peer, "bc-p", "10.53.0.1/24", &node, "bc-n", "10.53.0.2/24")?;
        veth_pair(&node, "bd-n", "10.54.0.1/24", &dst, "bd-d", "10.54.0.2/24")?;
        full_checksums(&peer, "bc-p")?;
        let tag = format!("migr-bench-{}-{forward_path}", std::process::id());
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&tag);
        let state_dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&state_dir)?;
        let socket = state_dir.join("agent.sock");
        let mut agent = Command::new(&agent_bin);
        // The host's /etc/migr/agent.toml, if any, is not the benchmark's.
        agent
            .args(["run", "--config", "/dev/null"])
            .args(["--iface", "bc-n", "--mode", "native"])
            .arg("--socket")
            .arg(&socket)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            // Unpaced replays (the rate is what is measured); a short settle
            // time so that 1,000 transitions do not wait 250 ms each.
            .args(["--replay-rate", "0", "--settle-ms", "1"])
            .args(["--forward-path", forward_path])
            .env("RUST_LOG", "warn");
        let agent_pid = node.spawn(&mut agent)?;
        let ctl = Client::new(&socket, Duration::from_secs(5));
        let bench = Self {
            peer,
            node,
            dst,
            ctl,
            agent_pid,
            agent_bin,
            pin_dir,
            state_dir,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while bench.ctl.call("hello", Value::Null).is_err() {
            if Instant::now() > deadline {
                bail!("migr-agent did not serve on {}", bench.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let next_hop = mac_of(&bench.dst, "bd-d")?;
        bench.call(
            "service.add",
            json!({
                "id": 1,
                "name": SERVICE,
                "rules": [{"proto": "udp", "addr": format!("{}:{PORT}", ip(NODE_IP))}],
                "forward": {
                    "addr": DST_ADDR,
                    "iface": "bd-n",
                    "next_hop_mac": migr_control::api::format_mac(next_hop),
                },
                "park_limit": {"frames": 1_000_000, "bytes": 1u64 << 31},
                "replay_rate": 0,
            }),
        )?;
        Ok(bench)
    }

    fn call(&self, op: &str, args: Value) -> Result<Value> {
        self.ctl
            .call(op, args)
            .map_err(|e| anyhow::anyhow!("{op}: {}", e.message))
    }

    fn phase(&self, phase: &str) -> Result<Value> {
        self.call("phase", json!({"service": SERVICE, "phase": phase}))
    }

    fn show(&self) -> Result<Value> {
        self.call("service.show", json!({"service": SERVICE}))
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let svc = self.show()?;
            if done(&svc) {
                return Ok(svc);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}: {svc}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn ip(a: [u8; 4]) -> std::net::Ipv4Addr {
    a.into()
}

fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, p| &v[*p])
        .as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in the agent's answer: {v}"))
}

/// One probe frame through the bench's copy of the program: was it parked?
fn parked(dp: &mut Datapath, frame: &[u8]) -> Result<bool> {
    Ok(dp.test_run(MAIN_PROGRAM, frame)?.action == XdpAction::Drop)
}

/// Probes until the frame is parked (`want` true) or not; returns that moment.
fn probe_until(dp: &mut Datapath, frame: &[u8], want: bool) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if parked(dp, frame)? == want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "the probe was never {}",
                if want { "parked" } else { "let through" }
            );
        }
    }
}

/// Waits until the abort's replay is over and the service passes again. (No
/// probing meanwhile: a probe parked during the replay would extend it.)
fn passing_again(bench: &Bench, dp: &mut Datapath, frame: &[u8]) -> Result<()> {
    bench.wait_until("the service to pass again", |s| s["datapath"] == "pass")?;
    if parked(dp, frame)? {
        bail!("the service says pass, but the probe was parked");
    }
    Ok(())
}

fn probe_frame(port: u16) -> Vec<u8> {
    FrameBuilder::udp_v4(PEER_IP, 40000, NODE_IP, port)
        .payload(b"probe")
        .build()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The control cases, the replay cases, or both.
pub fn cases(quick: bool, control: bool, replay: bool, cases: &mut Vec<Case>) -> Result<()> {
    // The agent's default: on veths FORWARDs leave through TC.
    let bench = Bench::start("auto")?;
    let mut dp = Datapath::load_pinned(&DatapathConfig::default(), &bench.pin_dir)
        .context("loading a probe copy of the program over the agent's pinned maps")?;
    if control {
        let transitions = if quick { 200 } else { 1000 };
        let hooks = if quick { 30 } else { 200 };
        // The probes run in the node's namespace (their ingress device is its lo).
        bench
            .node
            .run(|| control_latency(&bench, &mut dp, transitions, hooks, cases))??;
    }
    if replay {
        let frames = if quick { 2000 } else { 20_000 };
        // A second agent forwards through XDP, as on a NIC (where `auto`
        // chooses it); here that works because the destination's end of the
        // veth runs an XDP program.
        let xdp = Bench::start("xdp")?;
        replay_throughput(&bench, &mut dp, &xdp, frames, cases)?;
    }
    Ok(())
}

fn control_latency(
    bench: &Bench,
    dp: &mut Datapath,
    transitions: usize,
    hooks: usize,
    cases: &mut Vec<Case>,
) -> Result<()> {
    let frame = probe_frame(PORT);
    // Through the agent: `phase freeze` sent -> the first probe that is parked.
    let mut via_agent = Vec::with_capacity(transitions);
    let mut after_return = Vec::with_capacity(transitions);
    for _ in 0..transitions {
        passing_again(bench, dp, &frame)?;
        let sent = Instant::now();
        bench.phase("freeze")?;
        let returned = Instant::now();
        let parked = probe_until(dp, &frame, true)?;
        via_agent.push(micros(parked - sent));
        after_return.push(micros(parked - returned));
        bench.phase("abort")?;
    }
    // By hand: the bench writes a PARK entry for a service the agent does not
    // know into the same SERVICES map, then probes: the floor of any control path.
    let park = service(Action::Park, 0, Default::default());
    let key = listener_key(v4(NODE_IP), BASELINE_PORT, 17, FAMILY_V4);
    dp.set_listener(
        &key,
        &ListenerEntry {
            service_id: BASELINE_ID,
            ..Default::default()
        },
    )?;
    let baseline_frame = probe_frame(BASELINE_PORT);
    let mut by_hand = Vec::with_capacity(transitions);
    for _ in 0..transitions {
        let sent = Instant::now();
        dp.set_service(BASELINE_ID, &park)?;
        let parked = probe_until(dp, &baseline_frame, true)?;
        by_hand.push(micros(parked - sent));
        dp.set_service(BASELINE_ID, &Default::default())?;
    }
    dp.remove_listener(&key)?;

    let detail = format!(
        "{transitions} freeze/abort cycles; a control-socket request like migrctl's, then BPF_PROG_TEST_RUN probes over the agent's pinned maps; baseline: the bench writes the SERVICES entry itself"
    );
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        cases.push(Case {
            group: "control",
            name: format!("phase freeze request -> first packet parked, {name}"),
            value: percentile(via_agent.clone(), p),
            baseline: percentile(by_hand.clone(), p),
            unit: "us",
            lower_is_better: true,
            detail: detail.clone(),
            target: None,
        });
    }
    cases.push(Case {
        group: "control",
        name: "phase freeze answered -> first packet parked, p99".into(),
        value: percentile(after_return, 0.99),
        baseline: percentile(by_hand.clone(), 0.99),
        unit: "us",
        lower_is_better: true,
        detail: "the agent answers after the map update: a probe right after the answer is parked"
            .into(),
        target: None,
    });

    // Through `migrctl criu-hook` (CRIU's --action-script): process start -> first parked probe.
    let ctl_bin = sibling("migrctl")?;
    let mut hook = Vec::with_capacity(hooks);
    let mut bare = Vec::with_capacity(hooks);
    for _ in 0..hooks {
        passing_again(bench, dp, &frame)?;
        let started = Instant::now();
        let out = Command::new(&ctl_bin)
            .arg("--socket")
            .arg(&bench.socket)
            .args(["criu-hook", "--service", SERVICE, "--strict"])
            .env("CRTOOLS_SCRIPT_ACTION", "pre-dump")
            .output()?;
        if !out.status.success() {
            bail!("criu-hook pre-dump failed: {out:?}");
        }
        let parked = probe_until(dp, &frame, true)?;
        hook.push(micros(parked - started));
        bench.phase("abort")?;
        // The baseline: the same binary started and finished without contacting anyone.
        let started = Instant::now();
        Command::new(&ctl_bin).arg("--version").output()?;
        bare.push(micros(started.elapsed()));
    }
    hook_wall_time(bench, &ctl_bin, hooks, cases)?;
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        cases.push(Case {
            group: "control",
            name: format!("criu-hook pre-dump start -> first packet parked, {name}"),
            value: percentile(hook.clone(), p),
            baseline: percentile(bare.clone(), p),
            unit: "us",
            lower_is_better: true,
            detail: format!(
                "{hooks} runs of `migrctl criu-hook` as CRIU runs it; baseline: `migrctl --version` start to exit"
            ),
            target: None,
        });
    }
    Ok(())
}

/// What `migrctl criu-hook` adds to a CRIU step: its wall time (start to
/// exit, which CRIU waits for) for a phase action and for an action that is
/// no phase boundary, against the same hook on a node where no agent runs
/// (the "without migr" arm of the testbed runs exactly that).
fn hook_wall_time(bench: &Bench, ctl_bin: &Path, runs: usize, cases: &mut Vec<Case>) -> Result<()> {
    let run = |socket: &Path, action: &str| -> Result<f64> {
        let started = Instant::now();
        let out = Command::new(ctl_bin)
            .arg("--socket")
            .arg(socket)
            .args(["criu-hook", "--service", SERVICE])
            .env("CRTOOLS_SCRIPT_ACTION", action)
            .output()?;
        let took = micros(started.elapsed());
        if !out.status.success() {
            bail!("criu-hook {action} failed: {out:?}");
        }
        Ok(took)
    };
    let nowhere = bench.socket.with_extension("absent");
    let (mut phase, mut other, mut idle) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        // Interleaved, so that the machine's load hits all three alike.
        phase.push(run(&bench.socket, "pre-dump")?);
        bench.phase("abort")?;
        other.push(run(&bench.socket, "post-dump")?);
        idle.push(run(&nowhere, "pre-dump")?);
    }
    for (samples, what) in [
        (phase, "phase action (pre-dump)"),
        (other, "other action (post-dump)"),
    ] {
        for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
            cases.push(Case {
                group: "control",
                name: format!("criu-hook wall time, {what}, {name}"),
                value: percentile(samples.clone(), p),
                baseline: percentile(idle.clone(), p),
                unit: "us",
                lower_is_better: true,
                detail: format!(
                    "{runs} runs each, interleaved; baseline: the same `migrctl criu-hook` where no agent runs (the testbed's steering-off arm)"
                ),
                target: None,
            });
        }
    }
    Ok(())
}

/// Sends `n` datagrams of `PAYLOAD` bytes from `from` to `to` with sendmmsg, 64 at a time;
/// returns the time it took.
fn sendmmsg_all(from: &UdpSocket, to: std::net::SocketAddrV4, n: usize) -> Result<Duration> {
    let payload = vec![0x5au8; PAYLOAD];
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: zeroed mmsghdr is valid; the pointers set below outlive the calls.
    let mut msgs: Vec<libc::mmsghdr> = (0..64).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_name = &addr as *const _ as *mut libc::c_void;
        m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let batch = (n - sent).min(msgs.len());
        // SAFETY: `msgs[..batch]` are initialised mmsghdrs on our socket.
        let rc = unsafe { libc::sendmmsg(from.as_raw_fd(), msgs.as_mut_ptr(), batch as u32, 0) };
        if rc < 0 {
            bail!("sendmmsg: {}", std::io::Error::last_os_error());
        }
        sent += rc as usize;
    }
    Ok(started.elapsed())
}

/// A socket that counts what arrives, with a buffer that takes a whole burst.
struct Sink {
    socket: UdpSocket,
}

impl Sink {
    fn bind(ns: &NetNs, addr: &str) -> Result<Self> {
        let socket = ns.run(|| UdpSocket::bind(addr))??;
        let bytes: libc::c_int = 256 << 20;
        // SAFETY: setsockopt with an int on our own socket (root may exceed rmem_max).
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        socket.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(Self { socket })
    }

    /// Runs `work` while a thread reads what arrives, as a service reads
    /// its socket: both arms of a replay case deliver to a waiting reader.
    /// Returns the datagrams read (until `n` arrived or none came for
    /// 300 ms) and what `work` returned.
    fn reading<T>(&self, n: usize, work: impl FnOnce() -> Result<T>) -> Result<(usize, T)> {
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| self.count(n));
            let done = work();
            let got = reader
                .join()
                .map_err(|_| anyhow::anyhow!("the reading thread panicked"))?;
            Ok((got, done?))
        })
    }

    /// Reads until `n` datagrams arrived or none came for 300 ms.
    fn count(&self, n: usize) -> usize {
        let mut buf = vec![0u8; 2048];
        let mut got = 0;
        while got < n && self.socket.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    }
}

/// Parks `n` real datagrams sent by the peer (in bursts the ring takes).
fn park_from_peer(bench: &Bench, n: usize) -> Result<()> {
    let stored_before = num(&bench.show()?, &["parked", "stored_frames"]);
    let sender = bench.peer.run(|| UdpSocket::bind("10.53.0.1:0"))??;
    let to = std::net::SocketAddrV4::new(ip(NODE_IP), PORT);
    let mut sent = 0;
    while sent < n {
        let burst = (n - sent).min(2000);
        sendmmsg_all(&sender, to, burst)?;
        sent += burst;
        let want = stored_before + sent as u64;
        bench.wait_until("parked frames to be stored", |s| {
            num(s, &["parked", "stored_frames"]) >= want
        })?;
    }
    Ok(())
}

/// The rates of the rounds of one replay case and of its baseline.
#[derive(Default)]
struct Rates {
    replay: Vec<f64>,
    sendmmsg: Vec<f64>,
}

/// Replays locally and to the destination through both agents' forward
/// paths, a round of each case in turn.
fn replay_throughput(
    tc: &Bench,
    dp: &mut Datapath,
    xdp: &Bench,
    frames: usize,
    cases: &mut Vec<Case>,
) -> Result<()> {
    // A redirect into a veth delivers only if the peer has an XDP program.
    // The TC path's destination has one too: it stands for the new node,
    // whose interface runs migr. (Without it, veth does not copy each skb
    // into its page pool; the sendmmsg baseline gained 219k -> 270k frames/s
    // from that, the replay nothing: docs/benchmarks.md, round 6.)
    for bench in [tc, xdp] {
        bench.dst.run(|| {
            dp.attach(
                PASS_PROGRAM,
                "bd-d",
                migr_user::datapath::AttachMode::Native,
            )
        })??;
    }
    let rounds = 3;
    let (mut local, mut via_tc, mut via_xdp) = Default::default();
    let tc_sinks = Sinks::bind(tc)?;
    let xdp_sinks = Sinks::bind(xdp)?;
    for _ in 0..rounds {
        local_round(tc, &tc_sinks, frames, &mut local)?;
        forward_round(tc, &tc_sinks, frames, &mut via_tc)?;
        forward_round(xdp, &xdp_sinks, frames, &mut via_xdp)?;
    }
    let to_destination = "sendmmsg to the destination socket from the node";
    for (name, rates, base_detail) in [
        (
            "replay parked frames locally (abort)",
            local,
            "sendmmsg into the same socket from the node",
        ),
        (
            "replay parked frames to the destination (restored), TC path",
            via_tc,
            to_destination,
        ),
        (
            "replay parked frames to the destination (restored), XDP path",
            via_xdp,
            to_destination,
        ),
    ] {
        let Rates { replay, sendmmsg } = rates;
        cases.push(Case {
            group: "replay",
            name: name.into(),
            value: median(replay),
            baseline: median(sendmmsg),
            unit: "frames/s",
            lower_is_better: false,
            detail: format!(
                "{frames} frames of 1400 B parked from real veth traffic, unpaced replay as the agent measures it, median of {rounds}; the agent takes the TC path on veths and the XDP path on NICs (forced here: the destination's veth end runs XDP); baseline: {base_detail}"
            ),
            target: Some(Target::RatioAtLeast(2.0)),
        });
    }
    Ok(())
}

/// The receiving sockets of one bench: the node's and the destination's.
struct Sinks {
    node: Sink,
    dst: Sink,
}

impl Sinks {
    fn bind(bench: &Bench) -> Result<Self> {
        Ok(Self {
            node: Sink::bind(&bench.node, &format!("{}:{PORT}", ip(NODE_IP)))?,
            dst: Sink::bind(&bench.dst, DST_ADDR)?,
        })
    }
}

/// A local replay (abort: into the node's stack), then its baseline: the
/// same datagrams sent with sendmmsg into the same socket.
fn local_round(bench: &Bench, sinks: &Sinks, frames: usize, rates: &mut Rates) -> Result<()> {
    let to = std::net::SocketAddrV4::new(ip(NODE_IP), PORT);
    let baseline = Baseline {
        from: "10.53.0.2:0",
        to,
    };
    replay_round(
        bench,
        &sinks.node,
        "abort",
        || Ok(()),
        baseline,
        frames,
        rates,
    )
}

/// A replay to the destination (source `restored`: the FORWARD rewrite),
/// then its baseline: sendmmsg from the node to the destination's socket
/// once the source is `done`.
fn forward_round(bench: &Bench, sinks: &Sinks, frames: usize, rates: &mut Rates) -> Result<()> {
    let done = || {
        bench.call(
            "phase",
            json!({"service": SERVICE, "phase": "done", "drain_ms": 0}),
        )?;
        bench.wait_until("the drain to end", |s| s["state"] == "done")?;
        Ok(())
    };
    let baseline = Baseline {
        from: "10.54.0.1:0",
        to: DST_ADDR.parse()?,
    };
    replay_round(bench, &sinks.dst, "restored", done, baseline, frames, rates)
}

/// Where a round's sendmmsg baseline sends from (in the node) and to.
struct Baseline {
    from: &'static str,
    to: std::net::SocketAddrV4,
}

/// Parks `frames` from the peer, replays them with `phase` into `sink`,
/// runs `then`, and sends the baseline's datagrams into the same sink.
fn replay_round(
    bench: &Bench,
    sink: &Sink,
    phase: &str,
    then: impl FnOnce() -> Result<()>,
    baseline: Baseline,
    frames: usize,
    rates: &mut Rates,
) -> Result<()> {
    bench.phase("freeze")?;
    park_from_peer(bench, frames)?;
    let replays = num(&bench.show()?, &["replay", "replays"]);
    let (got, svc) = sink.reading(frames, || {
        bench.phase(phase)?;
        bench.wait_until("the replay", |s| replay_over(s, replays))
    })?;
    check_delivered(phase, got, frames, &svc)?;
    rates.replay.push(replay_rate(&svc)?);
    then()?;
    let sender = bench.node.run(|| UdpSocket::bind(baseline.from))??;
    let (got, took) = sink.reading(frames, || sendmmsg_all(&sender, baseline.to, frames))?;
    if got != frames {
        bail!(
            "sendmmsg baseline to {}: {got} of {frames} datagrams arrived",
            baseline.to
        );
    }
    rates.sendmmsg.push(frames as f64 / took.as_secs_f64());
    Ok(())
}

/// Has the replay after the `before`th (counted when it starts) drained
/// its backlog?
fn replay_over(svc: &Value, before: u64) -> bool {
    num(svc, &["replay", "replays"]) > before && svc["replay_stage"] != "backlog"
}

/// The rate of the service's last replay, as the agent measured it.
fn replay_rate(svc: &Value) -> Result<f64> {
    svc["replay"]["last_rate_fps"]
        .as_f64()
        .filter(|rate| *rate > 0.0)
        .with_context(|| format!("the agent reported no replay rate: {svc}"))
}

/// A replay delivered every frame, and the agent counted no failure.
fn check_delivered(what: &str, got: usize, frames: usize, svc: &Value) -> Result<()> {
    let failed = num(svc, &["replay", "failed_frames"]);
    if got != frames || failed != 0 {
        bail!("{what}: {got} of {frames} frames arrived, {failed} failed to replay: {svc}");
    }
    Ok(())
}
