//! The XDP classifier under BPF_PROG_TEST_RUN: one fixture per branch, the
//! FORWARD rewrite checked field by field, PARK records checked byte by byte,
//! and a generated corpus where the kernel must agree with the host's
//! `classify` on every frame.

use migr_common::{
    classify::CLASSIFY_REASONS,
    maps::{
        Action, EVENT_BUDGET_OTHERS, EventKind, FAMILY_V4, ForwardMode, ListenerEntry,
        MAX_JOINS_PER_TOKEN, NO_SERVICE, REPLAY_FRAME_MAX, Reason, SERVICE_HOLD,
        SMALL_SERVER_ID_LIMIT, Verdict,
    },
    wire::tcp::{TCP_ACK, TCP_SYN},
};
use migr_testkit::{
    corpus::*,
    fixture::{Fixture, TEST_RUN_IFINDEX, forward_v4, listener_key, service, v4},
    frames::{FrameBuilder, mptcp, quic, verify_checksums},
};
use migr_user::{
    datapath::{DatapathConfig, MAIN_PROGRAM, XdpAction, monotonic_ns},
    datapath_log::DatapathLog,
    mptcp::mptcp_token,
};

/// Runs `frame`, checks the kernel against the host and returns the outcome.
fn check(f: &mut Fixture, frame: &[u8]) -> migr_testkit::fixture::Outcome {
    let expected = f.expect(frame);
    let got = f.run(frame, &ALL).expect("test_run");
    assert_eq!(got.action, expected.action, "action for {frame:02x?}");
    assert_eq!(
        got.service_id, expected.service_id,
        "service for {frame:02x?}"
    );
    assert_eq!(got.verdict, expected.verdict, "verdict for {frame:02x?}");
    assert_eq!(
        got.frame_out, expected.frame_out,
        "frame out for {frame:02x?}"
    );
    got
}

fn reason(o: &migr_testkit::fixture::Outcome, r: Reason) -> u64 {
    o.reasons[r as usize]
}

#[test]
fn each_action_on_its_listener() {
    let mut f = fixture();
    let o = check(&mut f, &udp(port_of(PASS_SVC), b"hi"));
    assert_eq!(
        (o.action, o.service_id, o.verdict),
        (XdpAction::Pass, PASS_SVC, Verdict::Pass)
    );
    let o = check(&mut f, &udp(port_of(DROP_SVC), b"hi"));
    assert_eq!((o.action, o.verdict), (XdpAction::Drop, Verdict::Drop));
    let o = check(&mut f, &udp(port_of(PARK_SVC), b"hi"));
    assert_eq!((o.action, o.verdict), (XdpAction::Drop, Verdict::Park));
    let o = check(&mut f, &udp(port_of(FWD_SVC), b"hi"));
    assert_eq!((o.action, o.verdict), (XdpAction::Tx, Verdict::Forward));
    let o = check(&mut f, &udp(port_of(REDIRECT_SVC), b"hi"));
    assert_eq!(
        (o.action, o.verdict),
        (XdpAction::Redirect, Verdict::Forward)
    );
    // Not a listener: no service, passed.
    let o = check(&mut f, &udp(9, b"hi"));
    assert_eq!((o.action, o.service_id), (XdpAction::Pass, NO_SERVICE));
}

#[test]
fn unparsable_frames_pass_and_are_counted() {
    let mut f = fixture();
    let arp = FrameBuilder::ethernet(0x0806).payload(&[0u8; 28]).build();
    let o = check(&mut f, &arp);
    assert_eq!((o.action, reason(&o, Reason::NotIp)), (XdpAction::Pass, 1));

    let mut truncated = udp(port_of(DROP_SVC), b"payload");
    truncated.truncate(14 + 10);
    let o = check(&mut f, &truncated);
    assert_eq!(
        (o.action, reason(&o, Reason::Malformed)),
        (XdpAction::Pass, 1)
    );

    let mut bad_ihl = udp(port_of(DROP_SVC), b"x");
    bad_ihl[14] = 0x44;
    let o = check(&mut f, &bad_ihl);
    assert_eq!(
        (o.action, reason(&o, Reason::Malformed)),
        (XdpAction::Pass, 1)
    );

    let fragment = FrameBuilder::udp_v4(CLIENT, 1, SERVER, port_of(DROP_SVC))
        .more_fragments(true)
        .payload(b"frag")
        .build();
    let o = check(&mut f, &fragment);
    assert_eq!(
        (o.action, reason(&o, Reason::Unsupported)),
        (XdpAction::Pass, 1)
    );

    let qinq = FrameBuilder::udp_v4(CLIENT, 1, SERVER, port_of(DROP_SVC))
        .vlan_tag(0x88a8, 5)
        .payload(b"q")
        .build();
    let o = check(&mut f, &qinq);
    assert_eq!(o.action, XdpAction::Pass);

    let tcp_bad_option = FrameBuilder::tcp_v4(CLIENT, 1, SERVER, port_of(DROP_SVC))
        .tcp_options(&[2, 1, 0, 0])
        .build();
    let o = check(&mut f, &tcp_bad_option);
    assert_eq!(
        (o.action, reason(&o, Reason::Malformed)),
        (XdpAction::Pass, 1)
    );
}

