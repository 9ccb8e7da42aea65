//! Wire format of the extension's frames: round trips, and malformed input
//! that must yield a clear error, never a panic.

use std::net::SocketAddr;

use migr_quic::frame::{
    self, Frame, FrameError, MAX_CONTROL_STREAM_LEN, MAX_FRAME_PAYLOAD, STREAM_TYPE,
    STREAM_TYPE_BYTES, frame_type,
};
use migr_quic::varint;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::Hello { version: 1 },
        Frame::Hello {
            version: varint::MAX_VARINT,
        },
        Frame::Trigger,
        Frame::ServerMigration {
            sequence: 0,
            address: addr("10.77.2.1:4433"),
        },
        Frame::ServerMigration {
            sequence: 1 << 40,
            address: addr("[2001:db8::7]:65535"),
        },
        Frame::PoolMigrationAddress {
            address: addr("192.0.2.1:1"),
        },
        Frame::PoolMigrationAddress {
            address: addr("[fd00::1]:443"),
        },
    ]
}

#[test]
fn every_frame_round_trips() {
    for frame in all_frames() {
        let mut buf = Vec::new();
        frame.encode(&mut buf).unwrap();
        assert_eq!(Frame::decode(&buf), Ok((frame, buf.len())), "{frame:?}");
    }
}

#[test]
fn known_encodings() {
    let mut buf = Vec::new();
    Frame::Trigger.encode(&mut buf).unwrap();
    assert_eq!(buf, [0x01, 0x00]);

    buf.clear();
    Frame::ServerMigration {
        sequence: 5,
        address: addr("10.77.2.1:4433"),
    }
    .encode(&mut buf)
    .unwrap();
    // type 0x02, length 8: sequence 5, family 4, 10.77.2.1, port 4433 (0x1151).
    assert_eq!(buf, [0x02, 0x08, 0x05, 0x04, 10, 77, 2, 1, 0x11, 0x51]);

    let stream = frame::encode_stream(&[Frame::Hello { version: 1 }]).unwrap();
    assert_eq!(
        stream,
        [0xc0, 0, 0, 0, 0x6d, 0x69, 0x67, 0x72, 0x00, 0x01, 0x01]
    );
}

#[test]
fn streams_round_trip_and_skip_unknown_frames() {
    let frames = all_frames();
    let mut stream = frame::encode_stream(&frames).unwrap();
    assert_eq!(frame::decode_stream(&stream), Ok(frames.clone()));

    // An unknown frame type in the middle is skipped (forward compatibility).
    let mut extended = frame::encode_stream(&frames[..2]).unwrap();
    extended.extend_from_slice(&[0x3f, 0x03, 0xaa, 0xbb, 0xcc]);
    let tail = frame::encode_stream(&frames[2..]).unwrap();
    let header_len = varint::encoded_len(STREAM_TYPE).unwrap();
    extended.extend_from_slice(&tail[header_len..]);
    assert_eq!(frame::decode_stream(&extended), Ok(frames));

    stream.truncate(header_len);
    assert_eq!(frame::decode_stream(&stream), Ok(Vec::new()));
}

#[test]
fn truncated_input_is_an_error_at_every_cut() {
    for frame in all_frames() {
        let mut buf = Vec::new();
        frame.encode(&mut buf).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(
                Frame::decode(&buf[..cut]),
                Err(FrameError::Truncated),
                "{frame:?} cut at {cut}"
            );
        }
    }
    let stream = frame::encode_stream(&all_frames()).unwrap();
    for cut in 0..stream.len() {
        let result = frame::decode_stream(&stream[..cut]);
        // A cut exactly between frames is a valid, shorter stream.
        if let Err(e) = result {
            assert_eq!(e, FrameError::Truncated, "stream cut at {cut}");
        }
    }
}

#[test]
fn unknown_type_reports_how_to_skip_it() {
    assert_eq!(
        Frame::decode(&[0x40, 0x21, 0x02, 0xde, 0xad]),
        Err(FrameError::UnknownType {
            frame_type: 0x21,
            frame_len: 5
        })
    );
}

#[test]
fn oversized_fields_are_rejected() {
    // Declared payload longer than the limit, even with the bytes present.
    let mut buf = vec![frame_type::POOL_MIGRATION_ADDRESS as u8, 0x40, 65];
    buf.extend(std::iter::repeat_n(0u8, 65));
    assert_eq!(
        Frame::decode(&buf),
        Err(FrameError::Oversized {
            declared: MAX_FRAME_PAYLOAD + 1
        })
    );
    // A huge declared length must not be trusted for allocation or slicing.
    let huge = [0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        Frame::decode(&huge),
        Err(FrameError::Oversized { .. })
    ));
    // Fields longer than the frame: extra bytes inside the payload.
    assert_eq!(
        Frame::decode(&[0x01, 0x01, 0x00]),
        Err(FrameError::TrailingBytes { frame_type: 0x01 })
    );
    // A stream over the buffering limit.
    let long = vec![0u8; MAX_CONTROL_STREAM_LEN + 1];
    assert_eq!(frame::decode_stream(&long), Err(FrameError::StreamTooLong));
}

