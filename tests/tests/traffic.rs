//! The datapath on real traffic in network namespaces: PARK holds packets,
//! both FORWARD modes deliver to the service's new place, QUIC packets made by
//! quinn-proto classify by server id, and kernel MPTCP connections teach the
//! datapath their tokens.
//!
//! Topology (each test builds its own):
//!   client --v-c / v-nc-- node (XDP classifier on v-nc) --v-nd / v-d-- dest
//!   10.30.1.1          10.30.1.2          10.30.2.1          10.30.2.2

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::FromRawFd as _,
    sync::Arc,
    time::{Duration, Instant},
};

use migr_common::{
    cid::CidConfig,
    maps::{
        Action, EventKind, FAMILY_V4, ForwardMode, ForwardTarget, LISTENER_QUIC,
        LISTENER_QUIC_GREASE, ListenerEntry, ListenerKey, NO_SERVICE, Reason, SERVICE_ACTIVE,
        SERVICE_MPTCP, ServiceEntry, Verdict,
    },
};
use migr_testkit::{
    NetNs,
    netns::{full_checksums, ifindex_of, mac_of},
    require_privileges, veth_pair,
};
use migr_user::{
    datapath::{AttachMode, Datapath, MAIN_PROGRAM, PASS_PROGRAM},
    mptcp::mptcp_token,
};

const NODE_IP: [u8; 4] = [10, 30, 1, 2];
const DEST_IP: [u8; 4] = [10, 30, 2, 2];
/// The COAT case: the service's own address, which moves from node to dest.
const SERVICE_IP: [u8; 4] = [10, 30, 9, 9];
const SVC: u32 = 1;

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

struct Topology {
    client: NetNs,
    node: NetNs,
    dest: NetNs,
    dp: Datapath,
}

impl Topology {
    fn new() -> Self {
        require_privileges();
        let client = NetNs::new("cli").unwrap();
        let node = NetNs::new("node").unwrap();
        let dest = NetNs::new("dst").unwrap();
        veth_pair(
            &client,
            "v-c",
            "10.30.1.1/24",
            &node,
            "v-nc",
            "10.30.1.2/24",
        )
        .unwrap();
        veth_pair(&node, "v-nd", "10.30.2.1/24", &dest, "v-d", "10.30.2.2/24").unwrap();
        full_checksums(&client, "v-c").unwrap();
        client
            .ip(&["route", "add", "10.30.9.9/32", "via", "10.30.1.2"])
            .unwrap();
        client
            .ip(&["route", "add", "10.30.2.0/24", "via", "10.30.1.2"])
            .unwrap();
        dest.ip(&["route", "add", "10.30.1.0/24", "via", "10.30.2.1"])
            .unwrap();
        dest.ip(&["addr", "add", "10.30.9.9/32", "dev", "v-d"])
            .unwrap();
        let mut dp = Datapath::load().unwrap();
        node.run(|| dp.attach(MAIN_PROGRAM, "v-nc", AttachMode::Native))
            .unwrap()
            .expect("attach the classifier on the node");
        // Frames redirected into v-nd only arrive if its peer runs XDP.
        dest.run(|| dp.attach(PASS_PROGRAM, "v-d", AttachMode::Native))
            .unwrap()
            .expect("attach the pass program on the destination");
        Self {
            client,
            node,
            dest,
            dp,
        }
    }

    fn listen(&mut self, ip: [u8; 4], port: u16, proto: u8, entry: ListenerEntry) {
        let key = ListenerKey {
            addr: v4(ip),
            port,
            proto,
            family: FAMILY_V4,
        };
        self.dp.set_listener(&key, &entry).unwrap();
    }

    fn service(&mut self, action: Action, flags: u32, forward: ForwardTarget) {
        let entry = ServiceEntry {
            action: action as u32,
            flags: SERVICE_ACTIVE | flags,
            forward,
            lease_until_ns: 0,
        };
        self.dp.set_service(SVC, &entry).unwrap();
    }

    /// The FORWARD target toward dest through v-nd, with the real MACs.
    fn toward_dest(&mut self, mode: ForwardMode, ip: [u8; 4], port: u16) -> ForwardTarget {
        let ifindex = ifindex_of(&self.node, "v-nd").unwrap();
        let dp = &mut self.dp;
        self.node
            .run(|| dp.set_forward_device(SVC, ifindex))
            .unwrap()
            .unwrap();
        ForwardTarget {
            addr: v4(ip),
            port,
            mode: mode as u8,
            family: FAMILY_V4,
            dst_mac: mac_of(&self.dest, "v-d").unwrap(),
            src_mac: mac_of(&self.node, "v-nd").unwrap(),
            ifindex,
            ..ForwardTarget::default()
        }
    }
}

