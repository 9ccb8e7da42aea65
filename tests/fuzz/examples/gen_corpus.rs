//! Writes the seed corpus, `tests/fuzz/corpus/<target>/`, from scratch:
//!
//! ```sh
//! cargo run --manifest-path tests/fuzz/Cargo.toml --example gen_corpus
//! ```
//!
//! Valid frames of every kind the parsers know (IPv4 with options, IPv6 with
//! extension headers, VLAN, UDP, TCP with options, QUIC long and short headers,
//! every MPTCP option), plus a few broken ones, laid out in each target's input
//! format (`src/targets.rs`). Deterministic: running it twice gives the same files.

use std::path::{Path, PathBuf};

use migr_common::wire::{LongPacketType, packet::parse_packet, quic::QUIC_V2};
use migr_quic_codec::frame::{self, Frame};
use migr_testkit::frames::{FrameBuilder, mptcp, quic, tcp_opt};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

const A4: [u8; 4] = [192, 0, 2, 10];
const B4: [u8; 4] = [198, 51, 100, 20];
const A6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
];
const B6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b,
];

struct Corpus {
    dir: PathBuf,
    count: usize,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("clearing the old corpus");
        }
        std::fs::create_dir_all(&dir).expect("creating the corpus directory");
        Self { dir, count: 0 }
    }

    fn add(&mut self, name: &str, bytes: &[u8]) {
        self.count += 1;
        let path = self.dir.join(format!("seed-{:02}-{name}", self.count));
        std::fs::write(&path, bytes).expect("writing a seed");
    }
}

/// `parts` concatenated.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn udp4(payload: &[u8]) -> Vec<u8> {
    FrameBuilder::udp_v4(A4, 50000, B4, 443)
        .payload(payload)
        .build()
}

fn udp6(payload: &[u8]) -> Vec<u8> {
    FrameBuilder::udp_v6(A6, 50001, B6, 443)
        .payload(payload)
        .build()
}

fn tcp4(flags: u8, options: &[u8]) -> Vec<u8> {
    FrameBuilder::tcp_v4(A4, 40000, B4, 80)
        .seq(0x0102_0304)
        .ack(0x1112_1314)
        .flags(flags)
        .tcp_options(options)
        .payload(b"data")
        .build()
}

fn tcp6(flags: u8, options: &[u8]) -> Vec<u8> {
    FrameBuilder::tcp_v6(A6, 40001, B6, 443)
        .flags(flags)
        .tcp_options(options)
        .build()
}

const DCID8: [u8; 8] = [0x11, 0x22, 0x00, 0x2a, 0x33, 0x44, 0x55, 0x66];
const SCID8: [u8; 8] = [0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8];

/// (name, QUIC packet) pairs: every header form.
fn quic_packets() -> Vec<(&'static str, Vec<u8>)> {
    let dcid20: Vec<u8> = (1..=20).collect();
    let mut greased = quic::short(&DCID8, &[0; 24]);
    greased[0] &= !0x40;
    vec![
        ("initial", quic::initial(&DCID8, &SCID8, &[], &[0x06; 24])),
        (
            "initial-token",
            quic::initial(&dcid20, &[], &[7; 16], &[0; 8]),
        ),
        (
            "0rtt",
            quic::long(1, LongPacketType::ZeroRtt, &DCID8, &SCID8, &[0; 12]),
        ),
        (
            "handshake-v2",
            quic::long(QUIC_V2, LongPacketType::Handshake, &DCID8, &SCID8, &[0; 12]),
        ),
        (
            "retry",
            quic::long(1, LongPacketType::Retry, &DCID8, &SCID8, &[9; 16]),
        ),
        (
            "version-negotiation",
            quic::version_negotiation(&SCID8, &DCID8, &[1, QUIC_V2, 0x0a0a_0a0a]),
        ),
        ("short", quic::short(&DCID8, &[0x5a; 24])),
        ("short-cid20", quic::short(&dcid20, &[0; 8])),
        ("short-greased", greased),
        (
            "cid-too-long",
            quic::long_raw(0xc0, 1, &[1; 21], &[2; 4], &[]),
        ),
    ]
}

