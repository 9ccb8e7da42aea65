//! Interoperability with endpoints that do not speak the extension (their
//! unidirectional streams included), and what happens to a peer that speaks
//! it badly: a malformed control stream closes the connection with the
//! extension's error code (simulated network).

mod common;

use std::time::{Duration, Instant};

use common::*;
use migr_quic::control::reason_phrase;
use migr_quic::frame::{self, STREAM_TYPE_BYTES};
use migr_quic::{
    ClientEvent, ClientMigrationConfig, Frame, FrameError, MIGR_FRAME_ERROR,
    MIGR_PROTOCOL_VIOLATION, ServerEvent, Strategy,
};
use quinn_proto::{ApplicationClose, Connection, ConnectionError, Dir, StreamId, VarInt};

const SERVER: &str = "10.77.1.1:4433";
const NEW: &str = "10.77.2.1:4433";
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

/// `ClientMigrationConfig::plain()`: the extension switched off in migr's
/// own client behaves as a plain quinn-proto client does: no control stream
/// of its own, nothing negotiated, and after an outage it recovers only by
/// quinn-proto's probe timeouts (no PING of its own while it waits).
#[test]
fn migr_client_without_the_extension_is_a_plain_client() {
    let crypto = crypto();
    let start = Instant::now();
    let server = MigrServer::new(&crypto, vec![addr(NEW)]);
    let client = MigrClient::connect(start, &crypto, ClientMigrationConfig::plain(), addr(SERVER));
    let mut sim = Sim::new(
        start,
        Box::new(server),
        Box::new(client),
        addr(SERVER),
        EchoClient::new(Mode::BackToBack, 20),
    );
    sim.run(LIMIT, |sim| sim.app.records.len() >= 10);
    let ch = sim.server.as_migr().unwrap().endpoint.connection_handles()[0];
    let migr = &mut sim
        .server
        .as_migr()
        .unwrap()
        .endpoint
        .connection(ch)
        .unwrap()
        .migration;
    assert!(!migr.is_negotiated(), "a plain client never sends HELLO");
    // The server stays put and is frozen for 300 ms.
    let pings_before = sim.client.conn().stats().frame_tx.ping;
    let frozen_at = sim.now;
    let back_at = frozen_at + Duration::from_millis(300);
    sim.schedule(frozen_at, NetChange::Freeze);
    sim.schedule(back_at, NetChange::Thaw);
    sim.run(LIMIT, |sim| sim.app.done());
    assert_eq!(sim.app.records.len(), 20, "no request lost");
    let client = sim.client.as_migr().unwrap();
    assert!(!client.endpoint.migration().is_negotiated());
    assert!(client.events.is_empty(), "{:?}", client.events);
    assert_eq!(
        client.endpoint.migration().primary(),
        addr(SERVER),
        "it never looked for another address"
    );
    // quinn-proto's probe timeouts send their own probes; the extension's
    // fast probing would add one PING per interval while frozen.
    let pings = client.endpoint.connection().stats().frame_tx.ping - pings_before;
    assert!(
        pings <= 4,
        "{pings} PINGs in a 300 ms outage: the client probed on its own"
    );
    let resumed = sim
        .app
        .records
        .iter()
        .map(|r| start + r.received)
        .find(|&t| t > back_at)
        .expect("a response after the outage");
    assert!(
        resumed - back_at > Duration::from_millis(20),
        "resumed {:?} after the outage ended: sooner than a backed-off probe timeout allows",
        resumed - back_at,
    );
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

// ---------------------------------------------------------------- malformed frames

/// A control stream: the stream type, then `rest` as it is.
fn control(rest: &[u8]) -> Vec<u8> {
    let mut bytes = STREAM_TYPE_BYTES.to_vec();
    bytes.extend_from_slice(rest);
    bytes
}

/// Opens a unidirectional stream on `conn` and writes `bytes` (finished if asked).
fn write_uni(conn: &mut Connection, bytes: &[u8], finish: bool) -> StreamId {
    let id = conn
        .streams()
        .open(Dir::Uni)
        .expect("unidirectional stream credit");
    let mut stream = conn.send_stream(id);
    let mut written = 0;
    while written < bytes.len() {
        written += stream.write(&bytes[written..]).expect("stream window");
    }
    if finish {
        stream.finish().unwrap();
    }
    id
}

/// (error code, reason) of an application close.
fn application_close(lost: &Option<ConnectionError>) -> Option<(VarInt, String)> {
    match lost {
        Some(ConnectionError::ApplicationClosed(ApplicationClose { error_code, reason })) => {
            Some((*error_code, String::from_utf8_lossy(reason).into_owned()))
        }
        _ => None,
    }
}

struct Malformed {
    label: &'static str,
    bytes: Vec<u8>,
    error: FrameError,
    code: u32,
}

/// What a migr client sends that the server must not accept.
fn client_side_defects() -> Vec<Malformed> {
    let oversized_payload = [0u8; 65];
    vec![
        Malformed {
            label: "truncated frame",
            // SERVER_MIGRATION declares 8 payload bytes, 1 follows.
            bytes: control(&[0x02, 0x08, 0x05]),
            error: FrameError::Truncated,
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "truncated varint",
            // TRIGGER whose length varint announces 2 bytes and has 1.
            bytes: control(&[0x01, 0x40]),
            error: FrameError::Truncated,
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "oversized length",
            bytes: control(&[&[0x01, 0x40, 65][..], &oversized_payload].concat()),
            error: FrameError::Oversized { declared: 65 },
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "oversized frame of an unknown type",
            bytes: control(&[&[0x3f, 0x40, 65][..], &oversized_payload].concat()),
            error: FrameError::Oversized { declared: 65 },
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "trailing bytes",
            bytes: control(&[0x01, 0x01, 0x00]),
            error: FrameError::TrailingBytes { frame_type: 0x01 },
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "bad address family",
            bytes: control(&[0x03, 0x07, 0x05, 1, 2, 3, 4, 0, 80]),
            error: FrameError::BadAddressFamily(5),
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "stream too long",
            bytes: control(&[0x01, 0x00].repeat(2100)),
            error: FrameError::StreamTooLong,
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "server frame from the client",
            bytes: frame::encode_stream(&[Frame::PoolMigrationAddress { address: addr(NEW) }])
                .unwrap(),
            error: FrameError::WrongDirection { frame_type: 0x03 },
            code: MIGR_PROTOCOL_VIOLATION,
        },
    ]
}

/// A migr client that negotiated the extension sends one malformed control
/// stream: the server closes the connection with the extension's error code
/// and a reason naming the defect, and reports it; nothing panics.
#[test]
fn a_malformed_control_stream_from_the_client_closes_the_connection() {
    for case in client_side_defects() {
        let crypto = crypto();
        let mut sim = migr_pair(
            &crypto,
            Strategy::ProactiveExplicit,
            addr(SERVER),
            Vec::new(),
            EchoClient::new(Mode::BackToBack, 1000),
        );
        let mut sent_after = None;
        sim.run(LIMIT, |sim| {
            let negotiated = sim
                .client
                .as_migr()
                .unwrap()
                .endpoint
                .migration()
                .is_negotiated();
            if sent_after.is_none() && negotiated && sim.app.records.len() >= 2 {
                sent_after = Some(sim.app.records.len());
                write_uni(sim.client.conn(), &case.bytes, true);
                sim.client.process();
            }
            sim.app.lost.is_some()
        });
        let label = case.label;
        let sent_after = sent_after.expect("the connection worked before");
        let (code, reason) = application_close(&sim.app.lost)
            .unwrap_or_else(|| panic!("{label}: not an application close: {:?}", sim.app.lost));
        println!(
            "[{label}] client sees: code {:#x}, reason {reason:?}",
            code.into_inner()
        );
        assert_eq!(code, VarInt::from_u32(case.code), "{label}");
        assert_eq!(reason, reason_phrase(&case.error), "{label}");
        assert!(
            sim.app.records.len() < 1000,
            "{label}: the connection ended"
        );
        assert!(sim.app.records.len() >= sent_after);

        let server = sim.server.as_migr().unwrap();
        let errors: Vec<&ServerEvent> = server
            .events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| matches!(e, ServerEvent::ProtocolError(_)))
            .collect();
        assert_eq!(
            errors,
            [&ServerEvent::ProtocolError(case.error)],
            "{label}: reported once, as that defect"
        );
        let app = server.apps.values().next().unwrap();
        assert_eq!(app.lost, Some(ConnectionError::LocallyClosed), "{label}");
    }
}