#[test]
fn bad_addresses_are_rejected_both_ways() {
    // family 5
    assert_eq!(
        Frame::decode(&[0x03, 0x07, 0x05, 1, 2, 3, 4, 0, 80]),
        Err(FrameError::BadAddressFamily(5))
    );
    // port 0
    assert_eq!(
        Frame::decode(&[0x03, 0x07, 0x04, 1, 2, 3, 4, 0, 0]),
        Err(FrameError::UnusableAddress(addr("1.2.3.4:0")))
    );
    // unspecified IP
    assert!(matches!(
        Frame::decode(&[0x03, 0x07, 0x04, 0, 0, 0, 0, 0, 80]),
        Err(FrameError::UnusableAddress(_))
    ));
    let mut buf = Vec::new();
    assert!(matches!(
        Frame::PoolMigrationAddress {
            address: addr("0.0.0.0:443")
        }
        .encode(&mut buf),
        Err(FrameError::UnusableAddress(_))
    ));
    assert!(matches!(
        Frame::Hello { version: u64::MAX }.encode(&mut buf),
        Err(FrameError::ValueTooLarge(_))
    ));
}

#[test]
fn a_stream_of_another_type_is_not_a_control_stream() {
    assert_eq!(
        frame::decode_stream(&[0x00, 0x00, 0x01, 0x01]),
        Err(FrameError::NotAControlStream { stream_type: 0 })
    );
    assert_eq!(frame::decode_stream(&[]), Err(FrameError::Truncated));
}

#[test]
fn a_control_stream_is_told_by_its_first_eight_bytes() {
    let mut encoded = Vec::new();
    varint::write(STREAM_TYPE, &mut encoded).unwrap();
    assert_eq!(
        encoded, STREAM_TYPE_BYTES,
        "the only encoding of STREAM_TYPE"
    );
    // Every prefix of the stream type may still become a control stream ...
    for n in 0..=STREAM_TYPE_BYTES.len() {
        assert!(frame::may_be_control_stream(&STREAM_TYPE_BYTES[..n]), "{n}");
    }
    let mut with_frames = STREAM_TYPE_BYTES.to_vec();
    with_frames.extend_from_slice(&[0x01, 0x00]);
    assert!(frame::may_be_control_stream(&with_frames));
    // ... one differing byte anywhere in it and it cannot.
    for at in 0..STREAM_TYPE_BYTES.len() {
        let mut other = STREAM_TYPE_BYTES;
        other[at] ^= 0x01;
        assert!(!frame::may_be_control_stream(&other[..=at]), "byte {at}");
    }
    // HTTP/3's control, QPACK encoder and decoder stream types.
    for h3 in [0x00u8, 0x02, 0x03] {
        assert!(!frame::may_be_control_stream(&[h3]));
    }
}

#[test]
fn errors_read_clearly() {
    assert_eq!(
        FrameError::WrongDirection { frame_type: 0x01 }.to_string(),
        "migration frame TRIGGER (0x01) is not allowed from this peer"
    );
    assert_eq!(
        FrameError::TrailingBytes { frame_type: 0x02 }.to_string(),
        "migration frame SERVER_MIGRATION (0x02) has trailing bytes"
    );
    let message = FrameError::Oversized { declared: 999 }.to_string();
    assert!(
        message.contains("999") && message.contains("64"),
        "{message}"
    );
    assert!(
        FrameError::UnknownType {
            frame_type: 0x21,
            frame_len: 3
        }
        .to_string()
        .contains("0x21")
    );
}

/// Arbitrary bytes never make the decoders panic (a cheap, deterministic fuzz).
#[test]
fn random_input_never_panics() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid = frame::encode_stream(&all_frames()).unwrap();
    for round in 0..20_000 {
        let len = (next() % 48) as usize;
        let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // Mutations of a valid stream reach deeper into the parser.
            input = valid.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                input[at] = next() as u8;
            }
            input.truncate((next() as usize) % (input.len() + 1));
        }
        let _ = Frame::decode(&input);
        let _ = frame::decode_stream(&input);
        let _ = varint::read(&input);
    }
}
