//! FORWARD and replay on the topology a new user has: a router between the
//! client and the nodes, every veth with its default offloads (a local
//! sender leaves UDP checksums to offload, GRO is off) and no XDP program
//! anywhere but the one migr attaches. Nothing here is tuned for migr: what
//! migr counts as `forward` must arrive, and every parked frame must reach
//! its socket when it is replayed.
//!
//! ```text
//!   cli --v-c / r-c-- rtr --r-s / s0-- src (migr-agent on s0)
//!   10.42.1.1   10.42.1.2   10.42.2.1  10.42.2.2
//!                     rtr --r-d / d0-- dst
//!                   10.42.3.1  10.42.3.2
//!   src --s-d / d-s-- dst   (a direct link: the way of a same-IP move)
//!   10.42.4.1  10.42.4.2
//! ```
//! The router sends the service address 10.42.9.9 to src (where it was);
//! dst holds it too (where it is now).

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use migr_testkit::{
    NetNs,
    agent_harness::{Agent, force_rcvbuf, num, verdict},
    require_privileges, veth_pair,
};

const SRC_IP: &str = "10.42.2.2";
const DST_IP: &str = "10.42.3.2";
const MOVED_IP: &str = "10.42.9.9";
const PORT: u16 = 7300;

/// Fields drop in order: the agent first, then the namespaces.
struct Lab {
    agent: Agent,
    client: NetNs,
    router: NetNs,
    src: NetNs,
    dst: NetNs,
}

impl Lab {
    fn new() -> Self {
        Self::with_agent(&[])
    }

    /// The lab, its agent started with `agent_args` too.
    fn with_agent(agent_args: &[&str]) -> Self {
        require_privileges();
        let client = NetNs::new("dcli").unwrap();
        let router = NetNs::new("drtr").unwrap();
        let src = NetNs::new("dsrc").unwrap();
        let dst = NetNs::new("ddst").unwrap();
        veth_pair(
            &client,
            "v-c",
            "10.42.1.1/24",
            &router,
            "r-c",
            "10.42.1.2/24",
        )
        .unwrap();
        veth_pair(&router, "r-s", "10.42.2.1/24", &src, "s0", "10.42.2.2/24").unwrap();
        veth_pair(&router, "r-d", "10.42.3.1/24", &dst, "d0", "10.42.3.2/24").unwrap();
        veth_pair(&src, "s-d", "10.42.4.1/24", &dst, "d-s", "10.42.4.2/24").unwrap();
        for (ns, via) in [
            (&client, "10.42.1.2"),
            (&src, "10.42.2.1"),
            (&dst, "10.42.3.1"),
        ] {
            ns.ip(&["route", "add", "default", "via", via]).unwrap();
        }
        router
            .ip(&["route", "add", &format!("{MOVED_IP}/32"), "via", SRC_IP])
            .unwrap();
        router
            .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .unwrap();
        dst.ip(&["addr", "add", &format!("{MOVED_IP}/32"), "dev", "lo"])
            .unwrap();
        // The router has met its neighbours, as on a running network (each
        // resolves the router, whose ARP layer notes the asker). Unresolved,
        // a replay's burst would wait in the router's queue for the
        // neighbour, which holds about 50 of a test run's page-sized frames
        // (`unres_qlen_bytes`) and drops the oldest beyond: a first contact,
        // not what these tests are about.
        for (ns, from, router_at) in [
            (&client, "10.42.1.1:0", "10.42.1.2:9"),
            (&src, "10.42.2.2:0", "10.42.2.1:9"),
            (&dst, "10.42.3.2:0", "10.42.3.1:9"),
        ] {
            Self::socket(ns, from).send_to(b"hello", router_at).unwrap();
        }
        // The defaults, said out loud: GRO off on the router's veths (no
        // NAPI that would take XDP frames), checksum offload on everywhere.
        for dev in ["r-c", "r-s", "r-d"] {
            router.exec(&["ethtool", "-K", dev, "gro", "off"]).unwrap();
        }
        let features = client.exec(&["ethtool", "-k", "v-c"]).unwrap();
        assert!(
            features.contains("tx-checksumming: on"),
            "the client's veth offloads checksums (the default): {features}"
        );
        let mut agent = Agent::new("delivery", "s0", agent_args);
        agent.start(&src);
        Self {
            agent,
            client,
            router,
            src,
            dst,
        }
    }

    fn socket(ns: &NetNs, at: &str) -> UdpSocket {
        let s = ns
            .run(|| UdpSocket::bind(at))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind {at}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    }

    fn client_socket(&self) -> UdpSocket {
        Self::socket(&self.client, "10.42.1.1:0")
    }

    /// The router's IP layer: datagrams it forwarded (`IpForwDatagrams`).
    fn router_forwarded(&self) -> u64 {
        let text = self.router.exec(&["cat", "/proc/net/snmp"]).unwrap();
        let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let i = names
            .split_whitespace()
            .position(|n| n == "ForwDatagrams")
            .expect("ForwDatagrams in /proc/net/snmp");
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    }
}