/// A peer that never said HELLO but writes a stream that starts with the
/// extension's stream type is speaking the extension: the same error.
#[test]
fn a_malformed_control_stream_from_a_plain_client_closes_the_connection_too() {
    let crypto = crypto();
    let start = Instant::now();
    let server = MigrServer::new(&crypto, Vec::new());
    let client = PlainClient::connect(start, &crypto, addr(SERVER));
    let mut sim = Sim::new(
        start,
        Box::new(server),
        Box::new(client),
        addr(SERVER),
        EchoClient::new(Mode::BackToBack, 1000),
    );
    let mut sent = false;
    sim.run(LIMIT, |sim| {
        if !sent && sim.app.records.len() >= 2 {
            sent = true;
            write_uni(sim.client.conn(), &control(&[0x02, 0x08, 0x05]), true);
            sim.client.process();
        }
        sim.app.lost.is_some()
    });
    assert_eq!(
        application_close(&sim.app.lost),
        Some((
            VarInt::from_u32(MIGR_FRAME_ERROR),
            reason_phrase(&FrameError::Truncated)
        ))
    );
}

/// The server sends a malformed control stream to a migr client, which
/// closes the connection the same way.
#[test]
fn a_malformed_control_stream_from_the_server_closes_the_connection() {
    let cases = [
        Malformed {
            label: "truncated frame",
            bytes: control(&[0x02, 0x08, 0x05, 0x04]),
            error: FrameError::Truncated,
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "oversized length",
            bytes: control(&[0x02, 0x80, 0x00, 0x10, 0x00]),
            error: FrameError::Oversized { declared: 4096 },
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "announcement of port 0",
            bytes: control(&[0x02, 0x08, 0x05, 0x04, 10, 77, 2, 1, 0, 0]),
            error: FrameError::UnusableAddress(addr("10.77.2.1:0")),
            code: MIGR_FRAME_ERROR,
        },
        Malformed {
            label: "TRIGGER from the server",
            bytes: frame::encode_stream(&[Frame::Trigger]).unwrap(),
            error: FrameError::WrongDirection { frame_type: 0x01 },
            code: MIGR_PROTOCOL_VIOLATION,
        },
    ];
    for case in cases {
        let crypto = crypto();
        let mut sim = migr_pair(
            &crypto,
            Strategy::ReactiveExplicit,
            addr(SERVER),
            Vec::new(),
            EchoClient::new(Mode::BackToBack, 1000),
        );
        let mut ch = None;
        sim.run(LIMIT, |sim| {
            let client_negotiated = sim
                .client
                .as_migr()
                .unwrap()
                .endpoint
                .migration()
                .is_negotiated();
            let server = sim.server.as_migr().unwrap();
            if ch.is_none() && client_negotiated && sim.app.records.len() >= 2 {
                let handle = server.endpoint.connection_handles()[0];
                ch = Some(handle);
                let connection = server.endpoint.connection(handle).unwrap();
                write_uni(&mut connection.conn, &case.bytes, true);
                server.endpoint.process(handle);
            }
            ch.is_some_and(|ch| server.apps.get(&ch).is_some_and(|a| a.lost.is_some()))
        });
        let label = case.label;
        let server = sim.server.as_migr().unwrap();
        let lost = &server.apps[&ch.unwrap()].lost;
        let (code, reason) = application_close(lost)
            .unwrap_or_else(|| panic!("{label}: not an application close: {lost:?}"));
        println!(
            "[{label}] server sees: code {:#x}, reason {reason:?}",
            code.into_inner()
        );
        assert_eq!(code, VarInt::from_u32(case.code), "{label}");
        assert_eq!(reason, reason_phrase(&case.error), "{label}");
        assert_eq!(
            sim.app.lost,
            Some(ConnectionError::LocallyClosed),
            "{label}"
        );
        let client = sim.client.as_migr().unwrap();
        assert!(
            client
                .events
                .iter()
                .any(|(_, e)| *e == ClientEvent::ProtocolError(case.error)),
            "{label}: {:?}",
            client.events
        );
    }
}