/// (name, TCP flags, option) for every MPTCP subtype and form.
fn mptcp_options() -> Vec<(&'static str, u8, Vec<u8>)> {
    let hmac: [u8; 20] = core::array::from_fn(|i| i as u8 + 1);
    vec![
        ("capable-syn", SYN, mptcp::capable_syn(1, 0x81)),
        (
            "capable-syn-key-v0",
            SYN,
            mptcp::capable_syn_with_key(0, 0x01, 0x0102_0304_0506_0708),
        ),
        (
            "capable-synack",
            SYN | ACK,
            mptcp::capable_synack(1, 0x01, 0x1122_3344_5566_7788),
        ),
        (
            "capable-ack",
            ACK,
            mptcp::capable_ack(1, 0x01, 0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00),
        ),
        (
            "capable-ack-data",
            ACK,
            mptcp::capable_ack_data(1, 0x01, 1, 2, 1400, None),
        ),
        (
            "capable-ack-data-csum",
            ACK,
            mptcp::capable_ack_data(1, 0x81, 3, 4, 1400, Some(0xbeef)),
        ),
        (
            "join-syn",
            SYN,
            mptcp::join_syn(true, 3, 0xdead_beef, 0x0102_0304),
        ),
        (
            "join-synack",
            SYN | ACK,
            mptcp::join_synack(false, 3, 0x0102_0304_0506_0708, 77),
        ),
        ("join-ack", ACK, mptcp::join_ack(&hmac)),
        ("dss-full", ACK, mptcp::dss(&mptcp::Dss::full())),
        (
            "dss-ack4",
            ACK,
            mptcp::dss(&mptcp::Dss {
                data_ack: Some(5),
                ..Default::default()
            }),
        ),
        (
            "dss-map4",
            ACK,
            mptcp::dss(&mptcp::Dss {
                mapping: Some(mptcp::DssMapping {
                    dsn: 9,
                    subflow_seq: 1,
                    data_len: 100,
                    checksum: None,
                }),
                data_fin: true,
                ..Default::default()
            }),
        ),
        (
            "add-addr4-hmac",
            ACK,
            mptcp::add_addr(1, &A4, None, Some(0x0102_0304_0506_0708)),
        ),
        (
            "add-addr4-port-echo",
            ACK,
            mptcp::add_addr(2, &A4, Some(8443), None),
        ),
        (
            "add-addr6-port-hmac",
            ACK,
            mptcp::add_addr(3, &B6, Some(443), Some(7)),
        ),
        ("add-addr6-echo", ACK, mptcp::add_addr(4, &B6, None, None)),
        ("remove-addr", ACK, mptcp::remove_addr(&[1, 2, 3])),
        ("prio", ACK, mptcp::prio(true, None)),
        ("prio-addr-id", ACK, mptcp::prio(false, Some(4))),
        ("fail", ACK, mptcp::fail(0xdead_beef_0000_0001)),
        (
            "fastclose",
            ACK | RST,
            mptcp::fastclose(0x0123_4567_89ab_cdef),
        ),
        ("tcprst", RST, mptcp::tcprst(0x0b, 3)),
        ("unknown-9", ACK, mptcp::raw(9, 0, &[1, 2, 3])),
        ("experimental-15", ACK, mptcp::raw(15, 1, &[])),
    ]
}