#[test]
fn vlan_and_ipv6_frames_classify() {
    let mut f = fixture();
    let tagged = FrameBuilder::udp_v4(CLIENT, 1, SERVER, port_of(DROP_SVC))
        .vlan(42)
        .payload(b"v")
        .build();
    let o = check(&mut f, &tagged);
    assert_eq!((o.service_id, o.verdict), (DROP_SVC, Verdict::Drop));

    let v6 = FrameBuilder::tcp_v6(
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        40000,
        SERVER6,
        port_of(FWD6_SVC),
    )
    .ipv6_ext(0, &[0u8; 6])
    .ipv6_ext(60, &[0u8; 14])
    .payload(b"over v6")
    .build();
    let o = check(&mut f, &v6);
    assert_eq!(
        (o.service_id, o.verdict, o.action),
        (FWD6_SVC, Verdict::Forward, XdpAction::Tx)
    );
    verify_checksums(&o.frame_out).expect("valid checksums after the IPv6 rewrite");
}

/// Server ids below `SMALL_SERVER_ID_LIMIT` live in an array, the others in
/// a hash map: both route, and both unroute once removed.
#[test]
fn small_and_large_server_ids_route_alike() {
    use migr_common::{cid::CidConfig, maps::LISTENER_QUIC};
    let mut f = fixture();
    // A QUIC listener whose CIDs carry 3-byte server ids.
    let config = CidConfig::new(8, 1, 3).unwrap();
    let port = 4434;
    f.set_listener(
        listener_key(v4(SERVER), port, 17, FAMILY_V4),
        ListenerEntry {
            service_id: PASS_SVC,
            flags: LISTENER_QUIC,
            cid: config,
        },
    )
    .unwrap();
    let short = |server_id: u32| {
        let mut cid = vec![0x5a; 8];
        config.write_server_id(&mut cid, server_id).unwrap();
        udp(port, &quic::short(&cid, &[1; 20]))
    };
    let (small, large) = (0x42, 0x12_3456);
    assert!(small < SMALL_SERVER_ID_LIMIT && large >= SMALL_SERVER_ID_LIMIT);
    f.set_server_id(small, DROP_SVC).unwrap();
    f.set_server_id(large, FWD_SVC).unwrap();
    let o = check(&mut f, &short(small));
    assert_eq!((o.service_id, o.verdict), (DROP_SVC, Verdict::Drop));
    let o = check(&mut f, &short(large));
    assert_eq!((o.service_id, o.verdict), (FWD_SVC, Verdict::Forward));
    for id in [small, large] {
        f.remove_server_id(id).unwrap();
        let o = check(&mut f, &short(id));
        assert_eq!(
            (o.service_id, reason(&o, Reason::QuicUnknownServerId)),
            (PASS_SVC, 1),
            "server id {id:#x} after its removal"
        );
    }
}