fn bind_in(ns: &NetNs, at: SocketAddr) -> UdpSocket {
    ns.run(|| {
        let s = UdpSocket::bind(at).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    })
    .unwrap()
}

fn send_from(ns: &NetNs, to: SocketAddr, payloads: &[Vec<u8>]) {
    ns.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for p in payloads {
            s.send_to(p, to).unwrap();
        }
    })
    .unwrap();
}

fn recv_all(socket: &UdpSocket, expected: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < expected && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("datagram {i:03}").into_bytes())
        .collect()
}

#[test]
fn park_holds_packets_until_the_service_runs_again() {
    let mut t = Topology::new();
    t.listen(
        NODE_IP,
        7000,
        17,
        ListenerEntry {
            service_id: SVC,
            ..Default::default()
        },
    );
    t.service(Action::Park, 0, ForwardTarget::default());
    let receiver = bind_in(&t.node, addr(NODE_IP, 7000));
    let sent = payloads(20);
    send_from(&t.client, addr(NODE_IP, 7000), &sent);
    let mut buf = [0u8; 64];
    assert!(
        receiver.recv(&mut buf).is_err(),
        "nothing may arrive while parked"
    );
    let parked = t.dp.drain_parked().unwrap();
    assert_eq!(parked.len(), sent.len());
    for (record, payload) in parked.iter().zip(&sent) {
        assert!(record.frame.ends_with(payload), "parked in arrival order");
        assert_eq!(record.header.service_id, SVC);
    }
    let counters = t.dp.service_counters(SVC).unwrap();
    assert_eq!(counters.packets[Verdict::Park as usize], sent.len() as u64);
    // The service runs again: traffic flows.
    t.service(Action::Pass, 0, ForwardTarget::default());
    send_from(&t.client, addr(NODE_IP, 7000), &payloads(1));
    assert_eq!(recv_all(&receiver, 1).len(), 1);
}

#[test]
fn forward_with_a_new_address_reaches_the_destination() {
    let mut t = Topology::new();
    t.listen(
        NODE_IP,
        7001,
        17,
        ListenerEntry {
            service_id: SVC,
            ..Default::default()
        },
    );
    let target = t.toward_dest(ForwardMode::AddressChanging, DEST_IP, 7002);
    t.service(Action::Forward, 0, target);
    let receiver = bind_in(&t.dest, addr(DEST_IP, 7002));
    let sent = payloads(50);
    send_from(&t.client, addr(NODE_IP, 7001), &sent);
    let got = recv_all(&receiver, sent.len());
    assert_eq!(
        got, sent,
        "every datagram arrives at the new address, in order"
    );
    let counters = t.dp.service_counters(SVC).unwrap();
    assert_eq!(
        counters.packets[Verdict::Forward as usize],
        sent.len() as u64
    );
}

#[test]
fn forward_with_the_same_ip_reaches_the_moved_address() {
    let mut t = Topology::new();
    t.listen(
        SERVICE_IP,
        7003,
        17,
        ListenerEntry {
            service_id: SVC,
            ..Default::default()
        },
    );
    let target = t.toward_dest(ForwardMode::SameIp, [0; 4], 0);
    t.service(Action::Forward, 0, target);
    let receiver = bind_in(&t.dest, addr(SERVICE_IP, 7003));
    let sent = payloads(50);
    send_from(&t.client, addr(SERVICE_IP, 7003), &sent);
    assert_eq!(recv_all(&receiver, sent.len()), sent);
    let counters = t.dp.service_counters(SVC).unwrap();
    assert_eq!(
        counters.packets[Verdict::Forward as usize],
        sent.len() as u64
    );
}