/// (name, Ethernet frame) for `packet` and the targets built on frames.
fn frames() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, q) in quic_packets() {
        out.push((format!("udp4-quic-{name}"), udp4(&q)));
    }
    let (_, short) = &quic_packets()[6];
    out.push((
        "udp6-vlan-quic-short".into(),
        FrameBuilder::udp_v6(A6, 1234, B6, 443)
            .vlan(42)
            .payload(short)
            .build(),
    ));
    out.push((
        "udp6-quic-initial".into(),
        udp6(&quic::initial(&DCID8, &SCID8, &[], &[0; 16])),
    ));
    out.push((
        "udp4-ipopts-padding".into(),
        FrameBuilder::udp_v4(A4, 53, B4, 53)
            .ipv4_options(&[7, 7, 4, 0, 0, 0, 0, 1])
            .payload(b"x")
            .trailer(&[0; 12])
            .build(),
    ));
    out.push((
        "udp6-ext4".into(),
        FrameBuilder::udp_v6(A6, 1, B6, 2)
            .ipv6_ext(0, &[1, 4, 0, 0, 0, 0])
            .ipv6_ext(43, &[0, 0, 0, 0, 0, 0])
            .ipv6_ext(60, &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .ipv6_ext(60, &[0; 6])
            .payload(&quic::short(&DCID8, &[0; 8]))
            .build(),
    ));
    let mut five = FrameBuilder::udp_v6(A6, 1, B6, 2);
    for _ in 0..5 {
        five = five.ipv6_ext(60, &[0; 6]);
    }
    out.push(("udp6-ext5".into(), five.build()));
    out.push((
        "udp6-fragment".into(),
        FrameBuilder::udp_v6(A6, 1, B6, 2)
            .ipv6_ext(0, &[0; 6])
            .ipv6_fragment(0, true, 0x1234)
            .payload(&[0; 8])
            .build(),
    ));
    out.push((
        "udp4-fragment".into(),
        FrameBuilder::udp_v4(A4, 1, B4, 2)
            .more_fragments(true)
            .payload(&[0; 8])
            .build(),
    ));
    // An extension header that carries the UDP header past the parse limit.
    out.push((
        "udp6-long-ext".into(),
        FrameBuilder::udp_v6(A6, 1, B6, 2)
            .ipv6_ext(60, &[0; 470])
            .payload(&quic::short(&DCID8, &[0; 8]))
            .build(),
    ));
    out.push((
        "tcp4-syn-common-options".into(),
        tcp4(
            SYN,
            &cat(&[
                &tcp_opt::mss(1460),
                &tcp_opt::sack_permitted(),
                &tcp_opt::timestamps(1, 0),
                &tcp_opt::nop(),
                &tcp_opt::wscale(7),
            ]),
        ),
    ));
    out.push(("tcp4-40-nops".into(), tcp4(ACK, &[1; 40])));
    for (name, flags, opt) in mptcp_options() {
        let options = if opt.len() <= 28 {
            cat(&[&tcp_opt::nop(), &tcp_opt::nop(), &opt])
        } else {
            opt
        };
        out.push((format!("tcp4-mptcp-{name}"), tcp4(flags, &options)));
    }
    out.push((
        "tcp6-ext-mptcp-join-syn".into(),
        FrameBuilder::tcp_v6(A6, 40001, B6, 443)
            .ipv6_ext(0, &[0; 6])
            .flags(SYN)
            .tcp_options(&cat(&[
                &tcp_opt::mss(1400),
                &mptcp::join_syn(false, 1, 0x0a0b_0c0d, 5),
            ]))
            .build(),
    ));
    out.push((
        "tcp6-mptcp-dss-ack8".into(),
        tcp6(
            ACK,
            &mptcp::dss(&mptcp::Dss {
                data_ack: Some(u64::MAX - 1),
                data_ack_8: true,
                ..Default::default()
            }),
        ),
    ));
    out.push((
        "tcp6-vlan-ack".into(),
        FrameBuilder::tcp_v6(A6, 1, B6, 2)
            .vlan(7)
            .flags(ACK)
            .payload(b"hello")
            .build(),
    ));
    out.push((
        "icmp4".into(),
        FrameBuilder::ipv4(A4, B4, 1)
            .payload(&[8, 0, 0, 0, 0, 1, 0, 1])
            .build(),
    ));
    out.push((
        "icmp6-after-hbh".into(),
        FrameBuilder::ipv6(A6, B6, 58)
            .ipv6_ext(0, &[0; 6])
            .payload(&[128, 0, 0, 0, 0, 1, 0, 1])
            .build(),
    ));
    out.push((
        "arp".into(),
        FrameBuilder::ethernet(0x0806).payload(&[0; 28]).build(),
    ));
    out.push((
        "qinq".into(),
        FrameBuilder::udp_v4(A4, 1, B4, 2)
            .vlan_tag(0x88a8, 5)
            .vlan_tag(0x8100, 6)
            .build(),
    ));
    let mut bad_udp_len = udp4(&[0; 8]);
    bad_udp_len[14 + 20 + 5] = 200;
    out.push(("udp4-bad-length".into(), bad_udp_len));
    let mut bad_doff = tcp4(ACK, &[]);
    bad_doff[14 + 20 + 12] = 0x40;
    out.push(("tcp4-bad-data-offset".into(), bad_doff));
    let cut = udp4(&quic::short(&DCID8, &[0; 4]));
    out.push(("udp4-cut".into(), cut[..30].to_vec()));
    out
}

