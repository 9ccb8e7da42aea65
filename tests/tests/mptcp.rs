//! migr on real kernel MPTCP (issue 7), with a real `migr-agent` driven
//! through `migrctl`, in network namespaces.
//!
//! The topology and the measurements are in `migr_testbed::mptcp` (shared
//! with the `migr-mptcp` runner, which repeats them and writes results/*.json):
//! a multi-homed client with two paths to an edge node; the node's agent
//! has an `--mptcp A:7000` service; the server process uses IPPROTO_MPTCP
//! sockets and announces its second address B with ADD_ADDR, so each
//! connection has a subflow per path.
//!
//! CRIU cannot checkpoint MPTCP sockets, so nothing here moves a connection
//! between hosts: the "freeze" is the server process stopped with SIGSTOP,
//! standing in for a container's downtime, under a stand-in for CRIU's
//! network lock (nftables drops the service's port).

use std::{collections::BTreeSet, sync::OnceLock, time::Duration};

use migr_testbed::mptcp::{
    freeze::{self, B, FreezeLab, Options, SERVICE_ID},
    handover,
    lab::{self, Bins, delta, established_to, kernel_conns, nstat, num, verdict},
};

/// The agent's binaries and the `migr-mptcp` runner (its `serve` is the MPTCP
/// server), which is migr-testbed's: cargo builds it into this profile directory.
fn bins() -> &'static Bins {
    static SERVER: OnceLock<std::path::PathBuf> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        migr_testkit::process::build_binaries(&["migr-testbed"])
            .expect("building migr-mptcp")
            .join("migr-mptcp")
    });
    lab::bins(server.clone())
}

const PERIOD: Duration = Duration::from_millis(5);

fn finish(lab: &mut FreezeLab) -> u64 {
    let mut records = 0;
    for s in &mut lab.streams {
        s.finish(Duration::from_secs(20))
            .expect("every record echoed once, in order, byte-exact");
        records += s.sent();
    }
    records
}

/// Every token the agent learned is the kernel's own token of one of the
/// server's connections, and every connection's token was learned: two
/// concurrent connections, each with a subflow on each of the client's paths.
#[test]
fn learned_tokens_equal_the_kernels_for_two_connections_with_two_subflows() {
    let mut lab = FreezeLab::new(
        bins(),
        &Options {
            connections: 2,
            replay_rate: None,
            server_rcvbuf: Some(lab::TEST_SERVER_RCVBUF),
            join: true,
            period: PERIOD,
            announce_first: false,
            pause_agent: false,
        },
    )
    .unwrap();
    let kernel = lab.kernel().unwrap();
    let kernel_tokens: BTreeSet<u32> = kernel.iter().map(|c| c.token).collect();
    let learned: BTreeSet<u32> = lab
        .agent
        .tokens()
        .unwrap()
        .into_iter()
        .filter(|(_, s)| *s == SERVICE_ID)
        .map(|(t, _)| t)
        .collect();
    println!(
        "kernel (server) connections {kernel:08x?}; agent's TOKENS for the service {learned:08x?}"
    );
    assert_eq!(
        kernel.len(),
        2,
        "two MPTCP connections in the server's kernel"
    );
    assert_eq!(kernel_tokens.len(), 2, "two distinct kernel tokens");
    assert_eq!(learned, kernel_tokens, "learned tokens equal the kernel's");
    assert!(kernel.iter().all(|c| c.subflows == 2), "{kernel:?}");
    // The client's kernel agrees: two connections of two subflows; and the
    // joined subflows are the ones to B, over the client's second path.
    let client = kernel_conns(&lab.client).unwrap();
    assert_eq!(client.len(), 2);
    assert!(client.iter().all(|c| c.subflows == 2), "{client:?}");
    assert_eq!(established_to(&lab.node, &format!("{B}:7000")).unwrap(), 2);
    let stats = lab.agent.stats().unwrap();
    assert!(num(&stats, &["reasons", "flows_learned"]) >= 2);
    assert_eq!(num(&stats, &["reasons", "mptcp_unknown_token"]), 0);
    let records = finish(&mut lab);
    println!("{records} records echoed intact over the two connections");
}

