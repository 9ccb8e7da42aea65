//! Another XDP or TC program on the agent's interface.

use std::net::Ipv4Addr;

use migr_testkit::{agent_harness::*, frames::FrameBuilder};
use migr_user::datapath::{AttachMode, Datapath, PASS_PROGRAM};

/// XDP holds one program per interface. An interface that already has one,
/// attached through a bpf_link (bpfman, another migr) or through netlink
/// (`ip link set ... xdp`), makes the agent refuse to start with what it
/// found and what to do; the other program stays attached and untouched.
#[test]
fn an_interface_with_another_xdp_program_is_refused_and_left_alone() {
    let mut t = Topology::build(false, &[], false);

    // Through a bpf_link, held by this process.
    let mut other = Datapath::load().expect("load a program to stand for another tool's");
    t.src
        .run(|| other.attach(PASS_PROGRAM, "v-sc", AttachMode::Native))
        .unwrap()
        .expect("attach it");
    let (status, log) = t.src_agent.start_refused(&t.src);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("another XDP program is attached to v-sc"),
        "{log}"
    );
    assert!(log.contains("ip link set dev v-sc xdp off"), "{log}");
    let link = t.src.exec(&["ip", "link", "show", "dev", "v-sc"]).unwrap();
    assert!(link.contains("prog/xdp"), "still attached: {link}");
    drop(other);

    // Through netlink: a pinned program that `ip` attaches.
    let pin = std::path::PathBuf::from(format!("/sys/fs/bpf/migr-t{}-other", std::process::id()));
    let mut other = Datapath::load().unwrap();
    other
        .program(PASS_PROGRAM)
        .unwrap()
        .pin(&pin)
        .expect("pin the program");
    // From this thread in the namespace: `ip netns exec` would mount a
    // /sys of its own, without the pin.
    let attached = t
        .src
        .run(|| {
            std::process::Command::new("ip")
                .args(["link", "set", "dev", "v-sc", "xdpdrv", "pinned"])
                .arg(&pin)
                .status()
        })
        .unwrap();
    let _ = std::fs::remove_file(&pin);
    assert!(
        attached.expect("run ip").success(),
        "ip attaches the pinned program"
    );
    let (status, log) = t.src_agent.start_refused(&t.src);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("another XDP program is attached to v-sc"),
        "{log}"
    );
    let link = t.src.exec(&["ip", "link", "show", "dev", "v-sc"]).unwrap();
    assert!(link.contains("prog/xdp"), "still attached: {link}");
    t.src
        .ip(&["link", "set", "dev", "v-sc", "xdpdrv", "off"])
        .unwrap();

    // Once it is gone, the agent starts.
    t.src_agent.start(&t.src);
    println!(
        "refused: {}",
        log.lines()
            .find(|l| l.contains("another XDP program"))
            .unwrap_or("")
    );
}

/// TC programs chain (TCX): migr_tc hands every frame that is not one of
/// its forwards on to the next program instead of ending the chain.
#[test]
fn the_tc_program_hands_frames_it_does_not_own_to_the_next_program() {
    let mut dp = Datapath::load().expect("load the datapath");
    let frame = FrameBuilder::udp_v4(Ipv4Addr::new(10, 0, 0, 1), 1, Ipv4Addr::new(10, 0, 0, 2), 2)
        .payload(b"not migr's")
        .build();
    assert_eq!(dp.test_run_tc(&frame).expect("test run"), -1, "TCX_NEXT");
}
