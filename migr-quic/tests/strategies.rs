//! Deterministic tests of the three client strategies on a simulated network
//! (no sockets, virtual time). The server is reachable at OLD; at some moment
//! it freezes (container downtime T), disappears from OLD and comes back at NEW.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use migr_quic::{ClientEvent, ClientMigrationConfig, ProbeMode, ServerEvent, Strategy};

const OLD: &str = "10.77.1.1:4433";
const NEW: &str = "10.77.2.1:4433";
const POOL_A: &str = "10.77.3.1:4433";
const POOL_C: &str = "10.77.4.1:4433";
const RUN_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
enum MoveCue {
    /// The migration management announces NEW after this many requests.
    Announce { after_requests: usize },
    /// The client sends TRIGGER after this many requests; the server's
    /// migration management answers it by announcing NEW.
    ClientAsks { after_requests: usize },
    /// The server moves without a word after this many requests (PoA).
    Silent { after_requests: usize },
}

struct Outcome {
    strategy: Strategy,
    downtime: Duration,
    records: Vec<RequestRecord>,
    client_events: Vec<(Duration, ClientEvent)>,
    server_events: Vec<(Duration, ServerEvent)>,
    /// When the server froze and left OLD.
    moved_at: Duration,
    /// When it started answering at NEW.
    up_at: Duration,
    traffic: Traffic,
    loss: Vec<LossRule>,
    client_lost_packets: u64,
    client_path_responses: u64,
    server_path_challenges_seen_by_client: u64,
    rebinds: usize,
}

impl Outcome {
    fn event_time(&self, wanted: impl Fn(&ClientEvent) -> bool) -> Option<Duration> {
        self.client_events
            .iter()
            .find(|(_, e)| wanted(e))
            .map(|(t, _)| *t)
    }

    fn switched_to_new_at(&self) -> Duration {
        let new = addr(NEW);
        self.event_time(|e| matches!(e, ClientEvent::PrimaryChanged { to, .. } if *to == new))
            .expect("the client switched to NEW")
    }

    fn loss_detected_at(&self) -> Option<Duration> {
        self.event_time(|e| matches!(e, ClientEvent::LossDetected { .. }))
    }

    /// Time from the server answering at NEW to the client adopting NEW.
    fn resume_delay(&self) -> Duration {
        self.switched_to_new_at().saturating_sub(self.up_at)
    }

    fn baseline(&self) -> Duration {
        let mut times: Vec<Duration> = self.records.iter().map(|r| r.service_time()).collect();
        times.sort();
        times[times.len() / 2]
    }

    /// Service time of the worst request minus the median one.
    fn extra_delay(&self) -> Duration {
        let worst = self.records.iter().map(|r| r.service_time()).max().unwrap();
        worst.saturating_sub(self.baseline())
    }

    /// Every CID the server issued, the fresh ones used after the move too,
    /// routes to the service.
    fn check_routable(&self) {
        assert!(self.traffic.routable_short_headers > 0);
        assert_eq!(self.traffic.unroutable_short_headers, 0);
    }

    fn check_no_request_lost(&self, total: usize) {
        assert_eq!(self.records.len(), total, "every request completed");
        for (i, record) in self.records.iter().enumerate() {
            assert_eq!(record.index, i, "responses in order, none missing");
        }
        assert_eq!(
            self.records.last().unwrap().server,
            addr(NEW),
            "the last requests went to NEW"
        );
    }

    fn report(&self, label: &str) {
        println!(
            "[{label}] strategy={} T={}ms: resume delay {:?} after the server came up at NEW \
             (moved at {:?}, up at {:?}, client switched at {:?}); loss detected at {:?}; \
             worst request +{:?} over the median {:?}; client lost packets {}; \
             datagrams client->OLD {} ->NEW {}; dropped at OLD {} at NEW {}",
            self.strategy,
            self.downtime.as_millis(),
            self.resume_delay(),
            self.moved_at,
            self.up_at,
            self.switched_to_new_at(),
            self.loss_detected_at(),
            self.extra_delay(),
            self.baseline(),
            self.client_lost_packets,
            self.traffic.client_sent.get(&addr(OLD)).unwrap_or(&0),
            self.traffic.client_sent.get(&addr(NEW)).unwrap_or(&0),
            self.traffic.dropped.get(&addr(OLD)).unwrap_or(&0),
            self.traffic.dropped.get(&addr(NEW)).unwrap_or(&0),
        );
    }
}

