//! Interoperability with endpoints that do not speak the extension, and
//! robustness against a peer that speaks it badly (simulated network).

mod common;

use std::time::{Duration, Instant};

use common::*;
use migr_quic::{ClientEvent, ClientMigrationConfig, ServerEvent, Strategy};
use quinn_proto::Dir;

const SERVER: &str = "10.77.1.1:4433";
const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn plain_quinn_client_works_against_a_migr_server() {
    let crypto = crypto();
    let start = Instant::now();
    let server = MigrServer::new(&crypto, vec![addr("10.77.9.9:4433")]);
    let client = PlainClient::connect(start, &crypto, addr(SERVER));
    let mut sim = Sim::new(
        start,
        Box::new(server),
        Box::new(client),
        addr(SERVER),
        EchoClient::new(Mode::BackToBack, 10),
    );
    sim.run(LIMIT, |sim| sim.app.done());
    assert_eq!(sim.app.records.len(), 10);

    let server = sim.server.as_migr().unwrap();
    // Nothing was negotiated, so the server never sent a control stream.
    assert!(server.events.is_empty(), "{:?}", server.events);
    let ch = server.endpoint.connection_handles()[0];
    let migr = &mut server.endpoint.connection(ch).unwrap().migration;
    assert!(!migr.is_negotiated());
    // ... and it refuses to announce to this client.
    assert_eq!(
        server
            .endpoint
            .announce_migration(ch, addr("10.77.2.1:4433")),
        Err(migr_quic::AnnounceError::NotNegotiated)
    );
    let conn = sim.client.conn();
    assert_eq!(conn.streams().accept(Dir::Uni), None);
    assert_eq!(conn.stats().frame_rx.max_streams_uni, 0);
}

#[test]
fn migr_client_works_against_a_plain_server() {
    let crypto = crypto();
    let start = Instant::now();
    let server = PlainServer::new(&crypto);
    let client = MigrClient::connect(
        start,
        &crypto,
        ClientMigrationConfig::new(Strategy::ProactiveExplicit),
        addr(SERVER),
    );
    let mut sim = Sim::new(
        start,
        Box::new(server),
        Box::new(client),
        addr(SERVER),
        EchoClient::new(Mode::BackToBack, 10),
    );
    sim.run(LIMIT, |sim| sim.app.done());
    assert_eq!(sim.app.records.len(), 10);
    let client = sim.client.as_migr().unwrap();
    assert!(!client.endpoint.migration().is_negotiated());
    assert!(
        client.endpoint.send_trigger().is_err(),
        "no TRIGGER to a server that never answered HELLO"
    );
    assert!(
        !client
            .events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::Negotiated)),
    );
}

/// A client that writes garbage on a unidirectional stream: the server
/// reports a clear error, turns the extension off, and keeps serving.
#[test]
fn malformed_control_stream_is_reported_not_fatal() {
    for garbage in [
        // control stream whose frame is truncated
        vec![0xc0, 0, 0, 0, 0x6d, 0x69, 0x67, 0x72, 0x02, 0x08, 0x05],
        // a server-to-client frame sent by the client
        migr_quic::frame::encode_stream(&[migr_quic::Frame::PoolMigrationAddress {
            address: addr("10.77.2.1:4433"),
        }])
        .unwrap(),
        // not a control stream at all
        vec![0x21, 0x00, 0x00],
    ] {
        let crypto = crypto();
        let start = Instant::now();
        let server = MigrServer::new(&crypto, Vec::new());
        let client = PlainClient::connect(start, &crypto, addr(SERVER));
        let mut sim = Sim::new(
            start,
            Box::new(server),
            Box::new(client),
            addr(SERVER),
            EchoClient::new(Mode::BackToBack, 6),
        );
        let mut sent = false;
        sim.run(LIMIT, |sim| {
            if !sent && sim.app.records.len() >= 2 {
                sent = true;
                let conn = sim.client.conn();
                let id = conn.streams().open(Dir::Uni).unwrap();
                let mut stream = conn.send_stream(id);
                stream.write(&garbage).unwrap();
                stream.finish().unwrap();
                sim.client.process();
            }
            sim.app.done()
        });
        assert_eq!(sim.app.records.len(), 6, "the connection kept working");
        let server = sim.server.as_migr().unwrap();
        let errors: Vec<_> = server
            .events
            .iter()
            .filter(|(_, e)| matches!(e, ServerEvent::ProtocolError(_)))
            .collect();
        assert_eq!(errors.len(), 1, "{:?}", server.events);
        println!("{garbage:02x?} -> {:?}", errors[0].1);
    }
}
