//! The foundation's privileged tests: the XDP program runs under
//! BPF_PROG_TEST_RUN and on a real veth pair, and test namespaces never leak.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use migr_common::maps::ProtoClass;
use migr_testkit::{NetNs, netns::netns_exists, require_privileges, veth_pair};
use migr_user::datapath::{AttachMode, Datapath, MAIN_PROGRAM, XdpAction};

/// A minimal Ethernet/IPv4/UDP frame (checksums do not matter to the counter).
fn udp_frame() -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 4];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((20 + 8 + 4) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&1234u16.to_be_bytes());
    f[36..38].copy_from_slice(&5678u16.to_be_bytes());
    f[38..40].copy_from_slice(&12u16.to_be_bytes());
    f
}

#[test]
fn test_run_passes_udp_and_counts_it_once() {
    require_privileges();
    let mut dp = Datapath::load().expect("load the XDP object");
    let before = dp.proto_counters().unwrap();
    let out = dp.test_run(MAIN_PROGRAM, &udp_frame()).unwrap();
    assert_eq!(out.action, XdpAction::Pass);
    assert_eq!(
        out.frame_out,
        udp_frame(),
        "the program must not modify the frame"
    );
    let after = dp.proto_counters().unwrap();
    for class in ProtoClass::ALL {
        let expected = u64::from(class == ProtoClass::Udp);
        assert_eq!(
            after[class as usize] - before[class as usize],
            expected,
            "counter {}",
            class.name()
        );
    }
}

#[test]
fn veth_traffic_is_counted_exactly_and_delivered() {
    require_privileges();
    const N: usize = 200;
    let sender = NetNs::new("tx").unwrap();
    let receiver = NetNs::new("rx").unwrap();
    veth_pair(
        &sender,
        "v-tx",
        "10.201.0.1/24",
        &receiver,
        "v-rx",
        "10.201.0.2/24",
    )
    .unwrap();

    let mut dp = Datapath::load().unwrap();
    let socket = receiver
        .run(|| {
            dp.attach(MAIN_PROGRAM, "v-rx", AttachMode::Native)?;
            let s = UdpSocket::bind("10.201.0.2:7000")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            anyhow::Ok(s)
        })
        .unwrap()
        .expect("attach in native mode and bind the receiver");

    sender
        .run(|| {
            let s = UdpSocket::bind("10.201.0.1:0").unwrap();
            for i in 0..N {
                s.send_to(format!("datagram {i}").as_bytes(), "10.201.0.2:7000")
                    .unwrap();
                // A short pause keeps the receiver's socket buffer from overflowing.
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .unwrap();

    let mut received = 0;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(10);
    while received < N && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok(_) => received += 1,
            Err(e) => panic!("after {received} datagrams: {e}"),
        }
    }
    assert_eq!(received, N, "every datagram must arrive");
    let counters = dp.proto_counters().unwrap();
    assert_eq!(
        counters[ProtoClass::Udp as usize],
        N as u64,
        "counters: {counters:?}"
    );
}

#[test]
fn namespaces_are_removed_when_a_test_fails() {
    require_privileges();
    let mut names = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let a = NetNs::new("fail-a").unwrap();
        let b = NetNs::new("fail-b").unwrap();
        veth_pair(&a, "v-fa", "10.202.0.1/24", &b, "v-fb", "10.202.0.2/24").unwrap();
        names.push(a.name().to_string());
        names.push(b.name().to_string());
        assert!(netns_exists(a.name()) && netns_exists(b.name()));
        panic!("deliberate failure inside a topology");
    }));
    assert!(outcome.is_err(), "the closure must have failed");
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(
            !netns_exists(name),
            "namespace {name} leaked after a failure"
        );
    }
}