fn run(
    strategy: Strategy,
    downtime: Duration,
    pool: Vec<SocketAddr>,
    cue: MoveCue,
    mode: Mode,
    total: usize,
    loss: Vec<LossRule>,
) -> Outcome {
    let config = ClientMigrationConfig::new(strategy);
    run_with(config, downtime, pool, cue, mode, total, loss)
}

fn run_with(
    config: ClientMigrationConfig,
    downtime: Duration,
    pool: Vec<SocketAddr>,
    cue: MoveCue,
    mode: Mode,
    total: usize,
    loss: Vec<LossRule>,
) -> Outcome {
    let strategy = config.strategy;
    let crypto = crypto();
    let mut sim = migr_pair_with(
        &crypto,
        config,
        addr(OLD),
        pool,
        EchoClient::new(mode, total),
    );
    sim.loss = loss;
    let mut moved_at = None;
    let mut announced = false;
    let mut trigger_sent = false;

    let move_server = |sim: &mut Sim, moved_at: &mut Option<Duration>| {
        let now = sim.now;
        sim.listening.remove(&addr(OLD));
        sim.frozen = true;
        sim.schedule(now + downtime, NetChange::Listen(addr(NEW)));
        sim.schedule(now + downtime, NetChange::Thaw);
        *moved_at = Some(sim.elapsed());
    };

    sim.run(RUN_LIMIT, |sim| {
        let done = sim.app.records.len();
        match cue {
            MoveCue::Announce { after_requests } if done >= after_requests && !announced => {
                announced = true;
                let server = sim.server.as_migr().unwrap();
                let ids = server.endpoint.announce_migration_to_all(addr(NEW));
                assert_eq!(ids.len(), 1, "the client negotiated the extension");
            }
            MoveCue::ClientAsks { after_requests } if done >= after_requests && !trigger_sent => {
                trigger_sent = true;
                sim.client
                    .as_migr()
                    .unwrap()
                    .endpoint
                    .send_trigger()
                    .unwrap();
            }
            MoveCue::Silent { after_requests } if done >= after_requests && moved_at.is_none() => {
                move_server(sim, &mut moved_at);
            }
            _ => {}
        }
        if let Some(server) = sim.server.as_migr() {
            let triggered = server
                .events
                .iter()
                .any(|(_, e)| *e == ServerEvent::TriggerReceived);
            if triggered && !announced {
                announced = true;
                let ids = server.endpoint.announce_migration_to_all(addr(NEW));
                assert_eq!(ids.len(), 1);
            }
            let acknowledged = server
                .events
                .iter()
                .any(|(_, e)| matches!(e, ServerEvent::MigrationAcknowledged { .. }));
            // Seed 000, step 4: the container moves only after the acknowledgement.
            if acknowledged && moved_at.is_none() {
                move_server(sim, &mut moved_at);
            }
        }
        sim.app.done()
    });

    let moved_at = moved_at.expect("the server moved");
    let stats = sim.client.as_migr().unwrap().endpoint.connection().stats();
    let client_events = take_client_events(&mut sim);
    let server_events = take_server_events(&mut sim);
    Outcome {
        strategy,
        downtime,
        records: sim.app.records.clone(),
        client_events,
        server_events,
        moved_at,
        up_at: moved_at + downtime,
        traffic: std::mem::take(&mut sim.traffic),
        loss: std::mem::take(&mut sim.loss),
        client_lost_packets: stats.path.lost_packets,
        client_path_responses: stats.frame_tx.path_response,
        server_path_challenges_seen_by_client: stats.frame_rx.path_challenge,
        rebinds: sim.rebinds,
    }
}

