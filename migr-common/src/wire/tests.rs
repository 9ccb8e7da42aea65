//! Cross-layer tests: every truncation of representative frames, and a
//! randomized mutation run that only checks for panics and result invariants.

use super::ip::{IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_ROUTING};
use super::mptcp::parse_mptcp;
use super::packet::parse_packet;
use super::quic::{LongPacketType, QUIC_V1, QuicError, parse_quic};
use super::tcp::{OptionRef, TCP_ACK, TCP_SYN, TCPOPT_NOP};
use super::{L4Info, MptcpError, PacketInfo, ParseError};
use migr_testkit::frames::{FrameBuilder, mptcp, quic, tcp_opt, verify_checksums};

const A4: [u8; 4] = [100, 64, 0, 1];
const B4: [u8; 4] = [100, 64, 0, 2];
const A6: [u8; 16] = [
    0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x01,
];
const B6: [u8; 16] = [
    0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x02,
];

fn quic_long_v4() -> Vec<u8> {
    FrameBuilder::udp_v4(A4, 51000, B4, 443)
        .payload(&quic::initial(&[0xd0; 8], &[0x5c; 5], &[], &[0; 40]))
        .build()
}

fn quic_long_v4_vlan() -> Vec<u8> {
    FrameBuilder::udp_v4(A4, 51000, B4, 443)
        .vlan(100)
        .ipv4_options(&[0x94, 4, 0, 0]) // router alert
        // `long_raw`, not `long`: migr-testkit's `long` takes the library's
        // LongPacketType, a different type from this test build's.
        .payload(&quic::long_raw(
            0xc0 | LongPacketType::Handshake.to_first_byte_bits(QUIC_V1),
            QUIC_V1,
            &[0xd1; 20],
            &[0x5d; 20],
            &[0; 16],
        ))
        .build()
}

fn quic_short_v6() -> Vec<u8> {
    FrameBuilder::udp_v6(A6, 443, B6, 51000)
        .vlan(7)
        .ipv6_ext(IPPROTO_HOPOPTS, &[0; 6])
        .payload(&quic::short(&[0xd2; 8], &[0x33; 30]))
        .build()
}

fn mptcp_v6_ext() -> Vec<u8> {
    let mut opts = Vec::new();
    opts.extend(tcp_opt::mss(1400));
    opts.push(TCPOPT_NOP);
    opts.extend(tcp_opt::wscale(7));
    opts.extend(mptcp::join_syn(true, 2, 0xcafe_f00d, 0x1234_5678));
    opts.extend(tcp_opt::timestamps(1, 0));
    FrameBuilder::tcp_v6(A6, 40001, B6, 443)
        .ipv6_ext(IPPROTO_HOPOPTS, &[0; 6])
        .ipv6_ext(IPPROTO_ROUTING, &[0; 6])
        .ipv6_ext(IPPROTO_DSTOPTS, &[0; 22])
        .flags(TCP_SYN)
        .tcp_options(&opts)
        .build()
}

fn mptcp_v4_dss() -> Vec<u8> {
    FrameBuilder::tcp_v4(A4, 40001, B4, 443)
        .vlan(5)
        .tcp_options(&mptcp::dss(&mptcp::Dss::full()))
        .payload(b"some data")
        .build()
}

fn representative() -> Vec<Vec<u8>> {
    vec![
        quic_long_v4(),
        quic_long_v4_vlan(),
        quic_short_v6(),
        mptcp_v6_ext(),
        mptcp_v4_dss(),
    ]
}

#[test]
fn representative_frames_parse_fully() {
    let f = quic_long_v4();
    let p = parse_packet(&f[..]).unwrap();
    let (start, end) = p.udp_payload().unwrap();
    let h = parse_quic(&f[..], start, end, 8).unwrap();
    assert_eq!(h.dcid().len, 8);
    assert_eq!(f[h.dcid().offset as usize], 0xd0);

    let f = quic_long_v4_vlan();
    let p = parse_packet(&f[..]).unwrap();
    assert_eq!(p.vlan, Some(100));
    assert_eq!(p.l4_offset, 18 + 24);
    let (start, end) = p.udp_payload().unwrap();
    let h = parse_quic(&f[..], start, end, 8).unwrap();
    assert_eq!(h.dcid().len, 20);
    assert_eq!(h.scid().unwrap().len, 20);

    let f = quic_short_v6();
    let p = parse_packet(&f[..]).unwrap();
    let (start, end) = p.udp_payload().unwrap();
    let h = parse_quic(&f[..], start, end, 8).unwrap();
    assert_eq!(f[h.dcid().offset as usize..h.dcid().end()], [0xd2; 8]);

    let f = mptcp_v6_ext();
    let p = parse_packet(&f[..]).unwrap();
    let t = p.tcp().unwrap();
    let o = parse_mptcp(&f[..], t.mptcp.unwrap(), t.flags).unwrap();
    assert_eq!(
        o,
        super::MptcpOption::Join {
            kind: super::mptcp::JoinKind::Syn {
                backup: true,
                addr_id: 2,
                token: 0xcafe_f00d,
                nonce: 0x1234_5678
            }
        }
    );

    let f = mptcp_v4_dss();
    let p = parse_packet(&f[..]).unwrap();
    let t = p.tcp().unwrap();
    assert_eq!(t.payload_len, 9);
    assert!(matches!(
        parse_mptcp(&f[..], t.mptcp.unwrap(), t.flags),
        Ok(super::MptcpOption::Dss {
            data_fin: true,
            data_len: Some(1000),
            ..
        })
    ));

    for f in representative() {
        verify_checksums(&f).unwrap();
    }
}

