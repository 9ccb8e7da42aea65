//! The destination is unreachable during FORWARD.

use std::time::Duration;

use migr_testkit::agent_harness::*;
use serde_json::Value;

use crate::helpers::*;

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