fn take_client_events(sim: &mut Sim) -> Vec<(Duration, ClientEvent)> {
    let start = sim.start;
    sim.client
        .as_migr()
        .unwrap()
        .events
        .drain(..)
        .map(|(t, e)| (t - start, e))
        .collect()
}

fn take_server_events(sim: &mut Sim) -> Vec<(Duration, ServerEvent)> {
    let start = sim.start;
    sim.server
        .as_migr()
        .unwrap()
        .events
        .drain(..)
        .map(|(t, e)| (t - start, e))
        .collect()
}

const TOTAL: usize = 30;
const MIGRATE_AFTER: usize = 10;

fn explicit(strategy: Strategy, downtime_ms: u64) -> Outcome {
    let outcome = run(
        strategy,
        Duration::from_millis(downtime_ms),
        Vec::new(),
        MoveCue::Announce {
            after_requests: MIGRATE_AFTER,
        },
        Mode::BackToBack,
        TOTAL,
        Vec::new(),
    );
    outcome.check_no_request_lost(TOTAL);
    outcome.check_path_validated();
    outcome.check_routable();
    outcome
}

impl Outcome {
    /// Seed 000, step 7: the new path was validated (quinn-proto on the server
    /// challenged the client's fresh port, and the client answered from NEW).
    fn check_path_validated(&self) {
        assert!(self.rebinds >= 1, "the client moved to a fresh local port");
        assert!(
            self.server_path_challenges_seen_by_client >= 1 && self.client_path_responses >= 1,
            "PATH_CHALLENGE/PATH_RESPONSE exchanged on the new path"
        );
        let new = addr(NEW);
        assert!(
            self.client_events.iter().any(
                |(_, e)| matches!(e, ClientEvent::PathChallengeAnswered { address } if *address == new)
            ),
            "the challenge came from NEW"
        );
    }
}

#[test]
fn p_explicit_switches_right_after_the_ack_without_any_loss() {
    let outcome = explicit(Strategy::ProactiveExplicit, 0);
    outcome.report("p-explicit");
    assert_eq!(
        outcome.loss_detected_at(),
        None,
        "P-Explicit never waits for a loss"
    );
    assert_eq!(
        outcome.client_lost_packets, 0,
        "no packet lost even with T = 0"
    );
    assert!(
        outcome.switched_to_new_at() <= outcome.up_at + Duration::from_millis(20),
        "adopted NEW within one RTT of it coming up"
    );
}

/// The baseline client (QUIC's own probe timeouts, which double) resumes
/// well after the server is back; migr-quic's fast probing within a few ms.
#[test]
fn rfc9002_probing_waits_for_backed_off_probe_timeouts() {
    let outcome = |probing: ProbeMode| {
        let config = ClientMigrationConfig {
            probing,
            ..ClientMigrationConfig::new(Strategy::ProactiveExplicit)
        };
        let o = run_with(
            config,
            Duration::from_millis(300),
            Vec::new(),
            MoveCue::Announce {
                after_requests: MIGRATE_AFTER,
            },
            Mode::BackToBack,
            TOTAL,
            Vec::new(),
        );
        o.check_no_request_lost(TOTAL);
        o.report(&format!("p-explicit, {probing} probing"));
        o
    };
    let (fast, rfc9002) = (outcome(ProbeMode::Fast), outcome(ProbeMode::Rfc9002));
    let sent_to_new = |o: &Outcome| o.traffic.dropped.get(&addr(NEW)).copied().unwrap_or(0);
    assert!(fast.resume_delay() <= Duration::from_millis(20));
    assert!(
        rfc9002.resume_delay() > fast.resume_delay() + Duration::from_millis(20),
        "rfc9002 resumed {:?} after the server, fast {:?}",
        rfc9002.resume_delay(),
        fast.resume_delay()
    );
    assert!(
        sent_to_new(&rfc9002) < sent_to_new(&fast),
        "without its own PINGs the client sends fewer probes into the outage"
    );
}

