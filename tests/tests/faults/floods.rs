//! Packets cannot change control state; events are rate-limited and read under load.

use std::time::{Duration, Instant};

use migr_common::{maps::REPLAY_META_MAGIC, wire::tcp::TCP_ACK};
use migr_testkit::{
    agent_harness::*,
    corpus::{Rng, mutate},
    frames::{FrameBuilder, mptcp},
    netns::mac_of,
};
use migr_user::token_quota::{TOKEN_BURST, TOKENS_PER_SECOND};
use serde_json::Value;

use crate::helpers::*;

/// MPTCP keys are read while the engine is busy. Its loop is held busy
/// (test hook `MIGR_TEST_ENGINE_NEVER_IDLE`: it never sleeps, as under a
/// flood to a frozen service or a long unpaced replay); key reports must
/// still become tokens at once, not when the loop next has nothing to do.
#[test]
fn mptcp_keys_are_read_while_the_engine_is_busy() {
    const MPTCP_PORT: u16 = 8081;
    const KEYS: u64 = 5;
    let mut t = Topology::build(false, &[], false);
    t.src_agent
        .env
        .push(("MIGR_TEST_ENGINE_NEVER_IDLE".into(), "1".into()));
    t.src_agent.start(&t.src);
    let a = &t.src_agent;
    let addr = format!("{SRC_IP}:{MPTCP_PORT}");
    a.ok(&[
        "service", "add", "--id", "5", "--name", "mp", "--mptcp", &addr,
    ]);
    let src_mac = mac_of(&t.client, "v-cs").unwrap();
    let dst_mac = mac_of(&t.src, "v-sc").unwrap();
    let raw = PacketSocket::new(&t.client, "v-cs");
    for i in 0..KEYS {
        let frame =
            FrameBuilder::tcp_v4([10, 41, 1, 1], 21000 + i as u16, [10, 41, 1, 2], MPTCP_PORT)
                .flags(TCP_ACK)
                .tcp_options(&mptcp::capable_ack(1, 0x01, 0x1111 + i, 0x2222 + i))
                .src_mac(src_mac)
                .dst_mac(dst_mac)
                .build();
        assert!(raw.send(&frame), "sending key report {i}");
    }
    wait_for(Duration::from_secs(5), "the tokens installed", || {
        pinned_u32_entries(&a.pin_dir, "TOKENS") == KEYS as usize
    });
    assert_eq!(reason(a, "mptcp_keys_reported"), KEYS);
    println!("busy engine: {KEYS} of {KEYS} key reports became tokens");
}

