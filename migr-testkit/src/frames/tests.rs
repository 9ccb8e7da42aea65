use super::*;

#[test]
fn checksum_reference_vectors() {
    // RFC 1071 section 3 example: sum 0xddf2, checksum !0xddf2
    assert_eq!(
        internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        !0xddf2
    );
    assert_eq!(internet_checksum(&[]), 0xffff);
    // odd length pads with a zero byte
    assert_eq!(internet_checksum(&[0x12]), !0x1200);
    // a well-known IPv4 header (checksum 0xb861)
    let h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(internet_checksum(&h), 0xb861);
    let mut with = h;
    with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
    assert_eq!(internet_checksum(&with), 0);
}

#[test]
fn pseudo_headers() {
    let p = pseudo_header_v4([1, 2, 3, 4], [5, 6, 7, 8], 17, 0x0102);
    assert_eq!(p, [1, 2, 3, 4, 5, 6, 7, 8, 0, 17, 1, 2]);
    let p = pseudo_header_v6([1; 16], [2; 16], 6, 0x0001_0203);
    assert_eq!(&p[..16], &[1; 16]);
    assert_eq!(&p[16..32], &[2; 16]);
    assert_eq!(&p[32..], &[0, 1, 2, 3, 0, 0, 0, 6]);
}

#[test]
fn built_frames_verify() {
    let frames = [
        FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
            .payload(b"odd")
            .build(),
        FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
            .vlan(7)
            .ipv4_options(&[1, 1, 1])
            .payload(&[0xff; 100])
            .trailer(&[0; 9])
            .build(),
        FrameBuilder::tcp_v4([192, 168, 0, 1], 80, [192, 168, 0, 2], 9999)
            .flags(0x12)
            .tcp_options(&mptcp::capable_synack(1, 1, 99))
            .payload(b"x")
            .build(),
        FrameBuilder::udp_v6(Ipv6Addr::LOCALHOST, 443, Ipv6Addr::LOCALHOST, 443)
            .payload(&quic::short(&[1; 8], b"data"))
            .build(),
        FrameBuilder::tcp_v6([0xfe; 16], 1, [0xfd; 16], 2)
            .ipv6_ext(0, &[1, 4, 0, 0, 0, 0])
            .ipv6_ext(60, &[0; 10])
            .payload(&[1, 2, 3])
            .build(),
        FrameBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 1)
            .payload(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0])
            .build(),
        FrameBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 17)
            .more_fragments(true)
            .payload(&[0; 16])
            .build(),
    ];
    for f in &frames {
        verify_checksums(f).unwrap();
    }
}

#[test]
fn verify_catches_corruption_and_fix_repairs_it() {
    let good = FrameBuilder::tcp_v6([0xfe; 16], 1, [0xfd; 16], 2)
        .payload(b"payload")
        .build();
    let mut f = good.clone();
    *f.last_mut().unwrap() ^= 1;
    assert!(verify_checksums(&f).unwrap_err().contains("checksum"));
    fix_checksums(&mut f).unwrap();
    verify_checksums(&f).unwrap();

    let good = FrameBuilder::udp_v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2)
        .payload(b"abcd")
        .build();
    let mut f = good.clone();
    f[14 + 8] -= 1; // TTL
    assert!(verify_checksums(&f).unwrap_err().contains("IPv4 header"));
    fix_checksums(&mut f).unwrap();
    verify_checksums(&f).unwrap();
    // the UDP checksum covers the addresses
    let mut f = good.clone();
    f[14 + 15] ^= 0x80;
    f[14 + 10] = 0;
    f[14 + 11] = 0;
    let c = internet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    assert!(verify_checksums(&f).unwrap_err().contains("protocol 17"));
    // no UDP checksum is fine over IPv4, not over IPv6
    let mut f = good.clone();
    f[40] = 0;
    f[41] = 0;
    verify_checksums(&f).unwrap();
    let mut f = FrameBuilder::udp_v6([1; 16], 1, [2; 16], 2).build();
    f[60] = 0;
    f[61] = 0;
    assert!(verify_checksums(&f).is_err());
    // inconsistent UDP length
    let mut f = good.clone();
    f[39] -= 1;
    assert!(verify_checksums(&f).unwrap_err().contains("UDP length"));
    assert!(verify_checksums(&FrameBuilder::ethernet(0x0806).build()).is_err());
}