fn frame_named<'a>(frames: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &frames
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no frame {name}"))
        .1
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let frames = frames();

    let mut c = Corpus::new(&root, "packet");
    for (name, f) in &frames {
        c.add(name, f);
    }

    // layers: selector, offset (2), ip_end (2), frame
    let mut c = Corpus::new(&root, "layers");
    let layer = |selector: u8, at: usize, end: usize, f: &[u8]| {
        let mut v = vec![selector];
        v.extend_from_slice(&(at as u16).to_be_bytes());
        v.extend_from_slice(&(end as u16).to_be_bytes());
        v.extend_from_slice(f);
        v
    };
    for (name, f) in &frames {
        let Ok(p) = parse_packet(&f[..]) else {
            continue;
        };
        let l3 = p.l3_offset as usize;
        let l4 = p.l4_offset as usize;
        let end = l4 + p.l4_len as usize;
        if name.contains("vlan") || name.contains("ext") {
            c.add(&format!("eth-{name}"), &layer(0, 0, 0, f));
            let selector = if p.ethertype == 0x0800 { 1 } else { 2 };
            c.add(&format!("ip-{name}"), &layer(selector, l3, 0, f));
        }
        if name.ends_with("quic-short")
            || name.ends_with("quic-initial")
            || name.contains("common-options")
            || name.ends_with("join-syn")
            || name.contains("ipopts")
        {
            let selector = if p.ip_proto == 17 { 3 } else { 4 };
            c.add(&format!("l4-{name}"), &layer(selector, l4, end, f));
        }
    }
    let f = frame_named(&frames, "udp4-quic-short");
    c.add("ipv4-at-14", &layer(1, 14, 0, f));
    c.add("udp-ip-end-short", &layer(3, 34, 40, f));
    c.add("tcp-at-udp", &layer(4, 34, f.len(), f));

    // tcp_options: kind, start (2), width, frame
    let mut c = Corpus::new(&root, "tcp_options");
    let window = |kind: u8, start: usize, width: usize, f: &[u8]| {
        let mut v = vec![kind];
        v.extend_from_slice(&(start as u16).to_be_bytes());
        v.push(width as u8);
        v.extend_from_slice(f);
        v
    };
    for (name, f) in &frames {
        let Ok(p) = parse_packet(&f[..]) else {
            continue;
        };
        let Some(t) = p.tcp() else {
            continue;
        };
        let start = p.l4_offset as usize + 20;
        let width = t.header_len as usize - 20;
        if width == 0
            || !(name.contains("common")
                || name.contains("nops")
                || name.contains("-dss-full")
                || name.contains("join")
                || name.contains("add-addr6"))
        {
            continue;
        }
        for kind in [30, 8, 2] {
            c.add(
                &format!("kind{kind}-{name}"),
                &window(kind, start, width, f),
            );
        }
    }
    // wider than the option space: more than 40 options
    let mut nops = vec![0u8; 14 + 20 + 20];
    nops.extend_from_slice(&[1; 60]);
    nops.extend_from_slice(&mptcp::prio(true, None));
    c.add("past-40-steps", &window(30, 54, 63, &nops));
    c.add("eol", &window(30, 0, 8, &[1, 1, 0, 30, 0, 0, 0, 0]));
    c.add("bad-length", &window(30, 0, 8, &[2, 4, 5, 6, 30, 1, 0, 0]));

    // mptcp: tcp flags, offset (2), length, frame
    let mut c = Corpus::new(&root, "mptcp");
    let at = |flags: u8, offset: u16, len: u8, f: &[u8]| {
        let mut v = vec![flags];
        v.extend_from_slice(&offset.to_be_bytes());
        v.push(len);
        v.extend_from_slice(f);
        v
    };
    for (name, f) in &frames {
        let Ok(p) = parse_packet(&f[..]) else {
            continue;
        };
        let Some(t) = p.tcp() else {
            continue;
        };
        let Some(o) = t.mptcp else {
            continue;
        };
        c.add(name, &at(t.flags, o.offset, o.len, f));
        if name.contains("capable-syn") || name.contains("join-synack") {
            c.add(&format!("{name}-on-ack"), &at(ACK, o.offset, o.len, f));
        }
    }
    c.add("not-mptcp", &at(ACK, 0, 4, &tcp_opt::mss(1400)));
    c.add("length-mismatch", &at(ACK, 0, 8, &mptcp::prio(true, None)));
    c.add("too-short", &at(ACK, 0, 2, &[30, 2, 0x50]));

    // quic: short DCID length, mode, server id place, start (2), end (2), frame
    let mut c = Corpus::new(&root, "quic");
    let q = |cid_len: u8, mode: u8, sid: u8, start: u16, end: u16, f: &[u8]| {
        let mut v = vec![cid_len, mode, sid];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(f);
        v
    };
    for (name, f) in &frames {
        if name.contains("quic") {
            // window from the UDP header; server id 2 bytes at offset 2
            c.add(name, &q(8, 0x02, 0x21, 0, 0, f));
        }
    }
    for (name, p) in quic_packets() {
        let len = p.len() as u16;
        c.add(&format!("raw-{name}"), &q(20, 0x01, 0xf3, 0, len, &p));
    }
    let (_, short) = &quic_packets()[6];
    c.add("open-ended", &q(4, 0x04, 0x03, 0, 0, short));
    c.add(
        "start-past-limit",
        &q(8, 0x00, 0x00, 600, 700, &[0x40; 720]),
    );

    // cid: CID length, id offset, id length, CID offset (2), bytes
    let mut c = Corpus::new(&root, "cid");
    for (name, cid_len, offset, len, at) in [
        ("8-0-1", 8u8, 0u8, 1u8, 0u16),
        ("8-2-3", 8, 2, 3, 0),
        ("12-3-2-at-1", 12, 3, 2, 1),
        ("20-16-4", 20, 16, 4, 0),
        ("4-0-4", 4, 0, 4, 0),
        ("bad-cid-len-0", 0, 0, 1, 0),
        ("bad-cid-len-21", 21, 0, 1, 0),
        ("bad-id-len-5", 8, 0, 5, 0),
        ("id-out-of-cid", 8, 6, 3, 0),
        ("short-buffer", 20, 0, 2, 0),
    ] {
        let mut v = vec![cid_len, offset, len];
        v.extend_from_slice(&at.to_be_bytes());
        let n = if name == "short-buffer" { 6 } else { 21 };
        v.extend((0..n).map(|i| 0x10 + i as u8));
        c.add(name, &v);
    }

    // quic_ext_frame: frames and control streams
    let mut c = Corpus::new(&root, "quic_ext_frame");
    let v4: std::net::SocketAddr = "10.77.2.1:4433".parse().unwrap();
    let v6: std::net::SocketAddr = "[2001:db8::7]:443".parse().unwrap();
    let samples = [
        ("hello", Frame::Hello { version: 1 }),
        ("trigger", Frame::Trigger),
        (
            "server-migration-v4",
            Frame::ServerMigration {
                sequence: 5,
                address: v4,
            },
        ),
        (
            "server-migration-v6-big-seq",
            Frame::ServerMigration {
                sequence: 1 << 40,
                address: v6,
            },
        ),
        ("pool-v4", Frame::PoolMigrationAddress { address: v4 }),
        ("pool-v6", Frame::PoolMigrationAddress { address: v6 }),
    ];
    for (name, f) in &samples {
        let mut bytes = Vec::new();
        f.encode(&mut bytes).unwrap();
        c.add(name, &bytes);
    }
    let frames_only: Vec<Frame> = samples.iter().map(|(_, f)| *f).collect();
    c.add("stream-all", &frame::encode_stream(&frames_only).unwrap());
    c.add(
        "stream-hello-pool",
        &frame::encode_stream(&frames_only[4..]).unwrap(),
    );
    let mut with_unknown = frame::encode_stream(&[Frame::Hello { version: 1 }]).unwrap();
    with_unknown.extend_from_slice(&[0x21, 3, 1, 2, 3]);
    c.add("stream-unknown-type", &with_unknown);
    c.add("unknown-type", &[0x40, 0x21, 2, 0, 0]);
    c.add("oversized", &[0x00, 0x41, 0x00]);
    c.add("bad-family", &[0x03, 7, 5, 1, 2, 3, 4, 0, 1]);
    c.add("trailing", &[0x01, 1, 0]);
    c.add("non-minimal-varints", &[0x40, 0x00, 0x40, 0x02, 0x40, 0x01]);
    c.add("unusable-port-0", &[0x03, 7, 4, 10, 0, 0, 1, 0, 0]);
    c.add("wrong-stream-type", &[0x00, 0x02, 0x00, 0x01]);

    // control_api: request lines (valid ones of every operation, then refusals)
    let mut c = Corpus::new(&root, "control_api");
    let spec = r#""id":7,"name":"web-1","rules":[{"proto":"udp","addr":"10.0.0.2:7000"},{"proto":"tcp","addr":"10.0.0.2:443"},{"proto":"quic","addr":"[2001:db8::2]:4433","server_ids":[258,3],"cid":{"len":8,"offset":1,"id_len":2},"grease":true},{"proto":"mptcp","addr":"10.0.0.2:8080"}]"#;
    for (name, line) in [
        ("hello", r#"{"v":1,"op":"hello"}"#.to_string()),
        ("hello-args", r#"{"v":1,"id":"a","op":"hello","args":{}}"#.to_string()),
        ("list", r#"{"v":1,"id":1,"op":"service.list"}"#.to_string()),
        ("stats", r#"{"v":1,"id":null,"op":"stats","args":null}"#.to_string()),
        (
            "add-full",
            format!(
                r#"{{"v":1,"id":"r1","op":"service.add","args":{{{spec},"forward":{{"mode":"address-changing","addr":"10.0.1.2:7000","iface":"eth1","next_hop_mac":"02:00:00:00:00:01"}},"park_limit":{{"frames":10,"bytes":10000}},"drain_ms":500,"replay_rate":1000}}}}"#
            ),
        ),
        (
            "add-same-ip",
            r#"{"v":1,"op":"service.add","args":{"id":4095,"name":"db","rules":[{"proto":"tcp","addr":"10.0.0.3:5432"}],"forward":{"mode":"same-ip","iface":"veth0","next_hop":"10.0.9.1"}}}"#.to_string(),
        ),
        (
            "remove",
            r#"{"v":1,"id":[1,{"x":2.5}],"op":"service.remove","args":{"service":"web-1","force":true}}"#.to_string(),
        ),
        ("show-id", r#"{"v":1,"op":"service.show","args":{"service":7}}"#.to_string()),
        ("show-digits", r#"{"v":1,"op":"service.show","args":{"service":"12"}}"#.to_string()),
        (
            "phase",
            r#"{"v":1,"id":-3,"op":"phase","args":{"service":"web-1","phase":"freeze","role":"source","drain_ms":0}}"#.to_string(),
        ),
        (
            "criu",
            r#"{"v":1,"op":"criu","args":{"service":7,"action":"pre-dump"}}"#.to_string(),
        ),
        // refusals
        ("empty", String::new()),
        ("not-json", "{\"v\":1,".to_string()),
        ("array", "[1,2]".to_string()),
        ("version-2", r#"{"v":2,"op":"stats"}"#.to_string()),
        ("unknown-op", r#"{"v":1,"op":"explode"}"#.to_string()),
        ("unknown-field", r#"{"v":1,"op":"stats","extra":1}"#.to_string()),
        ("phase-no-args", r#"{"v":1,"op":"phase"}"#.to_string()),
        (
            "bad-cid",
            r#"{"v":1,"op":"service.add","args":{"id":3,"name":"x","rules":[{"proto":"quic","addr":"10.0.0.2:443","cid":{"len":4,"offset":3,"id_len":2}}]}}"#.to_string(),
        ),
        (
            "bad-forward",
            r#"{"v":1,"op":"service.add","args":{"id":3,"name":"x","rules":[{"proto":"udp","addr":"10.0.0.2:53"}],"forward":{"iface":"eth0","addr":"[fd00::1]:1"}}}"#.to_string(),
        ),
        ("bad-name", r#"{"v":1,"op":"service.add","args":{"id":1,"name":"123"}}"#.to_string()),
        ("deep", format!("{}{}", "[".repeat(200), "]".repeat(200))),
        // needs serde_json's float_roundtrip to come back as it went (a finding)
        ("float-id", r#"{"v":1,"id":1.0000000000000002e-299,"op":"stats"}"#.to_string()),
        ("health", r#"{"v":1,"id":2,"op":"health"}"#.to_string()),
    ] {
        c.add(name, line.as_bytes());
    }
    println!("seed corpus written under {}", root.display());
}
