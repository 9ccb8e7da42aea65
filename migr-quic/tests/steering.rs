//! R-Explicit behind migr's steering, on the simulated network (no sockets,
//! virtual time): the server moved from OLD to NEW, and the source edge node
//! forwards what still reaches OLD to NEW. The server answers from NEW.

mod common;

use std::time::Duration;

use common::*;
use migr_quic::{ClientEvent, ServerEvent, Strategy};

const OLD: &str = "10.77.1.1:4433";
const NEW: &str = "10.77.2.1:4433";

struct Run {
    records: Vec<RequestRecord>,
    events: Vec<(Duration, ClientEvent)>,
    forwarded: usize,
    primary: std::net::SocketAddr,
}

/// Seed 000 scenario 1 (sporadic requests, 10 s apart, the move between
/// requests 2 and 3), with steering: OLD forwards to NEW after the move.
fn sporadic_with_steering(strategy: Strategy) -> Run {
    let crypto = crypto();
    let mut sim = migr_pair(
        &crypto,
        strategy,
        addr(OLD),
        Vec::new(),
        EchoClient::new(Mode::Sporadic(Duration::from_secs(10)), 4),
    );
    let downtime = Duration::from_millis(1000);
    let mut announced = false;
    let mut moved = false;
    sim.run(Duration::from_secs(60), |sim| {
        if sim.app.records.len() >= 2 && !announced {
            announced = true;
            let server = sim.server.as_migr().unwrap();
            assert_eq!(
                server.endpoint.announce_migration_to_all(addr(NEW)).len(),
                1
            );
        }
        let acknowledged = sim
            .server
            .as_migr()
            .unwrap()
            .events
            .iter()
            .any(|(_, e)| matches!(e, ServerEvent::MigrationAcknowledged { .. }));
        if acknowledged && !moved {
            moved = true;
            let now = sim.now;
            sim.listening.remove(&addr(OLD));
            sim.frozen = true;
            sim.schedule(now + downtime, NetChange::Listen(addr(NEW)));
            sim.schedule(now + downtime, NetChange::Thaw);
            sim.forward.insert(addr(OLD), addr(NEW));
        }
        sim.app.done()
    });
    let start = sim.start;
    let client = sim.client.as_migr().unwrap();
    let primary = client.endpoint.migration().primary();
    let events = client
        .events
        .drain(..)
        .map(|(t, e)| (t - start, e))
        .collect();
    Run {
        records: sim.app.records.clone(),
        events,
        forwarded: sim.traffic.forwarded.get(&addr(OLD)).copied().unwrap_or(0),
        primary,
    }
}

#[test]
fn r_explicit_takes_answers_from_the_announced_address_without_waiting_for_a_loss() {
    let run = sporadic_with_steering(Strategy::ReactiveExplicit);
    assert_eq!(run.records.len(), 4, "every request answered");
    let baseline = run.records[1].service_time();
    let third = run.records[2].service_time();
    println!(
        "[steering] r-explicit: request 3 {third:?} (baseline {baseline:?}), forwarded {}, events {:?}",
        run.forwarded, run.events
    );
    assert!(
        run.forwarded >= 1,
        "request 3 went to OLD and was forwarded"
    );
    assert!(
        third <= baseline + Duration::from_millis(5),
        "request 3 answered in one round trip, not after a loss timeout"
    );
    assert!(
        !run.events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::LossDetected { .. })),
        "no loss was needed"
    );
    // Seed 000: R-Explicit moves only on a loss. Answers from the announced
    // address are authentic and taken, but they do not move the primary:
    // while OLD forwards, requests keep going there.
    assert_eq!(
        run.primary,
        addr(OLD),
        "R-Explicit stays at OLD until a loss"
    );
}