#[test]
fn quic_routes_by_server_id() {
    let mut f = fixture();
    // A short header with server id 0x103 belongs to FWD_SVC, whatever the listener says.
    let o = check(
        &mut f,
        &udp(QUIC_PORT, &quic::short(&cid_for(0x103), &[1, 2, 3, 4])),
    );
    assert_eq!((o.service_id, o.verdict), (FWD_SVC, Verdict::Forward));
    let o = check(
        &mut f,
        &udp(QUIC_PORT, &quic::short(&cid_for(0x105), &[1; 20])),
    );
    assert_eq!((o.service_id, o.verdict), (DROP_SVC, Verdict::Drop));
    // Unknown server id: the listener's service, and counted.
    let o = check(
        &mut f,
        &udp(QUIC_PORT, &quic::short(&cid_for(0x999), &[1; 20])),
    );
    assert_eq!(o.service_id, PASS_SVC);
    assert_eq!(reason(&o, Reason::QuicUnknownServerId), 1);
    // A client's Initial (random DCID): the listener's service, not counted as unknown.
    let initial = quic::initial(&[7; 8], &[8; 8], &[], &[0; 40]);
    let o = check(&mut f, &udp(QUIC_PORT, &initial));
    assert_eq!(
        (o.service_id, reason(&o, Reason::QuicUnknownServerId)),
        (PASS_SVC, 0)
    );
    // A Handshake packet whose DCID the server issued routes by its id.
    let handshake = quic::long(
        1,
        migr_common::wire::quic::LongPacketType::Handshake,
        &cid_for(0x102),
        &[9; 8],
        &[0; 30],
    );
    let o = check(&mut f, &udp(QUIC_PORT, &handshake));
    assert_eq!((o.service_id, o.verdict), (PARK_SVC, Verdict::Park));
    // Fixed bit clear: malformed QUIC, still the listener's datagram.
    let o = check(&mut f, &udp(QUIC_PORT, &[0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
    assert_eq!(
        (o.service_id, reason(&o, Reason::QuicMalformed)),
        (PASS_SVC, 1)
    );
    // A CID length of 21 in a long header.
    let long21 = quic::long_raw(0xc0, 1, &[1; 21], &[2; 4], &[0; 8]);
    let o = check(&mut f, &udp(QUIC_PORT, &long21));
    assert_eq!(reason(&o, Reason::QuicMalformed), 1);
    // Version negotiation is recognised (and routes like an Initial).
    let vn = quic::version_negotiation(&[3; 8], &[4; 8], &[1, 0xff00_001d]);
    let o = check(&mut f, &udp(QUIC_PORT, &vn));
    assert_eq!(
        (o.service_id, reason(&o, Reason::QuicMalformed)),
        (PASS_SVC, 0)
    );
}

#[test]
fn mptcp_join_with_known_token_is_learned() {
    let mut f = fixture();
    // Sent to an address no listener owns: only the token can classify it.
    let join = FrameBuilder::tcp_v4(CLIENT, 41000, [10, 1, 0, 99], 8080)
        .flags(TCP_SYN)
        .tcp_options(&mptcp::join_syn(false, 2, 0xfeed_f00d, 0x1234_5678))
        .build();
    let c = f.classify(&join);
    let o = check(&mut f, &join);
    assert_eq!((o.service_id, o.verdict), (PARK_SVC, Verdict::Park));
    assert_eq!(reason(&o, Reason::FlowsLearned), 1);
    f.learn(&c);
    assert_eq!(f.dp.flow(&c.flow).unwrap(), Some(PARK_SVC));
    let learned = f.dp.drain_events().unwrap();
    assert!(
        learned
            .iter()
            .any(|e| e.kind == EventKind::FlowLearned as u32 && e.token == 0xfeed_f00d)
    );
    // Later packets of that subflow (DSS, no token) follow the learned 5-tuple.
    let data = FrameBuilder::tcp_v4(CLIENT, 41000, [10, 1, 0, 99], 8080)
        .flags(TCP_ACK)
        .tcp_options(&mptcp::dss(&mptcp::Dss {
            data_ack: Some(7),
            ..Default::default()
        }))
        .payload(b"data")
        .build();
    let o = check(&mut f, &data);
    assert_eq!((o.service_id, o.verdict), (PARK_SVC, Verdict::Park));

    let unknown = FrameBuilder::tcp_v4(CLIENT, 41001, [10, 1, 0, 99], 8080)
        .flags(TCP_SYN)
        .tcp_options(&mptcp::join_syn(false, 2, 0xdead_beef, 1))
        .build();
    let o = check(&mut f, &unknown);
    assert_eq!(
        (o.service_id, reason(&o, Reason::MptcpUnknownToken)),
        (NO_SERVICE, 1)
    );
}

#[test]
fn a_token_learns_a_bounded_number_of_subflows() {
    // Spoofed joins of one token (which a made-up MP_CAPABLE can make the
    // agent learn) must not flush FLOWS.
    let mut f = fixture();
    for i in 0..MAX_JOINS_PER_TOKEN + 3 {
        let join = FrameBuilder::tcp_v4(CLIENT, 43000 + i as u16, [10, 1, 0, 99], 8080)
            .flags(TCP_SYN)
            .tcp_options(&mptcp::join_syn(false, 2, 0xfeed_f00d, i))
            .build();
        let o = f.run(&join, &ALL).unwrap();
        assert_eq!(
            o.service_id, PARK_SVC,
            "join {i} is classified by its token"
        );
        let expected = if i < MAX_JOINS_PER_TOKEN {
            (1, 0)
        } else {
            (0, 1)
        };
        assert_eq!(
            (
                reason(&o, Reason::FlowsLearned),
                reason(&o, Reason::JoinLimit)
            ),
            expected,
            "join {i}"
        );
    }
}

#[test]
fn joins_to_unknown_tokens_cannot_use_up_the_key_reports_budget() {
    // The budget is per CPU: stay on one. The flood is one BPF_PROG_TEST_RUN
    // call of many runs, well inside one budget window even under emulation.
    pin_to_cpu(0);
    let mut f = fixture();
    let join = FrameBuilder::tcp_v4(CLIENT, 44000, [10, 1, 0, 99], 8080)
        .flags(TCP_SYN)
        .tcp_options(&mptcp::join_syn(false, 2, 0xdead_0001, 1))
        .build();
    let before = f.dp.reasons().unwrap();
    f.dp.test_run_repeated(MAIN_PROGRAM, &join, 4 * EVENT_BUDGET_OTHERS)
        .unwrap();
    let after = f.dp.reasons().unwrap();
    let limited =
        after[Reason::EventsRateLimited as usize] - before[Reason::EventsRateLimited as usize];
    assert!(
        limited >= u64::from(2 * EVENT_BUDGET_OTHERS),
        "a flood of {} unknown joins: {limited} rate-limited",
        4 * EVENT_BUDGET_OTHERS
    );
    let ack = FrameBuilder::tcp_v4(CLIENT, 42000, SERVER, port_of(MPTCP_SVC))
        .flags(TCP_ACK)
        .tcp_options(&mptcp::capable_ack(1, 0x01, 7, 9))
        .build();
    let o = f.run(&ack, &ALL).unwrap();
    assert_eq!(
        (
            reason(&o, Reason::MptcpKeysReported),
            reason(&o, Reason::EventsRateLimited)
        ),
        (1, 0),
        "the key report has its own budget"
    );
}

/// Keeps this thread on `cpu` (per-CPU state must stay in one place).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn mptcp_capable_keys_are_reported_for_mptcp_services_only() {
    let mut f = fixture();
    let (client_key, server_key) = (0x1111_2222_3333_4444u64, 0x5555_6666_7777_8888u64);
    let ack = |dport| {
        FrameBuilder::tcp_v4(CLIENT, 42000, SERVER, dport)
            .flags(TCP_ACK)
            .tcp_options(&mptcp::capable_ack(1, 0x01, client_key, server_key))
            .build()
    };
    let o = check(&mut f, &ack(port_of(MPTCP_SVC)));
    assert_eq!(reason(&o, Reason::MptcpKeysReported), 1);
    let events = f.dp.drain_events().unwrap();
    assert_eq!(events.len(), 1);
    let e = events[0];
    assert_eq!(e.kind, EventKind::MptcpKeys as u32);
    assert_eq!(
        (e.service_id, e.sender_key, e.receiver_key),
        (MPTCP_SVC, client_key, server_key)
    );
    assert_eq!(e.flow.dst_port, port_of(MPTCP_SVC));
    assert_ne!(mptcp_token(e.receiver_key), 0);
    // A service without the MPTCP flag: nothing reported.
    let o = check(&mut f, &ack(port_of(PASS_SVC)));
    assert_eq!(reason(&o, Reason::MptcpKeysReported), 0);
    assert!(f.dp.drain_events().unwrap().is_empty());
    // A malformed MPTCP option is counted and the packet still classified.
    let bad = FrameBuilder::tcp_v4(CLIENT, 42000, SERVER, port_of(MPTCP_SVC))
        .flags(TCP_ACK)
        .tcp_options(&[30, 5, 0x00, 1, 1, 1, 1, 1])
        .build();
    let o = check(&mut f, &bad);
    assert_eq!(
        (o.service_id, reason(&o, Reason::MptcpMalformed)),
        (MPTCP_SVC, 1)
    );
}

#[test]
fn forward_rewrites_addresses_with_valid_checksums() {
    let mut f = fixture();
    for frame in [
        FrameBuilder::udp_v4(CLIENT, 50000, SERVER, port_of(FWD_SVC))
            .payload(&[0xab; 333])
            .build(),
        FrameBuilder::tcp_v4(CLIENT, 50001, SERVER, port_of(FWD_SVC))
            .flags(TCP_ACK)
            .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
            .payload(b"tcp data")
            .build(),
        FrameBuilder::udp_v4(CLIENT, 50002, SERVER, port_of(FWD_SVC))
            .vlan(7)
            .ipv4_options(&[1, 1, 1, 0])
            .payload(b"opts")
            .build(),
    ] {
        verify_checksums(&frame).expect("the input is valid");
        let o = check(&mut f, &frame);
        assert_eq!((o.action, o.verdict), (XdpAction::Tx, Verdict::Forward));
        let out = &o.frame_out;
        assert_eq!(out.len(), frame.len());
        let target = forward_v4(NEW_SERVER, 5443, ForwardMode::AddressChanging, 1);
        assert_eq!(&out[0..6], &target.dst_mac, "destination MAC");
        assert_eq!(&out[6..12], &target.src_mac, "source MAC");
        let info = migr_common::wire::packet::parse_packet(&out[..]).expect("output parses");
        let l3 = info.l3_offset as usize;
        let l4 = info.l4_offset as usize;
        assert_eq!(&out[l3 + 16..l3 + 20], &NEW_SERVER, "destination IP");
        assert_eq!(&out[l3 + 12..l3 + 16], &CLIENT, "source IP unchanged");
        assert_eq!(
            &out[l4 + 2..l4 + 4],
            &5443u16.to_be_bytes(),
            "destination port"
        );
        assert_eq!(
            &out[l4..l4 + 2],
            &frame[l4..l4 + 2],
            "source port unchanged"
        );
        // Nothing but those fields and the checksums changed.
        let changed: Vec<usize> = (0..frame.len()).filter(|i| out[*i] != frame[*i]).collect();
        let allowed = |i: usize| {
            i < 12
                || (l3 + 10..l3 + 12).contains(&i)
                || (l3 + 16..l3 + 20).contains(&i)
                || (l4 + 2..l4 + 4).contains(&i)
                || (l4 + 6..l4 + 8).contains(&i)
                || (l4 + 16..l4 + 18).contains(&i)
        };
        assert!(
            changed.iter().all(|i| allowed(*i)),
            "unexpected bytes changed: {changed:?}"
        );
        verify_checksums(out).expect("checksums valid after the rewrite");
    }
}

#[test]
fn same_ip_forward_rewrites_macs_only() {
    let mut f = fixture();
    let frame = FrameBuilder::tcp_v4(CLIENT, 50000, SERVER, port_of(SAMEIP_SVC))
        .flags(TCP_ACK)
        .payload(b"coat")
        .build();
    let o = check(&mut f, &frame);
    assert_eq!((o.action, o.verdict), (XdpAction::Tx, Verdict::Forward));
    assert_eq!(&o.frame_out[12..], &frame[12..], "only the MACs change");
    assert_ne!(&o.frame_out[..12], &frame[..12]);
}

#[test]
fn forward_without_a_device_is_counted_and_dropped() {
    // A datapath without the DEVMAP entry.
    let mut bare = Fixture::new().unwrap();
    bare.set_service(
        REDIRECT_SVC,
        service(
            Action::Forward,
            0,
            forward_v4(NEW_SERVER, 0, ForwardMode::AddressChanging, 77),
        ),
    )
    .unwrap();
    bare.set_listener(
        listener_key(v4(SERVER), port_of(REDIRECT_SVC), 17, FAMILY_V4),
        ListenerEntry {
            service_id: REDIRECT_SVC,
            ..Default::default()
        },
    )
    .unwrap();
    let o = bare
        .run(&udp(port_of(REDIRECT_SVC), b"x"), &[REDIRECT_SVC])
        .unwrap();
    assert_eq!(
        (o.action, o.verdict),
        (XdpAction::Drop, Verdict::ForwardFailed)
    );
    assert_eq!(reason(&o, Reason::NoRedirectTarget), 1);
    // Family mismatch: an IPv6 packet toward an IPv4 target.
    let mut f = fixture();
    let v6 = v6_toward_a_v4_target(&mut f);
    let o = check(&mut f, &v6);
    assert_eq!(
        (o.verdict, reason(&o, Reason::ForwardUnsupported)),
        (Verdict::ForwardFailed, 1)
    );
}

/// Points `FWD6_SVC` (an IPv6 listener) at an IPv4 target; returns a frame
/// to it, whose FORWARD fails (`forward_unsupported`).
fn v6_toward_a_v4_target(f: &mut Fixture) -> Vec<u8> {
    f.set_service(
        FWD6_SVC,
        service(
            Action::Forward,
            0,
            forward_v4(
                NEW_SERVER,
                0,
                ForwardMode::AddressChanging,
                TEST_RUN_IFINDEX,
            ),
        ),
    )
    .unwrap();
    FrameBuilder::udp_v6(NEW_SERVER6, 1, SERVER6, port_of(FWD6_SVC)).build()
}

#[test]
fn park_copies_the_whole_frame_in_order() {
    let mut f = fixture();
    let frames: Vec<Vec<u8>> = [1usize, 64, 600, 1400, 1472]
        .iter()
        .enumerate()
        .map(|(i, len)| {
            let payload: Vec<u8> = (0..*len).map(|b| (b + i) as u8).collect();
            udp(port_of(PARK_SVC), &payload)
        })
        .collect();
    for frame in &frames {
        let o = check(&mut f, frame);
        assert_eq!(o.verdict, Verdict::Park);
    }
    let parked = f.dp.drain_parked().unwrap();
    assert_eq!(parked.len(), frames.len());
    for (record, frame) in parked.iter().zip(&frames) {
        assert_eq!(&record.frame, frame, "parked bytes equal the input");
        assert_eq!(record.header.service_id, PARK_SVC);
        assert_eq!(record.header.frame_len as usize, frame.len());
        assert_eq!(record.header.copied as usize, frame.len());
        assert_eq!(record.header.ifindex, TEST_RUN_IFINDEX);
    }
    assert!(
        parked
            .windows(2)
            .all(|w| w[0].header.timestamp_ns <= w[1].header.timestamp_ns)
    );
    // Jumbo-sized records: a frame above 1536 bytes is parked whole too.
    let big = udp(port_of(PARK_SVC), &[0x77; 3000]);
    let o = check(&mut f, &big);
    assert_eq!(o.verdict, Verdict::Park);
    assert_eq!(f.dp.drain_parked().unwrap()[0].frame, big);
}

/// The fast path reads a frame's linear part only: a multi-buffer frame (a
/// test run above a page becomes one) is still counted at its whole length,
/// non-IP (the fast path asks the kernel) or IP (its packet goes on into the
/// fragments, so the full classifier takes it).
#[test]
fn multi_buffer_frames_are_counted_at_their_whole_length() {
    let mut f = fixture();
    let frames = [
        FrameBuilder::ethernet(0x88b5)
            .payload(&vec![7; 6000])
            .build(),
        udp(9, &vec![1; 6000]),
        FrameBuilder::tcp_v4(CLIENT, 41000, SERVER, 9)
            .flags(TCP_ACK)
            .tcp_options(&timestamps_only(&mut Rng(3)))
            .payload(&vec![2; 6000])
            .build(),
    ];
    for frame in frames {
        let before = f.dp.service_counters(NO_SERVICE).unwrap();
        let o = check(&mut f, &frame);
        assert_eq!(o.verdict, Verdict::Pass);
        let after = f.dp.service_counters(NO_SERVICE).unwrap();
        let pass = Verdict::Pass as usize;
        assert_eq!(
            (
                after.packets[pass] - before.packets[pass],
                after.bytes[pass] - before.bytes[pass]
            ),
            (1, frame.len() as u64),
            "{} bytes",
            frame.len()
        );
    }
}

#[test]
fn frames_a_replay_cannot_send_pass_instead_of_parking() {
    // A replay runs the program on live frames of one page at most, so a
    // parked frame above REPLAY_FRAME_MAX could never come back: such frames
    // (including multi-buffer ones) pass, as they would without migr, and
    // are counted; frames up to the limit park whole.
    let mut f = fixture();
    let headers = udp(port_of(PARK_SVC), &[]).len();
    let fits = udp(port_of(PARK_SVC), &vec![0x5a; REPLAY_FRAME_MAX - headers]);
    let o = f.run(&fits, &ALL).unwrap();
    assert_eq!((o.action, o.verdict), (XdpAction::Drop, Verdict::Park));
    let parked = f.dp.drain_parked().unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].frame, fits, "parked whole");
    for len in [REPLAY_FRAME_MAX + 1, 4000, 9216, 9217] {
        let frame = udp(port_of(PARK_SVC), &vec![0x5a; len - headers]);
        let o = f.run(&frame, &ALL).unwrap();
        assert_eq!(
            (o.action, o.verdict, reason(&o, Reason::TooLargeToPark)),
            (XdpAction::Pass, Verdict::Pass, 1),
            "{len} bytes"
        );
        assert!(f.dp.drain_parked().unwrap().is_empty(), "{len} bytes");
    }
}