/// Unknown frame types are the one defect that is not an error: version 1
/// receivers skip them (by their length) so that later versions can add
/// frames. The frames around them still count and the connection goes on.
#[test]
fn unknown_frame_types_are_skipped_not_fatal() {
    let crypto = crypto();
    let mut sim = migr_pair(
        &crypto,
        Strategy::ProactiveExplicit,
        addr(SERVER),
        Vec::new(),
        EchoClient::new(Mode::BackToBack, 10),
    );
    let mut sent = false;
    sim.run(LIMIT, |sim| {
        let negotiated = sim
            .client
            .as_migr()
            .unwrap()
            .endpoint
            .migration()
            .is_negotiated();
        if !sent && negotiated && sim.app.records.len() >= 2 {
            sent = true;
            // type 0x3f with 3 bytes, type 0x21 (2-byte varint) with none, then TRIGGER.
            let bytes = control(&[0x3f, 0x03, 0xaa, 0xbb, 0xcc, 0x40, 0x21, 0x00, 0x01, 0x00]);
            write_uni(sim.client.conn(), &bytes, true);
            sim.client.process();
        }
        sim.app.done()
    });
    assert_eq!(sim.app.records.len(), 10);
    assert_eq!(sim.app.lost, None);
    let server = sim.server.as_migr().unwrap();
    let events: Vec<&ServerEvent> = server.events.iter().map(|(_, e)| e).collect();
    assert!(
        events.contains(&&ServerEvent::TriggerReceived),
        "the TRIGGER after the unknown frames: {events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ServerEvent::ProtocolError(_))),
        "{events:?}"
    );
}