#[test]
fn p_explicit_probes_new_until_the_server_comes_up() {
    let outcome = explicit(Strategy::ProactiveExplicit, 300);
    outcome.report("p-explicit");
    assert_eq!(outcome.loss_detected_at(), None);
    assert!(outcome.switched_to_new_at() >= outcome.up_at);
    assert!(
        outcome
            .traffic
            .dropped
            .get(&addr(NEW))
            .copied()
            .unwrap_or(0)
            >= 2,
        "probes reached NEW before the server was there"
    );
}

#[test]
fn r_explicit_needs_a_loss_before_it_moves() {
    for downtime in [0, 300] {
        let outcome = explicit(Strategy::ReactiveExplicit, downtime);
        outcome.report("r-explicit");
        let loss = outcome
            .loss_detected_at()
            .expect("R-Explicit moves only after a loss");
        assert!(
            loss >= outcome.moved_at,
            "the loss happened after the server left OLD"
        );
        assert!(outcome.switched_to_new_at() > loss);
        assert!(
            outcome
                .traffic
                .dropped
                .get(&addr(OLD))
                .copied()
                .unwrap_or(0)
                >= 1,
            "requests kept going to OLD until the loss"
        );
    }
}

#[test]
fn r_explicit_stays_on_the_old_address_while_nothing_is_lost() {
    // The server announces but never leaves OLD: R-Explicit must not move.
    let crypto = crypto();
    let mut sim = migr_pair(
        &crypto,
        Strategy::ReactiveExplicit,
        addr(OLD),
        Vec::new(),
        EchoClient::new(Mode::BackToBack, 20),
    );
    let mut announced = false;
    sim.run(RUN_LIMIT, |sim| {
        if sim.app.records.len() >= 5 && !announced {
            announced = true;
            let server = sim.server.as_migr().unwrap();
            assert_eq!(
                server.endpoint.announce_migration_to_all(addr(NEW)).len(),
                1
            );
        }
        sim.app.done()
    });
    let events = take_client_events(&mut sim);
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::MigrationAnnounced { .. }))
    );
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::PrimaryChanged { .. }))
    );
    assert!(sim.app.records.iter().all(|r| r.server == addr(OLD)));
    assert_eq!(sim.traffic.client_sent.get(&addr(NEW)), None);
}

#[test]
fn pool_of_addresses_probes_every_pool_entry_and_the_current_one() {
    for downtime in [0, 300] {
        let pool = vec![addr(POOL_A), addr(NEW), addr(POOL_C)];
        let outcome = run(
            Strategy::PoolOfAddresses,
            Duration::from_millis(downtime),
            pool.clone(),
            MoveCue::Silent {
                after_requests: MIGRATE_AFTER,
            },
            Mode::BackToBack,
            TOTAL,
            Vec::new(),
        );
        outcome.report("poa");
        outcome.check_no_request_lost(TOTAL);
        outcome.check_path_validated();
        outcome.check_routable();
        assert!(
            outcome
                .server_events
                .iter()
                .any(|(_, e)| *e == ServerEvent::PoolAcknowledged),
            "the pool reached the client during setup"
        );
        let loss = outcome.loss_detected_at().expect("PoA probes after a loss");
        let losses = outcome
            .client_events
            .iter()
            .filter(|(_, e)| matches!(e, ClientEvent::LossDetected { .. }))
            .count();
        assert_eq!(
            losses, 1,
            "packets lost during the move do not restart probing"
        );
        assert!(loss >= outcome.moved_at);
        let probed = outcome
            .client_events
            .iter()
            .find_map(|(_, e)| match e {
                ClientEvent::ProbingStarted { targets } => Some(targets.clone()),
                _ => None,
            })
            .unwrap();
        for address in pool.iter().chain([&addr(OLD)]) {
            assert!(probed.contains(address), "{address} probed");
            assert!(
                outcome
                    .traffic
                    .client_sent
                    .get(address)
                    .copied()
                    .unwrap_or(0)
                    >= 1
            );
        }
    }
}