#[test]
fn once_the_agents_lease_ran_out_frames_stop_waiting_for_it() {
    let mut f = fixture();
    let none = Default::default();
    let frame = udp(port_of(PARK_SVC), b"lease");
    let now = monotonic_ns();
    // Parking under a lease that runs: parked.
    let mut parking = service(Action::Park, 0, none);
    parking.lease_until_ns = now + 60_000_000_000;
    f.set_service(PARK_SVC, parking).unwrap();
    let o = f.run(&frame, &ALL).unwrap();
    assert_eq!((o.action, o.verdict), (XdpAction::Drop, Verdict::Park));
    // The record stays in the ring: a backlog for the held service below.
    // Parking under a lease that ran out: passed, counted.
    parking.lease_until_ns = now.saturating_sub(1);
    f.set_service(PARK_SVC, parking).unwrap();
    let o = f.run(&frame, &ALL).unwrap();
    assert_eq!(
        (o.action, o.verdict, reason(&o, Reason::LeaseExpired)),
        (XdpAction::Pass, Verdict::Pass, 1)
    );
    // Held behind that backlog under a lease that runs: parked; after it: passed.
    let mut held = service(Action::Pass, SERVICE_HOLD, none);
    held.lease_until_ns = now + 60_000_000_000;
    f.set_service(PARK_SVC, held).unwrap();
    let o = f.run(&frame, &ALL).unwrap();
    assert_eq!(
        (o.verdict, reason(&o, Reason::HeldBehindBacklog)),
        (Verdict::Park, 1)
    );
    held.lease_until_ns = now.saturating_sub(1);
    f.set_service(PARK_SVC, held).unwrap();
    let o = f.run(&frame, &ALL).unwrap();
    assert_eq!(
        (o.action, o.verdict, reason(&o, Reason::LeaseExpired)),
        (XdpAction::Pass, Verdict::Pass, 1)
    );
    assert_eq!(f.dp.drain_parked().unwrap().len(), 2);
}