/// The server process is frozen (SIGSTOP: the container's downtime) under
/// the network lock while the agent's service is in `freeze` (PARK), then
/// thawed with `abort` (the service resumes on this node; the parked frames
/// are replayed to it). Nothing is lost in the datapath, packets of both
/// paths were parked, the connections and their subflows survive, and every
/// record comes back intact.
#[test]
fn freeze_with_steering_parks_both_subflows_and_loses_nothing() {
    let mut lab = FreezeLab::new(
        bins(),
        &Options {
            connections: 2,
            replay_rate: None,
            server_rcvbuf: Some(lab::TEST_SERVER_RCVBUF),
            join: true,
            period: PERIOD,
            announce_first: false,
            pause_agent: false,
        },
    )
    .unwrap();
    let run = freeze::freeze_once(&mut lab, true, Duration::from_millis(2000)).unwrap();
    println!("{run:#?}");
    assert!(run.parked > 0, "the freeze parked nothing");
    assert_eq!(run.parked, run.replayed, "every parked frame replayed");
    assert_eq!(run.park_failed, 0);
    assert_eq!(run.overflow, 0);
    assert_eq!(run.replay_failed, 0);
    assert!(
        run.xdp_drops[0] > 0 && run.xdp_drops[1] > 0,
        "packets of both paths (v-n1: A, v-n2: B) were parked: {:?}",
        run.xdp_drops
    );
    assert_eq!(
        run.xdp_drops[0] + run.xdp_drops[1],
        run.parked,
        "the kernel's XDP drop counts are exactly the parked frames"
    );
    assert_eq!(run.subflows_after, vec![2, 2], "both subflows survive");
    let svc = lab.service().unwrap();
    assert_eq!(num(&svc, &["replay", "uncertain_frames"]), 0);
    assert_eq!(num(&svc, &["parked", "pending_frames"]), 0);
    assert_eq!(svc["state"], "aborted");
    let stats = lab.agent.stats().unwrap();
    assert_eq!(num(&stats, &["reasons", "park_overflow"]), 0);
    assert_eq!(num(&stats, &["reasons", "replay_failed"]), 0);
    assert!(run.records > 0);
    println!(
        "freeze {:.0} ms with steering: recovery after thaw {:.1} ms, longest stall {:.0} ms, \
         parked {} = replayed {} (v-n1 {}, v-n2 {}), client retransmissions {}, RTOs {}",
        run.freeze_ms,
        run.recovery_ms,
        run.stall_ms,
        run.parked,
        run.replayed,
        run.xdp_drops[0],
        run.xdp_drops[1],
        run.client["TcpRetransSegs"],
        run.client["TcpExtTCPTimeouts"],
    );
}

/// Joins that overtake their token: the second address is announced before
/// the connections open, and the agent is stopped while they open and join,
/// so every join SYN reaches the node before the agent has installed its
/// token. The datapath reports such joins, and the agent, resumed, learns
/// their subflows once the token is in: every join is learned late, and a
/// freeze parks both paths of every connection.
#[test]
fn joins_that_overtake_their_token_are_learned_late() {
    let mut lab = FreezeLab::new(
        bins(),
        &Options {
            connections: 2,
            replay_rate: None,
            server_rcvbuf: Some(lab::TEST_SERVER_RCVBUF),
            join: false,
            period: PERIOD,
            announce_first: true,
            pause_agent: true,
        },
    )
    .unwrap();
    let joins: u64 = lab
        .kernel()
        .unwrap()
        .iter()
        .map(|c| u64::from(c.subflows - 1))
        .sum();
    assert_eq!(joins, 2, "each connection joined on the second path");
    let stats = lab.agent.stats().unwrap();
    let on_arrival = num(&stats, &["reasons", "flows_learned"]);
    let late = num(&stats, &["agent", "late_joins_learned"]);
    println!("joins: {joins}, learned on arrival {on_arrival}, learned late {late}");
    assert_eq!(
        (on_arrival, late),
        (0, joins),
        "every join overtook its token and was learned late"
    );
    let run = freeze::freeze_once(&mut lab, true, Duration::from_millis(1000)).unwrap();
    assert!(
        run.xdp_drops[0] > 0 && run.xdp_drops[1] > 0,
        "packets of both paths were parked: {:?}",
        run.xdp_drops
    );
    assert_eq!(run.parked, run.replayed);
    assert_eq!(run.subflows_after, vec![2, 2], "both subflows survive");
}