// ---------------------------------------------------------------- application uni streams

/// Unidirectional streams an HTTP/3-like application might open; none is a
/// control stream, several begin like one. (bytes, finished)
fn foreign_streams() -> Vec<(Vec<u8>, bool)> {
    let mut large = vec![0x21];
    large.extend((0..20_000u32).map(|i| (i * 31 % 251) as u8));
    vec![
        // HTTP/3 control stream (type 0x00, SETTINGS): never finished.
        (vec![0x00, 0x04, 0x00], false),
        // QPACK encoder and decoder streams.
        (vec![0x02], true),
        (vec![0x03], true),
        // The extension's stream type but for its last byte.
        (
            vec![0xc0, 0x00, 0x00, 0x00, 0x6d, 0x69, 0x67, 0x73, 0x01, 0x00],
            true,
        ),
        // The first half of the stream type, then the end.
        (vec![0xc0, 0x00, 0x00, 0x00], true),
        // Nothing at all.
        (Vec::new(), true),
        // Many packets' worth after the first byte.
        (large, true),
    ]
}

fn expected(streams: &[(Vec<u8>, bool)]) -> Vec<ReceivedUni> {
    streams
        .iter()
        .map(|(data, finished)| ReceivedUni {
            data: data.clone(),
            finished: *finished,
            reset: None,
        })
        .collect()
}