/// Every strict prefix of a frame without link-layer padding fails to parse
/// (the IP length no longer fits), and never panics.
#[test]
fn every_prefix_is_an_error() {
    for frame in representative() {
        assert!(parse_packet(&frame[..]).is_ok());
        for len in 0..frame.len() {
            let r = parse_packet(&frame[..len]);
            assert!(r.is_err(), "prefix {len} of {} parsed: {r:?}", frame.len());
            // below the IP header the error is Truncated
            if len < 34 {
                assert_eq!(r, Err(ParseError::Truncated), "prefix {len}");
            }
        }
    }
}

/// The upper-layer parsers, handed offsets from the full frame but only a
/// prefix of it, fail exactly while their header is cut.
#[test]
fn every_prefix_for_quic_and_mptcp() {
    for frame in representative() {
        let p = parse_packet(&frame[..]).unwrap();
        match p.l4 {
            L4Info::Udp { .. } => {
                let (start, end) = p.udp_payload().unwrap();
                let full = parse_quic(&frame[..], start, end, 8).unwrap();
                let hdr_end = match full.scid() {
                    Some(s) => s.end(),
                    None => full.dcid().end(),
                };
                for len in 0..frame.len() {
                    let r = parse_quic(&frame[..len], start, end, 8);
                    if len < hdr_end {
                        assert_eq!(r, Err(QuicError::Truncated), "prefix {len}");
                    } else {
                        assert_eq!(r, Ok(full), "prefix {len}");
                    }
                }
            }
            L4Info::Tcp(t) => {
                let opt = t.mptcp.unwrap();
                let full = parse_mptcp(&frame[..], opt, t.flags).unwrap();
                for len in 0..frame.len() {
                    let r = parse_mptcp(&frame[..len], opt, t.flags);
                    if len < opt.end() {
                        assert_eq!(r, Err(MptcpError::Truncated), "prefix {len}");
                    } else {
                        assert_eq!(r, Ok(full), "prefix {len}");
                    }
                }
            }
            L4Info::Other => unreachable!(),
        }
    }
}

/// xorshift64: tiny, deterministic, good enough to shake parsers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let mut c = representative();
    c.push(
        FrameBuilder::tcp_v4(A4, 1, B4, 2)
            .flags(TCP_SYN | TCP_ACK)
            .tcp_options(&mptcp::capable_synack(1, 0x81, 7))
            .build(),
    );
    c.push(
        FrameBuilder::tcp_v4(A4, 1, B4, 2)
            .tcp_options(&mptcp::add_addr(3, &A6, Some(443), Some(9)))
            .build(),
    );
    c.push(
        FrameBuilder::tcp_v6(A6, 1, B6, 2)
            .tcp_options(&mptcp::capable_ack_data(1, 0x81, 1, 2, 3, Some(4)))
            .payload(&[1; 3])
            .build(),
    );
    c.push(
        FrameBuilder::tcp_v6(A6, 1, B6, 2)
            .tcp_options(&[&mptcp::remove_addr(&[1, 2])[..], &mptcp::prio(true, None)].concat())
            .build(),
    );
    c.push(
        FrameBuilder::udp_v6(A6, 1, B6, 2)
            .payload(&quic::version_negotiation(&[1; 8], &[2; 8], &[1, 2]))
            .build(),
    );
    c.push(
        FrameBuilder::ipv6(A6, B6, 50)
            .ipv6_ext(IPPROTO_DSTOPTS, &[0; 6])
            .payload(&[0; 20])
            .build(),
    );
    c.push(FrameBuilder::ethernet(0x0806).payload(&[0; 28]).build());
    c
}

/// Checks what a successful parse promises.
fn check_packet(frame: &[u8], p: &PacketInfo) {
    assert!(p.l3_offset == 14 || p.l3_offset == 18);
    assert_eq!(p.vlan.is_some(), p.l3_offset == 18);
    let l4_end = p.l4_offset as usize + p.l4_len as usize;
    assert!(l4_end <= frame.len());
    match p.l4 {
        L4Info::Udp {
            payload_offset,
            payload_len,
            ..
        } => {
            assert_eq!(payload_offset, p.l4_offset + 8);
            assert!(payload_offset as usize + payload_len as usize <= l4_end);
        }
        L4Info::Tcp(t) => {
            assert!((20..=60).contains(&t.header_len));
            assert_eq!(t.payload_offset, p.l4_offset + t.header_len as u16);
            assert_eq!(t.payload_offset as usize + t.payload_len as usize, l4_end);
            if let Some(o) = t.mptcp {
                assert!(o.offset >= p.l4_offset + 20);
                assert!(o.end() <= t.payload_offset as usize);
                assert_eq!(frame[o.offset as usize], 30);
                assert_eq!(frame[o.offset as usize + 1], o.len);
            }
        }
        L4Info::Other => {}
    }
}