/// An MP_JOIN that arrives while the service is parked is parked too
/// (classified by its token, which only the agent's learning can know), the
/// kernel never sees it; replayed at the thaw, the join completes: the
/// kernel shows two subflows per connection afterwards.
#[test]
fn a_parked_mp_join_is_replayed_and_the_join_completes() {
    let mut lab = FreezeLab::new(
        bins(),
        &Options {
            connections: 2,
            replay_rate: None,
            server_rcvbuf: Some(lab::TEST_SERVER_RCVBUF),
            join: false,
            period: PERIOD,
            announce_first: false,
            pause_agent: false,
        },
    )
    .unwrap();
    assert!(lab.kernel().unwrap().iter().all(|c| c.subflows == 1));
    let s0 = nstat(&lab.node).unwrap();
    let svc0 = lab.service().unwrap();
    let drops0 = lab.drops().unwrap();
    lab.agent.phase(freeze::SERVICE, "freeze", &[]).unwrap();
    // The container's downtime stand-in. (No network lock here: the
    // announcement of B is the node kernel's, and it must go out.)
    lab.server.freeze(Duration::from_secs(5)).unwrap();
    lab.announce_b().unwrap();
    lab::wait_until(Duration::from_secs(10), "both MP_JOIN SYNs parked", || {
        let stats = lab.agent.stats()?;
        let drops = lab.drops()?;
        Ok(num(&stats, &["reasons", "flows_learned"]) >= 2 && drops[1] - drops0[1] >= 2)
    })
    .unwrap();
    // Let the clients retransmit their SYNs once (1 s): those are parked too.
    std::thread::sleep(Duration::from_millis(1200));
    let s_frozen = nstat(&lab.node).unwrap();
    assert_eq!(
        delta(&s_frozen, &s0, "MPTcpExtMPJoinSynRx"),
        0,
        "the node's kernel saw no MP_JOIN while parked"
    );
    assert!(lab.kernel().unwrap().iter().all(|c| c.subflows == 1));
    assert_eq!(established_to(&lab.node, &format!("{B}:7000")).unwrap(), 0);
    let parked_syns = lab.drops().unwrap()[1] - drops0[1];

    lab.server.signal(libc::SIGCONT);
    lab.agent.phase(freeze::SERVICE, "abort", &[]).unwrap();
    lab.wait_subflows(2).unwrap();
    let s1 = nstat(&lab.node).unwrap();
    let syn_rx = delta(&s1, &s0, "MPTcpExtMPJoinSynRx");
    let ack_rx = delta(&s1, &s0, "MPTcpExtMPJoinAckRx");
    println!(
        "parked on B's interface: {parked_syns} frames; after the replay the node's kernel \
         counted MPJoinSynRx {syn_rx}, MPJoinAckRx {ack_rx}: {:?}",
        lab.kernel().unwrap()
    );
    assert!(syn_rx >= 2, "the replayed SYNs reached the kernel");
    assert!(ack_rx >= 2, "both joins completed (third ACK with HMAC)");
    assert_eq!(established_to(&lab.node, &format!("{B}:7000")).unwrap(), 2);
    let records = finish(&mut lab);
    let svc = lab.service().unwrap();
    let parked = verdict(&svc, "park") - verdict(&svc0, "park");
    let replayed = num(&svc, &["replay", "replayed_frames"]);
    assert!(parked >= parked_syns);
    assert_eq!(parked, replayed, "every parked frame replayed");
    assert_eq!(verdict(&svc, "park_failed"), 0);
    assert_eq!(num(&svc, &["replay", "failed_frames"]), 0);
    println!("{records} records echoed intact; parked {parked} = replayed {replayed}");
}