/// A plain quinn-proto client opens its own unidirectional streams to a migr
/// server while a migr client, on the same server, exchanges application
/// unidirectional streams too and follows the server to a new address. Every
/// stream reaches its application byte for byte (the bytes the extension
/// looked at included), and nothing of it disturbs the extension.
#[test]
fn a_plain_peers_uni_streams_reach_the_application_intact() {
    let crypto = crypto();
    let mut sim = migr_pair(
        &crypto,
        Strategy::ProactiveExplicit,
        addr(SERVER),
        Vec::new(),
        EchoClient::new(Mode::BackToBack, 30),
    );
    let plain = PlainClient::connect(sim.start, &crypto, addr(SERVER));
    sim.add_client(
        "10.77.0.3",
        Box::new(plain),
        EchoClient::new(Mode::BackToBack, 3),
    );

    let streams = foreign_streams();
    let extra = [0x07, 0x01, 0x00];
    let migr_to_server = (vec![0x00, 0x04, 0x00, b'm'], true);
    let server_to_migr = (vec![0x01, b's', b'e', b'r', b'v', b'e', b'r'], true);
    let mut plain_sent = false;
    let mut h3_control = None;
    let mut extra_sent = false;
    let mut migr_sent = false;
    let mut announced = false;
    let mut moved = false;
    let mut handles = None;
    sim.run(LIMIT, |sim| {
        let plain_done = sim.others[0].app.done();
        if plain_done && !plain_sent {
            plain_sent = true;
            let conn = sim.others[0].node.conn();
            for (i, (bytes, finished)) in streams.iter().enumerate() {
                let id = write_uni(conn, bytes, *finished);
                if i == 0 {
                    h3_control = Some(id);
                }
            }
            sim.others[0].node.process();
        }
        let server = sim.server.as_migr().unwrap();
        // Which connection is whose: the migr client's negotiated.
        if handles.is_none() && server.endpoint.connection_handles().len() == 2 {
            let hs = server.endpoint.connection_handles();
            let negotiated = |server: &mut MigrServer, ch| {
                server
                    .endpoint
                    .connection(ch)
                    .unwrap()
                    .migration
                    .is_negotiated()
            };
            if negotiated(server, hs[0]) {
                handles = Some((hs[0], hs[1]));
            } else if negotiated(server, hs[1]) {
                handles = Some((hs[1], hs[0]));
            }
        }
        let Some((migr_ch, plain_ch)) = handles else {
            return false;
        };
        let plain_received = server
            .apps
            .get(&plain_ch)
            .map_or(0, |a| a.uni.streams.len());
        // Once the H3-like control stream is there, more arrives on it.
        if plain_received >= 1 && !extra_sent {
            extra_sent = true;
            let conn = sim.others[0].node.conn();
            let mut stream = conn.send_stream(h3_control.unwrap());
            assert_eq!(stream.write(&extra).unwrap(), extra.len());
            sim.others[0].node.process();
        }
        let server = sim.server.as_migr().unwrap();
        if !migr_sent && sim.app.records.len() >= 5 {
            migr_sent = true;
            write_uni(sim.client.conn(), &migr_to_server.0, true);
            sim.client.process();
            let connection = server.endpoint.connection(migr_ch).unwrap();
            write_uni(&mut connection.conn, &server_to_migr.0, true);
            server.endpoint.process(migr_ch);
        }
        // Move once the plain client's streams are all in.
        if !announced && plain_received == streams.len() && sim.app.records.len() >= 10 {
            announced = true;
            assert_eq!(
                server.endpoint.announce_migration_to_all(addr(NEW)).len(),
                1
            );
        }
        let acknowledged = server
            .events
            .iter()
            .any(|(_, e)| matches!(e, ServerEvent::MigrationAcknowledged { .. }));
        if acknowledged && !moved {
            moved = true;
            sim.listening.remove(&addr(SERVER));
            sim.listening.insert(addr(NEW));
        }
        sim.app.done()
    });

    let (migr_ch, plain_ch) = handles.unwrap();
    let server = sim.server.as_migr().unwrap();
    let mut wanted = expected(&streams);
    wanted[0].data.extend_from_slice(&extra);
    let received: Vec<ReceivedUni> = server.apps[&plain_ch]
        .uni
        .streams
        .values()
        .cloned()
        .collect();
    assert_eq!(received.len(), wanted.len());
    for (i, (got, want)) in received.iter().zip(&wanted).enumerate() {
        assert_eq!(got, want, "plain client's stream {i}");
    }
    assert_eq!(
        server.apps[&migr_ch]
            .uni
            .streams
            .values()
            .cloned()
            .collect::<Vec<_>>(),
        expected(std::slice::from_ref(&migr_to_server)),
        "the migr client's application stream"
    );
    assert!(
        !server
            .events
            .iter()
            .any(|(_, e)| matches!(e, ServerEvent::ProtocolError(_))),
        "{:?}",
        server.events
    );
    assert_eq!(
        sim.app.uni.streams.values().cloned().collect::<Vec<_>>(),
        expected(std::slice::from_ref(&server_to_migr)),
        "the server application's stream to the migr client"
    );
    // The migr client followed the server.
    assert_eq!(sim.app.records.len(), 30);
    assert_eq!(sim.app.records.last().unwrap().server, addr(NEW));
    assert!(
        sim.client
            .as_migr()
            .unwrap()
            .events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::PrimaryChanged { to, .. } if *to == addr(NEW)))
    );
    assert_eq!(sim.others[0].app.records.len(), 3);
}