#[test]
fn a_full_park_ring_is_counted_not_silent() {
    let mut f = fixture_with(&DatapathConfig {
        park_ring_bytes: 16 * 1024,
        ..Default::default()
    });
    let frame = udp(port_of(PARK_SVC), &[1; 1000]);
    let mut parked = 0;
    let mut failed = 0;
    for _ in 0..40 {
        let o = f.run(&frame, &[PARK_SVC]).unwrap();
        match o.verdict {
            Verdict::Park => parked += 1,
            Verdict::ParkFailed => {
                failed += 1;
                assert_eq!(o.reasons[Reason::ParkOverflow as usize], 1);
                assert_eq!(o.action, XdpAction::Drop);
            }
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    assert!(parked > 0 && failed > 0, "parked {parked}, failed {failed}");
    assert_eq!(f.dp.drain_parked().unwrap().len(), parked);
    let counters = f.dp.service_counters(PARK_SVC).unwrap();
    assert_eq!(counters.packets[Verdict::Park as usize], parked as u64);
    assert_eq!(
        counters.packets[Verdict::ParkFailed as usize],
        failed as u64
    );
}

#[test]
fn kernel_and_host_agree_on_a_generated_corpus() {
    const FRAMES: usize = 10_000;
    let mut f = fixture();
    let mut rng = Rng(0x6d69_6772_2024);
    let mut mutated = 0;
    let mut by_verdict = std::collections::BTreeMap::new();
    for i in 0..FRAMES {
        let mut frame = valid_frame(&mut rng);
        if i % 2 == 1 {
            mutate(&mut rng, &mut frame);
            mutated += 1;
        }
        let c = f.classify(&frame);
        let expected = f.expect(&frame);
        let classes_before = f.dp.proto_counters().unwrap();
        let got = f.run(&frame, &ALL).expect("test_run");
        assert_eq!(
            (got.action, got.service_id, got.verdict),
            (expected.action, expected.service_id, expected.verdict),
            "frame {i}: {frame:02x?}"
        );
        // The counters too: the fast path and the full classifier count alike.
        for r in CLASSIFY_REASONS {
            assert_eq!(
                got.reasons[r as usize],
                u64::from(c.reasons.contains(r)),
                "frame {i}, reason {}: {frame:02x?}",
                r.name()
            );
        }
        let classes_after = f.dp.proto_counters().unwrap();
        let class = c.proto_class() as usize;
        for (k, (after, before)) in classes_after.iter().zip(classes_before).enumerate() {
            let want = u64::from(k == class);
            assert_eq!(after - before, want, "frame {i}, class {k}: {frame:02x?}");
        }
        assert_eq!(
            got.frame_out, expected.frame_out,
            "frame {i} output: {frame:02x?}"
        );
        f.learn(&c);
        *by_verdict.entry(format!("{:?}", got.verdict)).or_insert(0) += 1;
        if i % 1000 == 999 {
            f.dp.drain_parked().unwrap();
            f.dp.drain_events().unwrap();
        }
    }
    println!("{FRAMES} frames ({mutated} mutated), verdicts: {by_verdict:?}");
    for verdict in ["Pass", "Drop", "Park", "Forward"] {
        assert!(
            by_verdict.contains_key(verdict),
            "the corpus never hit {verdict}"
        );
    }
}

/// The fast path skips `LISTENERS` for ports `PORT_LISTENERS` names no listener for and
/// `FLOWS` for ports without a `FLOW_PORTS` mark: the agent's side of that
/// contract (bits set before and cleared after the listeners) and the frames
/// it decides.
#[test]
fn the_fast_paths_tables_follow_the_listeners_and_flows() {
    use migr_common::maps::FlowKey;
    let mut f = Fixture::new().expect("load the datapath");
    f.set_service(1, service(Action::Drop, 0, Default::default()))
        .unwrap();
    let udp = listener_key(v4(SERVER), 7000, 17, FAMILY_V4);
    let tcp = listener_key(v4(SERVER), 7000, 6, FAMILY_V4);
    let to_7000 = FrameBuilder::udp_v4(CLIENT, 5000, SERVER, 7000)
        .payload(b"x")
        .build();
    assert_eq!(f.dp.port_listener(7000, 17).unwrap(), 0);
    assert!(!f.dp.flow_port(8080).unwrap());
    let o = f.run(&to_7000, &[NO_SERVICE, 1]).unwrap();
    assert_eq!((o.service_id, o.verdict), (NO_SERVICE, Verdict::Pass));

    let entry = ListenerEntry {
        service_id: 1,
        ..Default::default()
    };
    f.dp.set_listener(&udp, &entry).unwrap();
    f.dp.set_listener(&tcp, &entry).unwrap();
    assert_ne!(f.dp.port_listener(7000, 17).unwrap(), 0);
    assert_ne!(f.dp.port_listener(7000, 6).unwrap(), 0);
    assert_eq!(f.dp.port_listener(7001, 17).unwrap(), 0);
    let o = f.run(&to_7000, &[NO_SERVICE, 1]).unwrap();
    assert_eq!((o.service_id, o.verdict), (1, Verdict::Drop));

    // Each protocol names its own listeners.
    f.dp.remove_listener(&udp).unwrap();
    assert_eq!(f.dp.port_listener(7000, 17).unwrap(), 0);
    assert_ne!(f.dp.port_listener(7000, 6).unwrap(), 0);
    let o = f.run(&to_7000, &[NO_SERVICE, 1]).unwrap();
    assert_eq!((o.service_id, o.verdict), (NO_SERVICE, Verdict::Pass));
    f.dp.remove_listener(&tcp).unwrap();
    assert_eq!(f.dp.port_listener(7000, 6).unwrap(), 0);

    // A learned flow classifies a plain TCP segment (no options, no listener).
    let segment = FrameBuilder::tcp_v4(CLIENT, 41000, SERVER, 8080)
        .flags(TCP_ACK)
        .payload(b"data")
        .build();
    let o = f.run(&segment, &[NO_SERVICE, 1]).unwrap();
    assert_eq!((o.service_id, o.verdict), (NO_SERVICE, Verdict::Pass));
    let flow = FlowKey {
        src_addr: v4(CLIENT),
        dst_addr: v4(SERVER),
        src_port: 41000,
        dst_port: 8080,
        proto: 6,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    f.dp.set_flow(&flow, 1).unwrap();
    assert!(f.dp.flow_port(8080).unwrap());
    assert!(!f.dp.flow_port(8081).unwrap());
    let o = f.run(&segment, &[NO_SERVICE, 1]).unwrap();
    assert_eq!((o.service_id, o.verdict), (1, Verdict::Drop));
    // The same client to another port of the server is no flow's.
    let other_port = FrameBuilder::tcp_v4(CLIENT, 41000, SERVER, 8081)
        .flags(TCP_ACK)
        .payload(b"data")
        .build();
    let o = f.run(&other_port, &[NO_SERVICE, 1]).unwrap();
    assert_eq!((o.service_id, o.verdict), (NO_SERVICE, Verdict::Pass));
}

/// With debug logs on (`--datapath-log debug`) the program loads (on every
/// kernel the VM suite boots), decides as the host does, and its records
/// say each verdict; a FORWARD that fails is logged as a warning.
#[test]
fn debug_logs_load_decide_alike_and_name_the_verdicts() {
    let config = DatapathConfig {
        log: DatapathLog::Debug,
        ..Default::default()
    };
    let mut f = fixture_with(&config);
    let o = check(&mut f, &udp(port_of(PARK_SVC), b"hi"));
    assert_eq!(o.verdict, Verdict::Park);
    let o = check(&mut f, &udp(port_of(PASS_SVC), b"hi"));
    assert_eq!(o.verdict, Verdict::Pass);
    // An IPv6 frame toward an IPv4 target: the FORWARD fails.
    let v6 = v6_toward_a_v4_target(&mut f);
    let o = check(&mut f, &v6);
    assert_eq!(o.verdict, Verdict::ForwardFailed);
    let lines = f.dp.drain_logs();
    let texts: Vec<(log::Level, &str)> = lines.iter().map(|l| (l.level, l.text.as_str())).collect();
    let park = format!("service {PARK_SVC}: park (");
    let pass = format!("service {PASS_SVC}: pass (");
    let failed = format!("service {FWD6_SVC}: forward_failed, forward_unsupported");
    for (level, want) in [
        (log::Level::Debug, park.as_str()),
        (log::Level::Debug, pass.as_str()),
        (log::Level::Warn, failed.as_str()),
    ] {
        assert!(
            texts
                .iter()
                .any(|(l, t)| *l == level && t.starts_with(want)),
            "{want} at {level}: {texts:?}"
        );
    }
    // Off (the default): the same frames, no records.
    let mut quiet = fixture();
    check(&mut quiet, &udp(port_of(PARK_SVC), b"hi"));
    assert_eq!(quiet.dp.drain_logs(), Vec::new());
}

/// A `migr` that outlives the agent that loaded it (its link stays pinned
/// while no agent runs, or until the next one attaches) still reaches the
/// full classifier: the agent pins `FULL_PATH` beside the links once its
/// `migr` is attached, and a program array no descriptor or pin holds is
/// emptied. The next agent's load keeps an array of its own until it pins
/// it in the old one's place.
#[test]
fn the_full_path_outlives_the_agent_that_loaded_it() {
    use aya::programs::{TestRun as _, TestRunOptions, Xdp};
    use aya_obj::programs::XdpAttachType;
    use migr_user::datapath::{Datapath, FULL_PATH_PIN};

    migr_testkit::require_privileges();
    let dir = Pins::new("full-path");
    let program_pin = dir.0.join("migr-program");
    // VLAN-tagged: only the full classifier decides it.
    let tagged = FrameBuilder::udp_v4(CLIENT, 40000, SERVER, 7100)
        .vlan(5)
        .payload(b"x")
        .build();
    let run = |program: &Xdp| {
        let mut out = vec![0u8; tagged.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&tagged),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        XdpAction::from(result.return_value)
    };
    {
        let mut first = Datapath::load_pinned(&DatapathConfig::default(), &dir.0)
            .expect("load the datapath with pins");
        first
            .set_service(1, &service(Action::Drop, 0, Default::default()))
            .unwrap();
        first
            .set_listener(
                &listener_key(v4(SERVER), 7100, 17, FAMILY_V4),
                &ListenerEntry {
                    service_id: 1,
                    ..Default::default()
                },
            )
            .unwrap();
        // Standing for the pinned link that keeps `migr` attached.
        first
            .program(MAIN_PROGRAM)
            .unwrap()
            .pin(&program_pin)
            .unwrap();
        first.pin_full_path(&dir.0).unwrap();
        assert!(dir.0.join(FULL_PATH_PIN).exists(), "FULL_PATH pinned");
    }
    // The agent that loaded it is gone: only the pins hold its objects.
    let left = Xdp::from_pin(&program_pin, XdpAttachType::Interface).unwrap();
    assert_eq!(
        run(&left),
        XdpAction::Drop,
        "decided by the full classifier"
    );

    let mut second =
        Datapath::load_pinned(&DatapathConfig::default(), &dir.0).expect("load it again");
    assert_eq!(
        run(&left),
        XdpAction::Drop,
        "the first load's full path, still"
    );
    second.pin_full_path(&dir.0).unwrap();
    let own = second.test_run(MAIN_PROGRAM, &tagged).unwrap();
    assert_eq!(
        own.action,
        XdpAction::Drop,
        "the second load's own full path"
    );
}

/// A pin directory on bpffs for one test, removed with what it holds when
/// the test ends, passed or failed.
struct Pins(std::path::PathBuf);

impl Pins {
    fn new(test: &str) -> Self {
        Self(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/migr-t{}-{test}",
            std::process::id()
        )))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Listeners sharing a port and protocol: `PORT_LISTENERS` names one (the
/// fast way), the other is found in `LISTENERS`; removing the named one names
/// the other. A datapath opened again on the pinned maps keeps a name that is
/// still right and drops one whose listener is gone.
#[test]
fn listeners_sharing_a_port_are_each_found() {
    use aya::maps::{HashMap, Map, MapData};
    use migr_common::maps::ListenerKey;
    use migr_user::{datapath::Datapath, pin_layout::maps_dir};

    migr_testkit::require_privileges();
    let dir = Pins::new("port-listeners");
    let port = 7200;
    let (a, b, other) = ([10, 1, 0, 1], [10, 1, 0, 2], [10, 1, 0, 3]);
    let to = |addr: [u8; 4]| {
        FrameBuilder::udp_v4(CLIENT, 40000, addr, port)
            .payload(b"x")
            .build()
    };
    let action = |dp: &mut Datapath, addr| dp.test_run(MAIN_PROGRAM, &to(addr)).unwrap().action;
    let key = |addr| listener_key(v4(addr), port, 17, FAMILY_V4);
    let load = || Datapath::load_pinned(&DatapathConfig::default(), &dir.0).expect("load");

    let named_a = {
        let mut dp = load();
        for id in [1, 2] {
            dp.set_service(id, &service(Action::Drop, 0, Default::default()))
                .unwrap();
        }
        for (addr, id) in [(a, 1), (b, 2)] {
            let entry = ListenerEntry {
                service_id: id,
                ..Default::default()
            };
            dp.set_listener(&key(addr), &entry).unwrap();
        }
        assert_ne!(dp.port_listener(port, 17).unwrap(), 0);
        assert_eq!(dp.port_listener(port, 6).unwrap(), 0, "UDP only");
        for addr in [a, b] {
            assert_eq!(action(&mut dp, addr), XdpAction::Drop, "{addr:?}");
        }
        assert_eq!(action(&mut dp, other), XdpAction::Pass, "no listener");

        // The last one set is named; without it, the other is.
        let named_b = dp.port_listener(port, 17).unwrap();
        dp.remove_listener(&key(b)).unwrap();
        let named_a = dp.port_listener(port, 17).unwrap();
        assert_ne!(named_a, 0);
        assert_ne!(named_a, named_b, "a fresh slot");
        assert_eq!(action(&mut dp, a), XdpAction::Drop);
        assert_eq!(action(&mut dp, b), XdpAction::Pass);
        named_a
    };

    {
        let mut dp = load();
        assert_eq!(dp.port_listener(port, 17).unwrap(), named_a, "kept");
        assert_eq!(action(&mut dp, a), XdpAction::Drop);
    }

    // A's entry gone from LISTENERS behind the agent's back (as if an agent
    // died between the two writes): the next one must not keep the name.
    let pinned = MapData::from_pin(maps_dir(&dir.0).join("LISTENERS")).unwrap();
    let mut listeners =
        HashMap::<_, ListenerKey, ListenerEntry>::try_from(Map::HashMap(pinned)).unwrap();
    listeners.remove(&key(a)).unwrap();
    let mut dp = load();
    assert_eq!(dp.port_listener(port, 17).unwrap(), 0, "renamed: none");
    assert_eq!(action(&mut dp, a), XdpAction::Pass);
}