/// A flood of MP_CAPABLE third ACKs, each with new keys, at an MPTCP
/// service, then a flood of malformed and replay-tag-carrying frames: the
/// datapath's event budget suppresses most key reports
/// (`events_rate_limited`), the agent's memory stays bounded, and no
/// service's control state (spec, phase, datapath action, timeline) moves.
#[test]
fn packet_floods_move_only_counters_and_the_agent_memory_stays_bounded() {
    const MPTCP_PORT: u16 = 8080;
    const FLOOD: Duration = Duration::from_secs(3);
    let mut t = Topology::new(false, &[]);
    let a = &t.src_agent;
    a.ok(&[
        "service",
        "add",
        "--id",
        "5",
        "--name",
        "mp",
        "--mptcp",
        &format!("{SRC_IP}:{MPTCP_PORT}"),
    ]);
    a.add_udp_service(6, "kv", &format!("{SRC_IP}:{PORT}"));
    a.phase("kv", "freeze");
    let services_before: Vec<Value> = ["mp", "kv"]
        .iter()
        .map(|s| control_state(&a.service(s)))
        .collect();
    let reasons_before = reasons(a);
    let pid = a.pid();
    let (rss_before, hwm_before) = memory_kib(pid);

    let src_mac = mac_of(&t.client, "v-cs").unwrap();
    let dst_mac = mac_of(&t.src, "v-sc").unwrap();
    let raw = PacketSocket::new(&t.client, "v-cs");
    let mut rng = Rng(0x0f10_0d00_0000_0010);
    // One frame, its receiver key (so its token) and source port patched
    // for every send: building each frame would measure the builder. The
    // patched frames' TCP checksums are wrong (the stack drops them after
    // the datapath; XDP does not check them), like any forged flood's.
    let template = |sport: u16, k1: u64, k2: u64| {
        FrameBuilder::tcp_v4([10, 41, 1, 1], sport, [10, 41, 1, 2], MPTCP_PORT)
            .flags(TCP_ACK)
            .tcp_options(&mptcp::capable_ack(1, 0x01, k1, k2))
            .src_mac(src_mac)
            .dst_mac(dst_mac)
            .build()
    };
    const MARK: u64 = 0x6d69_6772_6b65_7921;
    let mut frame = template(20000, rng.next_u64(), MARK);
    let key_at = frame
        .windows(8)
        .position(|w| w == MARK.to_be_bytes())
        .expect("the receiver key in the frame");
    let started = Instant::now();
    let mut sent = 0u64;
    let mut refused = 0u64;
    while started.elapsed() < FLOOD {
        for _ in 0..1024 {
            let key = rng.next_u64();
            frame[key_at..key_at + 8].copy_from_slice(&key.to_be_bytes());
            frame[34..36].copy_from_slice(&(20000 + (key % 40000) as u16).to_be_bytes());
            if raw.send(&frame) {
                sent += 1;
            } else {
                refused += 1;
            }
        }
    }
    let flood_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let (rss_after, hwm_after) = memory_kib(pid);
    let after = reasons(a);
    let delta = |name: &str| after[name].as_u64().unwrap() - reasons_before[name].as_u64().unwrap();
    let mp = a.service("mp");
    let seen = verdict(&mp, "pass");
    let reported = delta("mptcp_keys_reported");
    let limited = delta("events_rate_limited");
    let dropped = delta("events_dropped");
    println!(
        "MP_CAPABLE flood: {sent} frames sent in {flood_s:.1} s ({:.0} frames/s; {refused} refused by the \
         socket), {seen} seen by the datapath ({:.0}/s); {reported} key reports passed to the agent, \
         {limited} rate-limited, {dropped} dropped; agent VmRSS {rss_before} -> {rss_after} KiB, \
         VmHWM {hwm_before} -> {hwm_after} KiB",
        sent as f64 / flood_s,
        seen as f64 / flood_s
    );
    // Each report that reached the agent installed the token of its key.
    let tokens = pinned_u32_entries(&a.pin_dir, "TOKENS");
    println!(
        "MPTCP tokens learned from the flood: {tokens} of {reported} reports (TOKENS holds at most 65,536)"
    );
    // One source address: its tokens are bounded by its quota (256 at once,
    // 64 a second), however many reports pass the datapath's budget.
    let quota = TOKEN_BURST + TOKENS_PER_SECOND * (flood_s + 1.0);
    let refused = num(&a.json(&["stats"]), &["agent", "tokens_refused"]);
    println!("tokens refused by the per-address quota: {refused}");
    assert!(
        tokens as f64 <= quota,
        "{tokens} tokens learned from one address"
    );
    assert_eq!(
        tokens as u64 + refused,
        reported,
        "each report learned or refused"
    );
    assert!(tokens > 0, "the reports that passed were acted on");
    assert!(seen > 10_000, "the flood reached the datapath ({seen})");
    assert_eq!(
        reported + limited + dropped,
        seen,
        "every key report accounted for"
    );
    assert!(limited > 0, "the event budget held back reports");
    // 256 per 100 ms window per CPU: at most this many, whatever the flood.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let windows = (flood_s / 0.1).ceil() as u64 + 2;
    assert!(
        reported <= 256 * windows * cpus,
        "{reported} reports passed"
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < 4 * 1024,
        "the agent's peak memory grew by {} KiB",
        hwm_after - hwm_before
    );

    // Malformed frames at both services, and frames that carry the replay
    // tag in their payload (only XDP metadata can mark a replay).
    let mut rng = Rng(0xbad_f00d);
    let mut malformed = 0u64;
    for i in 0..20_000u32 {
        let mut frame = if i % 2 == 0 {
            template(30000, rng.next_u64(), rng.next_u64())
        } else {
            let mut payload = REPLAY_META_MAGIC.to_le_bytes().to_vec();
            payload.extend_from_slice(&[0; 4]);
            payload.extend_from_slice(&i.to_be_bytes());
            FrameBuilder::udp_v4([10, 41, 1, 1], 40000, [10, 41, 1, 2], PORT)
                .payload(&payload)
                .src_mac(src_mac)
                .dst_mac(dst_mac)
                .build()
        };
        if i % 4 != 1 {
            mutate(&mut rng, &mut frame);
        }
        if raw.send(&frame) {
            malformed += 1;
        }
        if i % 64 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after2 = reasons(a);
    assert_eq!(
        after2["replayed"], reasons_before["replayed"],
        "no frame from the wire is a replay"
    );
    assert_eq!(after2["replay_failed"], reasons_before["replay_failed"]);
    let services_after: Vec<Value> = ["mp", "kv"]
        .iter()
        .map(|s| control_state(&a.service(s)))
        .collect();
    assert_eq!(
        services_after, services_before,
        "no packet changed a service's control state"
    );
    assert_eq!(a.json(&["service", "list"]).as_array().unwrap().len(), 2);
    let kv = a.service("kv");
    println!(
        "malformed/replay-tag flood: {malformed} frames sent; kv parked {} (frozen), malformed reasons {} -> {}; \
         service states unchanged",
        verdict(&kv, "park"),
        reasons_before["malformed"],
        after2["malformed"]
    );
    // The agent still works normally.
    a.phase("kv", "abort");
    let (rss_end, hwm_end) = memory_kib(pid);
    println!("agent after both floods: VmRSS {rss_end} KiB, VmHWM {hwm_end} KiB");
    assert!(hwm_end.saturating_sub(hwm_before) < 8 * 1024);
    t.src_agent.kill9();
}