/// The same over real UDP sockets on loopback, with the tokio driver's client
/// (the client the testbed runs): 127.0.0.1 plays OLD, 127.0.0.2 NEW. The
/// server is the sans-I/O endpoint driven by hand, so that after the move
/// what reaches OLD's socket is handed to it as received at NEW (steering's
/// FORWARD) and it answers from NEW's socket.
#[tokio::test(flavor = "current_thread")]
async fn r_explicit_driver_takes_answers_from_the_announced_address_at_once() -> anyhow::Result<()>
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use migr_quic::ClientMigrationConfig;
    use migr_quic::driver::Client;
    use tokio::net::UdpSocket;

    let crypto = crypto();
    let old_socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let new_socket = Arc::new(UdpSocket::bind("127.0.0.2:0").await?);
    let (old, new) = (old_socket.local_addr()?, new_socket.local_addr()?);
    let moved = Arc::new(AtomicBool::new(false));
    let (control_tx, mut control) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (acked_tx, mut acked) = tokio::sync::mpsc::unbounded_channel::<()>();
    let server_task = {
        let moved = moved.clone();
        let (old_socket, new_socket) = (old_socket.clone(), new_socket.clone());
        let mut server = MigrServer::new(&crypto, Vec::new());
        tokio::spawn(async move {
            let (mut old_buf, mut new_buf) = (vec![0u8; 65_535], vec![0u8; 65_535]);
            let mut acknowledged = false;
            loop {
                server.run_app();
                if !acknowledged
                    && server
                        .events
                        .iter()
                        .any(|(_, e)| matches!(e, ServerEvent::MigrationAcknowledged { .. }))
                {
                    acknowledged = true;
                    let _ = acked_tx.send(());
                }
                while let Some((source, destination, data)) = server.poll_transmit(Instant::now()) {
                    let socket = if source == new {
                        &new_socket
                    } else {
                        &old_socket
                    };
                    socket.send_to(&data, destination).await?;
                }
                let timeout = server.poll_timeout();
                let sleep = async move {
                    match timeout {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = old_socket.recv_from(&mut old_buf) => {
                        let (n, from) = r?;
                        // After the move OLD only forwards, to NEW.
                        let local = if moved.load(Ordering::SeqCst) { new } else { old };
                        server.handle_datagram(Instant::now(), local, from, &old_buf[..n]);
                    }
                    r = new_socket.recv_from(&mut new_buf) => {
                        let (n, from) = r?;
                        server.handle_datagram(Instant::now(), new, from, &new_buf[..n]);
                    }
                    Some(()) = control.recv() => {
                        let ids = server.endpoint.announce_migration_to_all(new);
                        assert_eq!(ids.len(), 1, "the client negotiated the extension");
                    }
                    _ = sleep => server.handle_timeout(Instant::now()),
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        })
    };

    let client = Client::connect(
        crypto.client.clone(),
        ClientMigrationConfig::new(Strategy::ReactiveExplicit),
        "127.0.0.1:0".parse()?,
        old,
        "migr.test",
    )
    .await?;
    let request = |index: usize| {
        let client = &client;
        async move {
            let data = payload(index);
            let sent = Instant::now();
            let (mut send, mut recv) = client.open_bi().await?;
            send.write_all(&data).await?;
            send.finish()?;
            let back = recv.read_to_end(1 << 16).await?;
            anyhow::ensure!(back == data, "echo {index} differs");
            anyhow::Ok(sent.elapsed())
        }
    };
    let within = |d| tokio::time::timeout(Duration::from_secs(5), d);
    within(request(0)).await??;
    let baseline = within(request(1)).await??;
    while !client.is_negotiated() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    control_tx.send(())?;
    tokio::time::timeout(Duration::from_secs(5), acked.recv()).await?;
    // The server "moves": OLD forwards to NEW, answers leave from NEW.
    moved.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = client.try_events();
    let third = within(request(2)).await??;
    let events = client.try_events();
    println!(
        "[steering, driver] r-explicit: request 3 {third:?} (baseline {baseline:?}), events {events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::LossDetected { .. })),
        "no loss was needed: {events:?}"
    );
    // The loss timeout is at least 35 ms; one loopback round trip is far less.
    assert!(
        third < Duration::from_millis(30),
        "request 3 took {third:?}: the client waited for a loss"
    );
    server_task.abort();
    Ok(())
}