#[test]
fn quinn_proto_packets_classify_by_server_id() {
    use migr_quic::{
        ClientMigrationConfig, RoutableCidGenerator, ServerEndpointConfig, Strategy,
        driver::{Client, Server},
        tls::{self, SelfSigned},
    };
    const LISTENER_SVC: u32 = 1;
    const ID_SVC: u32 = 2;
    const SERVER_ID: u32 = 0x4242;
    let mut t = Topology::new();
    let cid = CidConfig::new(8, 1, 2).unwrap();
    t.listen(
        NODE_IP,
        4433,
        17,
        ListenerEntry {
            service_id: LISTENER_SVC,
            flags: LISTENER_QUIC | LISTENER_QUIC_GREASE,
            cid,
        },
    );
    for svc in [LISTENER_SVC, ID_SVC] {
        let entry = ServiceEntry {
            action: Action::Pass as u32,
            flags: SERVICE_ACTIVE,
            forward: ForwardTarget::default(),
            lease_until_ns: 0,
        };
        t.dp.set_service(svc, &entry).unwrap();
    }
    t.dp.set_server_id(SERVER_ID, ID_SVC).unwrap();

    let cert = SelfSigned::generate(&["migr.test"]).unwrap();
    let config = ServerEndpointConfig {
        server_config: Arc::new(cert.server_config(Default::default()).unwrap()),
        cid_generator: RoutableCidGenerator::new(cid, SERVER_ID).unwrap(),
        pool: Vec::new(),
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let node = &t.node;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            node.run(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let server = Arc::new(Server::bind(config, addr(NODE_IP, 4433)).await.unwrap());
                    let echo = server.clone();
                    tokio::spawn(async move {
                        while let Some(conn) = echo.accept().await {
                            tokio::spawn(async move {
                                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                                    let request = recv.read_to_end(1 << 16).await.unwrap();
                                    send.write_all(&request).await.unwrap();
                                    send.finish().unwrap();
                                }
                            });
                        }
                    });
                    while stop_rx.try_recv().is_err() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
            })
            .unwrap();
        });
        let client_ns = &t.client;
        let cert_der = cert.cert_der.clone();
        client_ns
            .run(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let client_config = tls::client_config(cert_der, Default::default()).unwrap();
                    let client = tokio::time::timeout(
                        Duration::from_secs(10),
                        Client::connect(
                            client_config,
                            ClientMigrationConfig::new(Strategy::ProactiveExplicit),
                            "0.0.0.0:0".parse().unwrap(),
                            addr(NODE_IP, 4433),
                            "migr.test",
                        ),
                    )
                    .await
                    .expect("handshake in time")
                    .expect("handshake");
                    for i in 0..20u8 {
                        let (mut send, mut recv) = client.open_bi().await.unwrap();
                        send.write_all(&[i; 1024]).await.unwrap();
                        send.finish().unwrap();
                        let echoed = recv.read_to_end(1 << 16).await.unwrap();
                        assert_eq!(echoed, vec![i; 1024]);
                    }
                    client.close().await;
                });
            })
            .unwrap();
        stop_tx.send(()).unwrap();
    });

    let by_listener = t.dp.service_counters(LISTENER_SVC).unwrap().packets[Verdict::Pass as usize];
    let by_id = t.dp.service_counters(ID_SVC).unwrap().packets[Verdict::Pass as usize];
    let reasons = t.dp.reasons().unwrap();
    println!(
        "QUIC packets: {by_id} routed by server id, {by_listener} by listener (Initials); \
         unknown server id {}, malformed {}",
        reasons[Reason::QuicUnknownServerId as usize],
        reasons[Reason::QuicMalformed as usize]
    );
    // Each of the 20 requests travels in at least one 1-RTT packet.
    assert!(
        by_id >= 20,
        "the 1-RTT packets must route by server id (saw {by_id})"
    );
    assert!(by_listener >= 1, "the client's Initial routes by listener");
    assert_eq!(reasons[Reason::QuicUnknownServerId as usize], 0);
    assert_eq!(reasons[Reason::QuicMalformed as usize], 0);
}

/// An IPPROTO_MPTCP socket as a std TCP type.
fn mptcp_socket() -> std::os::fd::OwnedFd {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP) };
    assert!(
        fd >= 0,
        "IPPROTO_MPTCP socket: {}",
        std::io::Error::last_os_error()
    );
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

fn sockaddr_in(at: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4addr) = at else {
        panic!("IPv4 only: {at}")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: v4addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn mptcp_listener(at: SocketAddr) -> std::net::TcpListener {
    use std::os::fd::{AsRawFd as _, IntoRawFd as _};
    let fd = mptcp_socket();
    let one: libc::c_int = 1;
    let sa = sockaddr_in(at);
    // SAFETY: valid fd and sockaddr.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        assert_eq!(
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                size_of_val(&sa) as u32
            ),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::listen(fd.as_raw_fd(), 16), 0);
        std::net::TcpListener::from_raw_fd(fd.into_raw_fd())
    }
}