#[test]
fn pool_of_addresses_stays_when_the_current_address_answers() {
    // A loss without a move (congestion): the current address is among the
    // probed ones, answers, and stays primary.
    let crypto = crypto();
    let pool = vec![addr(POOL_A), addr(NEW)];
    let mut sim = migr_pair(
        &crypto,
        Strategy::PoolOfAddresses,
        addr(OLD),
        pool,
        EchoClient::new(Mode::BackToBack, 20),
    );
    let mut blackout = false;
    sim.run(RUN_LIMIT, |sim| {
        if sim.app.records.len() >= 5 && !blackout {
            blackout = true;
            let now = sim.now;
            sim.listening.remove(&addr(OLD));
            sim.schedule(
                now + Duration::from_millis(200),
                NetChange::Listen(addr(OLD)),
            );
        }
        sim.app.done()
    });
    let events = take_client_events(&mut sim);
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::LossDetected { .. }))
    );
    assert!(
        events
            .iter()
            .any(|(_, e)| *e == ClientEvent::ProbingEnded { primary: addr(OLD) })
    );
    assert!(sim.app.records.iter().all(|r| r.server == addr(OLD)));
}

#[test]
fn client_trigger_reaches_the_migration_management() {
    let outcome = run(
        Strategy::ProactiveExplicit,
        Duration::from_millis(50),
        Vec::new(),
        MoveCue::ClientAsks {
            after_requests: MIGRATE_AFTER,
        },
        Mode::BackToBack,
        TOTAL,
        Vec::new(),
    );
    outcome.check_no_request_lost(TOTAL);
    let triggered = outcome
        .server_events
        .iter()
        .position(|(_, e)| *e == ServerEvent::TriggerReceived)
        .expect("TRIGGER surfaced to the server");
    let acknowledged = outcome
        .server_events
        .iter()
        .position(|(_, e)| matches!(e, ServerEvent::MigrationAcknowledged { .. }))
        .unwrap();
    assert!(triggered < acknowledged);
    assert!(
        outcome
            .client_events
            .iter()
            .any(|(_, e)| *e == ClientEvent::TriggerAcknowledged)
    );
}

#[test]
fn sporadic_requests_resume_after_migration() {
    // Seed 000, scenario 1: requests every 10 s; the server moves after the
    // second one and is up again long before the third.
    for strategy in [
        Strategy::ProactiveExplicit,
        Strategy::ReactiveExplicit,
        Strategy::PoolOfAddresses,
    ] {
        let (pool, cue) = match strategy {
            Strategy::PoolOfAddresses => (
                vec![addr(POOL_A), addr(NEW), addr(POOL_C)],
                MoveCue::Silent { after_requests: 2 },
            ),
            _ => (Vec::new(), MoveCue::Announce { after_requests: 2 }),
        };
        let outcome = run(
            strategy,
            Duration::from_millis(1000),
            pool,
            cue,
            Mode::Sporadic(Duration::from_secs(10)),
            4,
            Vec::new(),
        );
        outcome.check_no_request_lost(4);
        let third = &outcome.records[2];
        let baseline = outcome.records[1].service_time();
        println!(
            "[sporadic] strategy={strategy}: request 3 service time {:?} (baseline {:?}, +{:?})",
            third.service_time(),
            baseline,
            third.service_time().saturating_sub(baseline)
        );
        match strategy {
            // Already at NEW when request 3 starts: no extra delay at all.
            Strategy::ProactiveExplicit => assert!(
                third.service_time() <= baseline + Duration::from_millis(5),
                "P-Explicit: request 3 as fast as before"
            ),
            // One lost packet first, then probing.
            _ => assert!(third.service_time() > baseline),
        }
    }
}