#[test]
fn random_mutations_never_panic() {
    let corpus = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ok = 0usize;
    let mut quic_ok = 0usize;
    let mut mptcp_ok = 0usize;
    const ROUNDS: usize = 200_000;
    for round in 0..ROUNDS {
        let mut f = corpus[round % corpus.len()].clone();
        let mutations = 1 + rng.below(4);
        for _ in 0..mutations {
            match rng.below(7) {
                // overwrite a header byte
                0 | 1 => {
                    let at = rng.below(f.len().clamp(1, 128));
                    if let Some(b) = f.get_mut(at) {
                        *b = rng.byte();
                    }
                }
                // flip a bit anywhere
                2 => {
                    if !f.is_empty() {
                        let at = rng.below(f.len());
                        f[at] ^= 1 << rng.below(8);
                    }
                }
                // an interesting value
                3 => {
                    let v = [
                        0u8, 1, 2, 3, 4, 5, 7, 8, 0x0f, 0x14, 0x15, 0x1e, 0x40, 0x7f, 0x80, 0xff,
                    ];
                    if !f.is_empty() {
                        let at = rng.below(f.len().min(128));
                        f[at] = v[rng.below(v.len())];
                    }
                }
                // truncate
                4 => {
                    let len = rng.below(f.len() + 1);
                    f.truncate(len);
                }
                // grow (padding or garbage)
                5 => {
                    for _ in 0..rng.below(24) {
                        f.push(rng.byte());
                    }
                }
                // remove or insert a byte in the headers
                _ => {
                    if !f.is_empty() {
                        let at = rng.below(f.len().min(128));
                        if rng.below(2) == 0 {
                            f.remove(at);
                        } else {
                            f.insert(at, rng.byte());
                        }
                    }
                }
            }
        }

        if let Ok(p) = parse_packet(&f[..]) {
            {
                ok += 1;
                check_packet(&f, &p);
                if let Some((start, end)) = p.udp_payload() {
                    let cid_len = rng.byte() % 24;
                    if let Ok(h) = parse_quic(&f[..], start, end, cid_len) {
                        quic_ok += 1;
                        let d = h.dcid();
                        assert!(d.end() <= end && d.end() <= f.len());
                        assert!(d.offset as usize > start && d.len <= 20);
                        if let Some(s) = h.scid() {
                            assert!(s.end() <= end && s.len <= 20);
                        }
                    }
                }
                if let Some(t) = p.tcp()
                    && let Some(o) = t.mptcp
                    && parse_mptcp(&f[..], o, t.flags).is_ok()
                {
                    mptcp_ok += 1;
                }
            }
        }
        // The upper-layer parsers at arbitrary places, with arbitrary windows.
        let start = rng.below(f.len() + 4);
        let end = rng.below(f.len() + 8);
        let _ = parse_quic(&f[..], start, end, rng.byte());
        let opt = OptionRef {
            offset: rng.below(f.len() + 4) as u16,
            len: rng.byte(),
        };
        let _ = parse_mptcp(&f[..], opt, rng.byte());
        if let Some(&len) = f.get(opt.offset as usize + 1) {
            let opt = OptionRef { len, ..opt };
            if let Ok(_o) = parse_mptcp(&f[..], opt, rng.byte()) {
                assert!(opt.end() <= f.len());
            }
        }
    }
    // The mutations must leave enough frames intact to exercise the deep paths.
    assert!(ok > ROUNDS / 10, "only {ok} frames parsed");
    assert!(quic_ok > ROUNDS / 100, "only {quic_ok} QUIC headers parsed");
    assert!(
        mptcp_ok > ROUNDS / 100,
        "only {mptcp_ok} MPTCP options parsed"
    );
}

/// Random bytes, not derived from valid frames, with IP ethertypes forced in.
#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for round in 0..50_000 {
        let len = rng.below(160);
        let mut f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if f.len() > 14 {
            let et: u16 = match round % 4 {
                0 => 0x0800,
                1 => 0x86dd,
                2 => 0x8100,
                _ => 0x88a8,
            };
            f[12..14].copy_from_slice(&et.to_be_bytes());
            if f.len() > 15 && round % 4 == 0 {
                f[14] = 0x45;
            }
            if f.len() > 15 && round % 4 == 1 {
                f[14] = 0x60;
            }
        }
        if let Ok(p) = parse_packet(&f[..]) {
            check_packet(&f, &p);
        }
    }
}