#[test]
fn frame_layout_is_as_documented() {
    let f = FrameBuilder::udp_v4(Ipv4Addr::new(10, 0, 0, 1), 0x1111, [10, 0, 0, 2], 0x2222)
        .src_mac([1; 6])
        .dst_mac([2; 6])
        .vlan(0x123)
        .ttl(9)
        .tos(0x10)
        .ip_id(0xbeef)
        .dont_fragment(true)
        .payload(&[0xaa, 0xbb])
        .build();
    assert_eq!(&f[0..6], &[2; 6]);
    assert_eq!(&f[6..12], &[1; 6]);
    assert_eq!(&f[12..18], &[0x81, 0x00, 0x01, 0x23, 0x08, 0x00]);
    assert_eq!(f[18], 0x45);
    assert_eq!(f[19], 0x10);
    assert_eq!(&f[20..22], &30u16.to_be_bytes());
    assert_eq!(&f[22..24], &[0xbe, 0xef]);
    assert_eq!(&f[24..26], &[0x40, 0x00]);
    assert_eq!(f[26], 9);
    assert_eq!(f[27], 17);
    assert_eq!(&f[38..42], &[0x11, 0x11, 0x22, 0x22]);
    assert_eq!(&f[42..44], &10u16.to_be_bytes());
    assert_eq!(&f[46..], &[0xaa, 0xbb]);

    let f = FrameBuilder::tcp_v6([1; 16], 1, [2; 16], 2)
        .flow_label(0xabcde)
        .tos(0xff)
        .ttl(3)
        .ipv6_fragment(0x10, true, 0x01020304)
        .seq(5)
        .ack(6)
        .window(100)
        .urgent(1)
        .flags(0x18)
        .build();
    assert_eq!(&f[14..18], &[0x6f, 0xfa, 0xbc, 0xde]);
    assert_eq!(&f[18..20], &(8u16 + 20).to_be_bytes());
    assert_eq!(f[20], 44);
    assert_eq!(f[21], 3);
    assert_eq!(&f[54..62], &[6, 0, 0x00, 0x81, 1, 2, 3, 4]);
    assert_eq!(f[62 + 12], 5 << 4);
    assert_eq!(f[62 + 13], 0x18);
    verify_checksums(&f).unwrap();
}

#[test]
fn quic_builders() {
    assert_eq!(quic::varint(37), [0x25]);
    assert_eq!(quic::varint(15293), [0x7b, 0xbd]);
    assert_eq!(quic::varint(494_878_333), [0x9d, 0x7f, 0x3e, 0x7d]);
    assert_eq!(
        quic::varint(151_288_809_941_952_652),
        [0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]
    );
    let q = quic::initial(&[1, 2], &[3], &[9; 70], &[0; 5]);
    assert_eq!(&q[..10], &[0xc0, 0, 0, 0, 1, 2, 1, 2, 1, 3]);
    assert_eq!(&q[10..12], &[0x40, 70]);
    assert_eq!(q[82], 6);
    assert_eq!(q.len(), 83 + 1 + 5);
    let s = quic::short(&[7; 4], &[1]);
    assert_eq!(s, [0x40, 7, 7, 7, 7, 1]);
}

#[test]
#[should_panic(expected = "needs a TCP frame")]
fn tcp_setters_refuse_udp() {
    let _ = FrameBuilder::udp_v4([1, 1, 1, 1], 1, [2, 2, 2, 2], 2).seq(1);
}