#[test]
fn the_client_takes_datagrams_only_from_known_server_addresses() {
    // Authentic server datagrams delivered from an address that is no candidate
    // (not the primary, announced, validated, pool or probed) are dropped before
    // quinn-proto sees them; the same bytes from the server's address are taken.
    let crypto = crypto();
    let pool = vec![addr(POOL_A)];
    let mut sim = migr_pair(
        &crypto,
        Strategy::PoolOfAddresses,
        addr(OLD),
        pool,
        EchoClient::new(Mode::BackToBack, 3),
    );
    sim.run(RUN_LIMIT, |sim| sim.app.done());
    let now = sim.now;
    let server = sim.server.as_migr().unwrap();
    let ch = server.endpoint.connection_handles()[0];
    server.endpoint.connection(ch).unwrap().conn.ping();
    let sent: Vec<Vec<u8>> = std::iter::from_fn(|| server.endpoint.poll_transmit(now))
        .map(|d| d.contents)
        .collect();
    assert!(!sent.is_empty(), "the server sends its PING");
    let client = sim.client.as_migr().unwrap();
    assert!(client.endpoint.migration().accepts(addr(POOL_A)));
    let rx = |c: &mut common::MigrClient| format!("{:?}", c.endpoint.connection().stats().frame_rx);
    let before = rx(client);
    let pings = client.endpoint.connection().stats().frame_rx.ping;
    for stranger in [addr("10.77.9.9:4433"), addr("10.77.1.1:4434")] {
        for data in &sent {
            let taken =
                client
                    .endpoint
                    .handle_datagram(now, stranger, bytes::BytesMut::from(&data[..]));
            assert!(!taken, "a datagram from {stranger} was taken");
        }
    }
    assert_eq!(rx(client), before, "quinn-proto saw none of them");
    for data in &sent {
        assert!(
            client
                .endpoint
                .handle_datagram(now, addr(OLD), bytes::BytesMut::from(&data[..]))
        );
    }
    assert_eq!(
        client.endpoint.connection().stats().frame_rx.ping,
        pings + 1,
        "the server's PING arrived from OLD"
    );
}

// ---------------------------------------------------------------- loss

/// R-Explicit's trigger is a packet loss, not the old address going away: a
/// loss injected on the path to OLD, while the server still answers there
/// (it listens at OLD and NEW), makes it probe the announced NEW and move.
#[test]
fn r_explicit_switches_on_a_loss_while_the_old_address_still_answers() {
    const LOSS_AFTER: usize = 10;
    let crypto = crypto();
    let mut sim = migr_pair(
        &crypto,
        Strategy::ReactiveExplicit,
        addr(OLD),
        Vec::new(),
        EchoClient::new(Mode::BackToBack, 25),
    );
    sim.listening.insert(addr(NEW));
    let mut announced = false;
    let mut loss_at = None;
    sim.run(RUN_LIMIT, |sim| {
        let done = sim.app.records.len();
        if done >= 5 && !announced {
            announced = true;
            let server = sim.server.as_migr().unwrap();
            assert_eq!(
                server.endpoint.announce_migration_to_all(addr(NEW)).len(),
                1
            );
        }
        if done >= LOSS_AFTER && loss_at.is_none() {
            // The next datagram to OLD is the next request.
            loss_at = Some(sim.elapsed());
            sim.loss.push(LossRule::new(
                Some(addr(OLD)),
                Direction::ToServer,
                LossPattern::Next(1),
            ));
        }
        sim.app.done()
    });
    let loss_at = loss_at.unwrap();
    let events = take_client_events(&mut sim);
    let at = |wanted: &dyn Fn(&ClientEvent) -> bool| {
        events.iter().find(|(_, e)| wanted(e)).map(|(t, _)| *t)
    };
    let acknowledged = sim
        .server
        .as_migr()
        .unwrap()
        .events
        .iter()
        .find(|(_, e)| matches!(e, ServerEvent::MigrationAcknowledged { .. }))
        .map(|(t, _)| *t - sim.start)
        .expect("the announcement was acknowledged");
    let detected = at(&|e| matches!(e, ClientEvent::LossDetected { .. })).expect("a loss detected");
    let switched = at(&|e| matches!(e, ClientEvent::PrimaryChanged { to, .. } if *to == addr(NEW)))
        .expect("R-Explicit moved to NEW");
    println!(
        "[r-explicit, loss on the old path] acknowledged at {acknowledged:?}, datagram dropped \
         at {loss_at:?}, loss detected at {detected:?}, switched to NEW at {switched:?}"
    );
    assert!(acknowledged < loss_at, "it stayed at OLD after the ack");
    assert!(detected > loss_at && switched > detected);
    assert_eq!(sim.loss[0].dropped, 1);
    assert_eq!(sim.traffic.lost.get(&addr(OLD)), Some(&1));
    assert!(
        sim.listening.contains(&addr(OLD)),
        "OLD answered throughout"
    );
    assert_eq!(
        sim.traffic.dropped.get(&addr(OLD)),
        None,
        "nothing else lost"
    );
    // Every request completed, in order; the early ones at OLD, the late ones at NEW.
    assert_eq!(sim.app.records.len(), 25);
    for (i, record) in sim.app.records.iter().enumerate() {
        assert_eq!(record.index, i);
    }
    assert!(
        sim.app.records[..LOSS_AFTER]
            .iter()
            .all(|r| r.server == addr(OLD))
    );
    assert_eq!(sim.app.records.last().unwrap().server, addr(NEW));
}