fn mptcp_connect(to: SocketAddr) -> std::net::TcpStream {
    use std::os::fd::{AsRawFd as _, IntoRawFd as _};
    let fd = mptcp_socket();
    let sa = sockaddr_in(to);
    // SAFETY: valid fd and sockaddr.
    unsafe {
        assert_eq!(
            libc::connect(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                size_of_val(&sa) as u32
            ),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        std::net::TcpStream::from_raw_fd(fd.into_raw_fd())
    }
}

/// The tokens of the MPTCP connections in `ns`, as the kernel reports them.
fn kernel_tokens(ns: &NetNs) -> Vec<u32> {
    let out = ns.exec(&["ss", "-Mni"]).unwrap();
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix("token:"))
        .filter_map(|t| u32::from_str_radix(t, 16).ok())
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kernel_mptcp_tokens_are_learned_and_joins_classify() {
    use std::io::{Read as _, Write as _};
    let mut t = Topology::new();
    // The second server address, announced later with ADD_ADDR; no listener owns it.
    t.node
        .ip(&["addr", "add", "10.30.1.3/24", "dev", "v-nc"])
        .unwrap();
    for ns in [&t.client, &t.node] {
        ns.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "4",
            "add_addr_accepted",
            "4",
        ])
        .unwrap();
    }
    t.listen(
        NODE_IP,
        7777,
        6,
        ListenerEntry {
            service_id: SVC,
            ..Default::default()
        },
    );
    t.service(Action::Pass, SERVICE_MPTCP, ForwardTarget::default());

    let listener = t
        .node
        .run(|| mptcp_listener(addr([0, 0, 0, 0], 7777)))
        .unwrap();
    let server = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..2 {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf).unwrap();
            conns.push(c);
        }
        // MP_JOIN SYNs are taken by the listening socket: keep it open.
        (listener, conns)
    });
    let mut clients: Vec<std::net::TcpStream> = (0..2)
        .map(|_| t.client.run(|| mptcp_connect(addr(NODE_IP, 7777))).unwrap())
        .collect();
    for c in &mut clients {
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
    }
    let _server_conns = server.join().unwrap();

    // The datapath reported the keys of both connections; the agent's part:
    let mut learned = Vec::new();
    wait_for("two MP_CAPABLE reports", || {
        for e in t.dp.drain_events().unwrap() {
            if e.kind == EventKind::MptcpKeys as u32 {
                assert_eq!(e.service_id, SVC);
                learned.push(mptcp_token(e.receiver_key));
            }
        }
        learned.len() >= 2
    });
    for token in &learned {
        t.dp.set_token(*token, SVC).unwrap();
    }
    let mut kernel = kernel_tokens(&t.node);
    kernel.sort();
    learned.sort();
    learned.dedup();
    println!("learned tokens {learned:08x?}, kernel tokens {kernel:08x?}");
    assert_eq!(learned, kernel, "learned tokens equal the kernel's");

    // ADD_ADDR the second address: each client joins it with an MP_JOIN SYN
    // carrying the token; only the token can classify those.
    t.node
        .ip(&[
            "mptcp",
            "endpoint",
            "add",
            "10.30.1.3",
            "dev",
            "v-nc",
            "signal",
        ])
        .unwrap();
    wait_for("two joined subflows", || {
        t.dp.reasons().unwrap()[Reason::FlowsLearned as usize] >= 2
    });
    for c in &mut clients {
        c.write_all(b"again").unwrap();
    }
    let subflows_to_b = || {
        let out = t.node.exec(&["ss", "-tn", "state", "established"]).unwrap();
        out.lines().filter(|l| l.contains("10.30.1.3:7777")).count()
    };
    let settled = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        subflows_to_b() == 2
    });
    assert!(
        settled,
        "the kernel must show both joined subflows:\n{}\n{}",
        t.node.exec(&["ss", "-tnai"]).unwrap(),
        t.node.exec(&["ss", "-Mni"]).unwrap()
    );
    let reasons = t.dp.reasons().unwrap();
    assert_eq!(reasons[Reason::MptcpUnknownToken as usize], 0);
    let no_service = t.dp.service_counters(NO_SERVICE).unwrap();
    let svc = t.dp.service_counters(SVC).unwrap();
    println!(
        "MPTCP: service {} packets, unclassified TCP/other {}",
        svc.packets[Verdict::Pass as usize],
        no_service.packets[Verdict::Pass as usize]
    );
    // Every learned flow is a subflow to 10.30.1.3 owned by the service.
    let events = t.dp.drain_events().unwrap();
    let joins: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::FlowLearned as u32)
        .collect();
    assert!(joins.len() >= 2);
    for e in joins {
        assert_eq!(e.service_id, SVC);
        assert_eq!(&e.flow.dst_addr[..4], &[10, 30, 1, 3]);
        assert!(learned.contains(&e.token));
        assert_eq!(t.dp.flow(&e.flow).unwrap(), Some(SVC));
    }
}