/// The reverse: a plain quinn-proto server's unidirectional streams reach a
/// migr client's application intact (its HELLO stream goes unanswered).
#[test]
fn a_plain_servers_uni_streams_reach_a_migr_clients_application_intact() {
    let crypto = crypto();
    let start = Instant::now();
    let server = PlainServer::new(&crypto);
    let client = MigrClient::connect(
        start,
        &crypto,
        ClientMigrationConfig::new(Strategy::PoolOfAddresses),
        addr(SERVER),
    );
    let mut sim = Sim::new(
        start,
        Box::new(server),
        Box::new(client),
        addr(SERVER),
        EchoClient::new(Mode::BackToBack, 10),
    );
    let streams = foreign_streams();
    let mut sent = false;
    sim.run(LIMIT, |sim| {
        if !sent && sim.app.records.len() >= 2 {
            sent = true;
            let server = sim.server.as_plain().unwrap();
            let (conn, _) = server.first().unwrap();
            for (bytes, finished) in &streams {
                write_uni(conn, bytes, *finished);
            }
            server.run_app();
        }
        sim.app.done() && sim.app.uni.streams.len() == streams.len()
    });
    let received: Vec<ReceivedUni> = sim.app.uni.streams.values().cloned().collect();
    let wanted = expected(&streams);
    for (i, (got, want)) in received.iter().zip(&wanted).enumerate() {
        assert_eq!(got, want, "server's stream {i}");
    }
    let client = sim.client.as_migr().unwrap();
    assert!(!client.endpoint.migration().is_negotiated());
    assert!(
        !client
            .events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::ProtocolError(_))),
        "{:?}",
        client.events
    );
}

/// A stream the peer resets before its kind is known still goes to the
/// application, with the reset code.
#[test]
fn a_reset_uni_stream_reaches_the_application_as_reset() {
    let crypto = crypto();
    let start = Instant::now();
    let server = MigrServer::new(&crypto, Vec::new());
    let client = PlainClient::connect(start, &crypto, addr(SERVER));
    let mut sim = Sim::new(
        start,
        Box::new(server),
        Box::new(client),
        addr(SERVER),
        EchoClient::new(Mode::BackToBack, 5),
    );
    let mut sent = false;
    sim.run(LIMIT, |sim| {
        if !sent && !sim.app.records.is_empty() {
            sent = true;
            let conn = sim.client.conn();
            // Part of the stream type, then a reset: the kind stays unknown.
            let id = write_uni(conn, &STREAM_TYPE_BYTES[..3], false);
            conn.send_stream(id).reset(VarInt::from_u32(0x10c)).unwrap();
            sim.client.process();
        }
        let server = sim.server.as_migr().unwrap();
        sim.app.done()
            && server
                .apps
                .values()
                .any(|a| a.uni.streams.values().any(|s| s.reset.is_some()))
    });
    let server = sim.server.as_migr().unwrap();
    let streams: Vec<&ReceivedUni> = server
        .apps
        .values()
        .flat_map(|a| a.uni.streams.values())
        .collect();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].reset, Some(VarInt::from_u32(0x10c)));
    assert!(!streams[0].finished);
    assert!(server.events.is_empty(), "{:?}", server.events);
}