/// Migration under seeded random loss on every path, both ways: each strategy
/// still loses no request and ends at NEW.
#[test]
fn no_request_is_lost_under_seeded_random_loss() {
    const RATE_PER_MILLION: u32 = 50_000; // 5 %
    for strategy in [
        Strategy::ProactiveExplicit,
        Strategy::ReactiveExplicit,
        Strategy::PoolOfAddresses,
    ] {
        for seed in 1..=5 {
            let (pool, cue) = match strategy {
                Strategy::PoolOfAddresses => (
                    vec![addr(POOL_A), addr(NEW), addr(POOL_C)],
                    MoveCue::Silent {
                        after_requests: MIGRATE_AFTER,
                    },
                ),
                _ => (
                    Vec::new(),
                    MoveCue::Announce {
                        after_requests: MIGRATE_AFTER,
                    },
                ),
            };
            let loss = LossRule::new(
                None,
                Direction::Both,
                LossPattern::Random {
                    per_million: RATE_PER_MILLION,
                    seed,
                },
            );
            let outcome = run(
                strategy,
                Duration::from_millis(100),
                pool,
                cue,
                Mode::BackToBack,
                TOTAL,
                vec![loss],
            );
            let rule = &outcome.loss[0];
            println!(
                "[random loss 5%] strategy={strategy} seed={seed}: {} of {} datagrams dropped; \
                 resume delay {:?}; worst request +{:?} over the median {:?}",
                rule.dropped,
                rule.matched,
                outcome.resume_delay(),
                outcome.extra_delay(),
                outcome.baseline(),
            );
            assert!(rule.dropped >= 1, "the loss knob dropped something");
            assert_eq!(outcome.traffic.lost_total() as u64, rule.dropped);
            outcome.check_no_request_lost(TOTAL);
            outcome.check_routable();
        }
    }
}

/// The loss knob itself: each pattern drops exactly the datagrams it selects.
#[test]
fn the_loss_knob_drops_exactly_what_it_selects() {
    let crypto = crypto();
    let mut sim = migr_pair(
        &crypto,
        Strategy::ProactiveExplicit,
        addr(OLD),
        Vec::new(),
        EchoClient::new(Mode::BackToBack, 40),
    );
    sim.loss = vec![
        LossRule::new(
            Some(addr(OLD)),
            Direction::ToServer,
            LossPattern::EveryKth(7),
        ),
        LossRule::new(
            None,
            Direction::ToClient,
            LossPattern::Nth(vec![20, 21, 40]),
        ),
        // Matches nothing: nobody talks to NEW.
        LossRule::new(Some(addr(NEW)), Direction::Both, LossPattern::Next(5)),
    ];
    sim.run(RUN_LIMIT, |sim| sim.app.done());
    assert_eq!(sim.app.records.len(), 40, "QUIC repaired every loss");
    let every_7th = &sim.loss[0];
    assert!(every_7th.matched >= 40);
    assert_eq!(every_7th.dropped, every_7th.matched / 7);
    let nth = &sim.loss[1];
    assert!(nth.matched >= 40);
    assert_eq!(nth.dropped, 3);
    assert_eq!((sim.loss[2].matched, sim.loss[2].dropped), (0, 0));
    assert_eq!(
        sim.traffic.lost.get(&addr(OLD)).copied().unwrap_or(0) as u64,
        every_7th.dropped
    );
    assert_eq!(
        sim.traffic.lost_total() as u64,
        every_7th.dropped + nth.dropped
    );

    // The same seed drops the same datagrams; another seed others.
    let dropped_with = |seed| {
        let mut rule = LossRule::new(
            None,
            Direction::Both,
            LossPattern::Random {
                per_million: 100_000,
                seed,
            },
        );
        (0..1000u32)
            .filter(|_| rule.drops(true, addr(OLD)))
            .collect::<Vec<_>>()
    };
    let first = dropped_with(7);
    assert_eq!(first, dropped_with(7));
    assert_ne!(first, dropped_with(8));
    // About 10 % of 1000.
    assert!((60..=140).contains(&first.len()), "{}", first.len());
}