/// `migrctl service add` of a UDP service at `at` (id 1), with `forward`.
fn add_service(agent: &Agent, name: &str, at: &str, forward: &[&str]) {
    let mut args = vec!["service", "add", "--id", "1", "--name", name, "--udp", at];
    args.extend_from_slice(forward);
    agent.ok(&args);
}

/// The address-changing forward target: DST_IP through the router.
fn via_router(to: &str) -> [&str; 6] {
    [
        "--forward-to",
        to,
        "--forward-iface",
        "s0",
        "--next-hop",
        "10.42.2.1",
    ]
}

/// Sends `n` datagrams 200 ms apart to `to`; each must arrive at `receiver`
/// within 5 ms. Returns the delays.
fn stragglers(from: &UdpSocket, to: &str, receiver: &UdpSocket, n: usize) -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut buf = [0u8; 256];
    for i in 0..n {
        let payload = format!("straggler {i}");
        let sent = Instant::now();
        from.send_to(payload.as_bytes(), to).unwrap();
        let got = receiver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("straggler {i} to {to} never arrived: {e}"));
        delays.push(sent.elapsed());
        assert_eq!(&buf[..got], payload.as_bytes(), "straggler {i}");
        std::thread::sleep(Duration::from_millis(200));
    }
    delays
}

fn assert_forwarded(agent: &Agent, service: &str, n: u64, delays: &[Duration]) {
    println!("{service}: straggler delays {delays:?}");
    for (i, d) in delays.iter().enumerate() {
        assert!(
            *d <= Duration::from_millis(5),
            "straggler {i} took {d:?} (more than 5 ms)"
        );
    }
    let svc = agent.service(service);
    assert_eq!(
        svc["forward_path"], "tc",
        "a veth egress takes the TC path: {svc}"
    );
    assert_eq!(verdict(&svc, "forward"), n, "forward counts what arrived");
    assert_eq!(verdict(&svc, "forward_failed"), 0);
}

/// The source's phases up to "restored": it forwards from then on.
fn move_away(agent: &Agent, service: &str) {
    agent.phase(service, "prepare");
    agent.phase(service, "freeze");
    agent.phase(service, "restored");
}

/// Service `moved` (SRC_IP:PORT, address-changing to DST_IP:PORT through
/// the router) added and moved; returns the socket at its new address.
fn moved_through_the_router(lab: &Lab) -> UdpSocket {
    let to = format!("{DST_IP}:{PORT}");
    add_service(
        &lab.agent,
        "moved",
        &format!("{SRC_IP}:{PORT}"),
        &via_router(&to),
    );
    let receiver = Lab::socket(&lab.dst, &to);
    move_away(&lab.agent, "moved");
    receiver
}

#[test]
fn stragglers_reach_the_new_address_through_a_plain_router() {
    let lab = Lab::new();
    let receiver = moved_through_the_router(&lab);
    let before = lab.router_forwarded();
    let client = lab.client_socket();
    let delays = stragglers(&client, &format!("{SRC_IP}:{PORT}"), &receiver, 5);
    assert_forwarded(&lab.agent, "moved", 5, &delays);
    // Each went through the router twice: client -> src, src -> dst.
    assert_eq!(lab.router_forwarded() - before, 10);
}

#[test]
fn stragglers_reach_the_same_ip_at_its_new_place() {
    let lab = Lab::new();
    let at = format!("{MOVED_IP}:{PORT}");
    add_service(
        &lab.agent,
        "same-ip",
        &at,
        &[
            "--forward-mode",
            "same-ip",
            "--forward-iface",
            "s-d",
            "--next-hop",
            "10.42.4.2",
        ],
    );
    let receiver = Lab::socket(&lab.dst, &at);
    move_away(&lab.agent, "same-ip");
    let client = lab.client_socket();
    let delays = stragglers(&client, &at, &receiver, 5);
    assert_forwarded(&lab.agent, "same-ip", 5, &delays);
}