/// Seed 001's handover with steering: the service moves from A (behind node
/// A) to B (behind node B). B is announced before the service is there: the
/// clients' MP_JOIN SYNs reach node B early and are parked, not refused;
/// the A-subflow packets of the downtime are parked at node A. At ready both
/// agents replay (B locally, A through the forward target), the joins
/// complete, REMOVE_ADDR A leaves every connection on B, nothing is lost.
#[test]
fn handover_with_steering_parks_early_joins_and_loses_nothing() {
    let mut lab =
        handover::HandoverLab::new(bins(), 2, None, Some(lab::TEST_SERVER_RCVBUF)).unwrap();
    let r = handover::handover_once(&mut lab, true, false, Duration::from_millis(1000)).unwrap();
    println!("{r:#?}");
    assert_eq!(
        r.b_subflows_before_ready, 0,
        "no join completed before ready"
    );
    assert_eq!(
        r.icmp_before_ready, 0,
        "no join was refused: the client got no ICMP error"
    );
    assert!(r.parked_at_b >= 2, "both MP_JOIN SYNs parked at node B");
    assert_eq!(r.replayed_at_b, r.parked_at_b);
    assert!(
        r.parked_at_a > 0,
        "A-subflow packets of the downtime parked"
    );
    assert_eq!(r.replayed_at_a, r.parked_at_a);
    assert_eq!(r.lost_in_datapath, 0);
    assert_eq!(r.announcements, 1, "the proactive announcement sufficed");
    assert!(r.server["MPTcpExtMPJoinAckRx"] >= 2, "both joins completed");
    assert!(r.records > 0);
    println!(
        "handover with steering: joins {:.1} ms and switch {:.1} ms after ready, backlog served \
         {:.1} ms after ready, longest stall {:.0} ms (downtime {:.0} ms); client retransmissions {}",
        r.join_ms,
        r.switch_ms,
        r.recovery_ms,
        r.stall_ms,
        r.downtime_ms,
        r.client["TcpRetransSegs"]
    );
}

/// The same handover without steering: the early joins are refused at node
/// B (ICMP errors, no subflow to B before ready). They can complete only
/// by the clients' own SYN retransmissions; if they have not within 5 s of
/// ready, B is announced again. The connections end up on B, intact.
#[test]
fn handover_without_steering_refuses_early_joins() {
    let mut lab =
        handover::HandoverLab::new(bins(), 2, None, Some(lab::TEST_SERVER_RCVBUF)).unwrap();
    let r = handover::handover_once(&mut lab, false, false, Duration::from_millis(1000)).unwrap();
    println!("{r:#?}");
    assert_eq!(r.b_subflows_before_ready, 0);
    assert!(r.icmp_before_ready >= 2, "both early joins refused");
    assert_eq!(r.parked_at_a + r.parked_at_b, 0);
    assert!(r.joins_by_retry.is_some());
    assert_eq!(
        r.announcements,
        if r.joins_by_retry == Some(2) { 1 } else { 2 }
    );
    assert!(r.server["MPTcpExtMPJoinAckRx"] >= 2, "both joins completed");
    println!(
        "handover without steering: {:?} of 2 joins completed by the clients' SYN \
         retransmissions, {} announcements; joins {:.1} ms and switch {:.1} ms after ready, \
         backlog served {:.1} ms after ready, longest stall {:.0} ms; client retransmissions {}",
        r.joins_by_retry,
        r.announcements,
        r.join_ms,
        r.switch_ms,
        r.recovery_ms,
        r.stall_ms,
        r.client["TcpRetransSegs"]
    );
}