/// P-Explicit when the datagram carrying its acknowledgement of
/// SERVER_MIGRATION is lost: the client already sends only to NEW, the server
/// (still at OLD, unacknowledged) does not move, and only the fallback to
/// previously validated addresses (`fallback_after`, 2 s) brings the
/// acknowledgement to OLD. Nothing is lost, but the stall is that long.
#[test]
fn p_explicit_recovers_through_the_fallback_when_its_acknowledgement_is_lost() {
    let crypto = crypto();
    let mut sim = migr_pair(
        &crypto,
        Strategy::ProactiveExplicit,
        addr(OLD),
        Vec::new(),
        EchoClient::new(Mode::BackToBack, TOTAL),
    );
    let mut announced_at = None;
    let mut acknowledged_at = None;
    sim.run(RUN_LIMIT, |sim| {
        if sim.app.records.len() >= MIGRATE_AFTER && announced_at.is_none() {
            announced_at = Some(sim.elapsed());
            let server = sim.server.as_migr().unwrap();
            assert_eq!(
                server.endpoint.announce_migration_to_all(addr(NEW)).len(),
                1
            );
            // The client's next datagram to OLD carries the acknowledgement.
            sim.loss.push(LossRule::new(
                Some(addr(OLD)),
                Direction::ToServer,
                LossPattern::Next(1),
            ));
        }
        let server = sim.server.as_migr().unwrap();
        let acknowledged = server
            .events
            .iter()
            .any(|(_, e)| matches!(e, ServerEvent::MigrationAcknowledged { .. }));
        if acknowledged && acknowledged_at.is_none() {
            acknowledged_at = Some(sim.elapsed());
            sim.listening.remove(&addr(OLD));
            sim.listening.insert(addr(NEW));
        }
        sim.app.done()
    });
    let (announced_at, acknowledged_at) = (announced_at.unwrap(), acknowledged_at.unwrap());
    let events = take_client_events(&mut sim);
    let widened = events
        .iter()
        .filter(|(_, e)| matches!(e, ClientEvent::ProbingStarted { targets } if targets.contains(&addr(OLD))))
        .map(|(t, _)| *t)
        .next()
        .expect("the client fell back to OLD");
    let worst = sim
        .app
        .records
        .iter()
        .map(|r| r.service_time())
        .max()
        .unwrap();
    println!(
        "[p-explicit, acknowledgement lost] announced at {announced_at:?}, fell back to OLD at \
         {widened:?}, server saw the acknowledgement at {acknowledged_at:?}; worst request {worst:?}"
    );
    assert_eq!(sim.loss[0].dropped, 1);
    assert!(widened >= announced_at + Duration::from_secs(2));
    assert!(
        acknowledged_at >= widened,
        "the acknowledgement reached OLD only then"
    );
    assert_eq!(sim.app.records.len(), TOTAL, "no request lost");
    assert_eq!(sim.app.records.last().unwrap().server, addr(NEW));
}