/// The trap the TC path avoids, kept in view: with `--forward-path xdp`
/// the frames leave with XDP_TX into a veth whose peer runs no XDP
/// program, are counted `forward`, and never arrive. If a kernel starts
/// delivering them, this fails, and `auto` may pick XDP on veths again.
#[test]
fn xdp_tx_on_a_plain_veth_never_arrives() {
    let lab = Lab::with_agent(&["--forward-path", "xdp"]);
    let receiver = moved_through_the_router(&lab);
    let client = lab.client_socket();
    for i in 0..5 {
        client
            .send_to(format!("lost {i}").as_bytes(), format!("{SRC_IP}:{PORT}"))
            .unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(
        receiver.recv(&mut buf).is_err(),
        "an XDP_TX'd frame reached the destination through a plain veth"
    );
    let svc = lab.agent.service("moved");
    assert_eq!(svc["forward_path"], "xdp");
    assert_eq!(verdict(&svc, "forward"), 5, "counted as sent all the same");
}

/// Freezes `svc`, then parks `n` frames from a client whose veth offloads
/// checksums, so that they carry partial checksums.
fn freeze_and_park(lab: &Lab, service_at: &str, n: usize) {
    lab.agent.phase("svc", "prepare");
    lab.agent.phase("svc", "freeze");
    let client = lab.client_socket();
    for i in 0..n {
        client
            .send_to(format!("parked {i}").as_bytes(), service_at)
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while num(&lab.agent.service("svc"), &["parked", "stored_frames"]) < n as u64 {
        assert!(Instant::now() < deadline, "the frames were not parked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn receive_all(receiver: &UdpSocket, n: usize) {
    let mut buf = [0u8; 256];
    for i in 0..n {
        let got = receiver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("replayed frame {i} of {n} never reached the socket: {e}"));
        assert_eq!(&buf[..got], format!("parked {i}").as_bytes());
    }
}

fn assert_completed(agent: &Agent, n: u64) {
    let svc = agent.service("svc");
    assert_eq!(
        num(&svc, &["parked", "checksums_completed"]),
        n,
        "every parked frame carried a partial checksum: {svc}"
    );
    assert_eq!(num(&svc, &["parked", "checksums_bad"]), 0);
    assert_eq!(num(&svc, &["replay", "replayed_frames"]), n);
}

#[test]
fn frames_with_offloaded_checksums_are_replayed_to_the_local_socket() {
    let lab = Lab::new();
    let at = format!("{SRC_IP}:{PORT}");
    add_service(&lab.agent, "svc", &at, &[]);
    let receiver = Lab::socket(&lab.src, &at);
    freeze_and_park(&lab, &at, 20);
    lab.agent.phase("svc", "abort");
    receive_all(&receiver, 20);
    assert_completed(&lab.agent, 20);
}

#[test]
fn frames_with_offloaded_checksums_are_replayed_to_the_destination() {
    let lab = Lab::new();
    let (at, to) = (format!("{SRC_IP}:{PORT}"), format!("{DST_IP}:{PORT}"));
    add_service(&lab.agent, "svc", &at, &via_router(&to));
    let receiver = Lab::socket(&lab.dst, &to);
    freeze_and_park(&lab, &at, 20);
    lab.agent.phase("svc", "restored");
    receive_all(&receiver, 20);
    assert_completed(&lab.agent, 20);
    assert_eq!(verdict(&lab.agent.service("svc"), "forward"), 20);
}

/// In skb (generic) mode a replayed frame that is passed (into the stack, or
/// to `migr_tc` for a FORWARD) becomes an skb received on the interface, and
/// the hook runs on it again. While fresh frames keep coming the service
/// holds them behind the backlog, and the second sight of a replayed frame
/// must not be parked again (it was, in a loop, before replayed frames carried
/// a tag) nor forwarded twice. Every frame arrives once, in the order sent.
fn skb_mode_replay_delivers_each_frame_once(phase: &str, forwarded: bool) {
    let lab = Lab::with_agent(&["--mode", "skb"]);
    let at = format!("{SRC_IP}:{PORT}");
    let (to, receiver_ns) = match forwarded {
        true => (format!("{DST_IP}:{PORT}"), &lab.dst),
        false => (at.clone(), &lab.src),
    };
    let forward = if forwarded {
        via_router(&to).to_vec()
    } else {
        vec![]
    };
    add_service(&lab.agent, "svc", &at, &forward);
    let receiver = Lab::socket(receiver_ns, &to);
    // Read only at the end: room for every frame, so that none is lost here.
    force_rcvbuf(&receiver, 8 << 20);
    const PARKED: usize = 50;
    const FRESH: usize = 300;
    freeze_and_park(&lab, &at, PARKED);
    let client = lab.client_socket();
    let sender = std::thread::spawn(move || {
        for i in 0..FRESH {
            client
                .send_to(format!("fresh {i}").as_bytes(), &at)
                .unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    lab.agent.phase("svc", phase);
    sender.join().unwrap();
    let expected: Vec<String> = (0..PARKED)
        .map(|i| format!("parked {i}"))
        .chain((0..FRESH).map(|i| format!("fresh {i}")))
        .collect();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = receiver.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        assert!(
            got.len() <= 2 * expected.len(),
            "frames keep coming: a loop"
        );
    }
    let svc = lab.agent.service("svc");
    let stats = lab.agent.json(&["stats"]);
    assert_eq!(
        got, expected,
        "each frame once, in the order sent; {svc}; {stats}"
    );
    let replayed = num(&svc, &["replay", "replayed_frames"]);
    assert_eq!(replayed, num(&svc, &["parked", "stored_frames"]), "{svc}");
    assert!(replayed >= PARKED as u64, "{svc}");
    assert_eq!(
        num(&stats, &["reasons", "replay_reentered"]),
        replayed,
        "every replayed frame met the program a second time, tagged: {stats}"
    );
    let verdict_of_each = if forwarded { "forward" } else { "pass" };
    assert_eq!(
        verdict(&svc, verdict_of_each),
        expected.len() as u64,
        "one {verdict_of_each} per frame, whether it was parked first or not: {svc}"
    );
}

#[test]
fn skb_mode_replays_reach_the_local_socket_once() {
    skb_mode_replay_delivers_each_frame_once("abort", false);
}

#[test]
fn skb_mode_replays_reach_the_destination_once() {
    skb_mode_replay_delivers_each_frame_once("restored", true);
}
