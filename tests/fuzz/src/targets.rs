//! What each fuzz target checks, as plain functions over the input bytes (the
//! files in `fuzz_targets/` only call these), so that the seed corpus can also
//! be replayed by `cargo test` without libFuzzer.
//!
//! Every check panics, with both results and the input in hex, when
//! migr-common and the reference disagree.

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use migr_common::cid::{CidConfig, CidConfigError};
use migr_common::wire::{self, OptionRef, packet::parse_packet, quic};
use migr_control::api::{self, ApiError, Op, Request, Response};
use migr_quic_codec::frame::{self, Frame, FrameError};
use serde_json::Value;

use crate::project;
use crate::reference::{self as r, Bytes};

/// Names of the targets, as in `fuzz_targets/<name>.rs` and `corpus/<name>/`.
pub const TARGETS: &[&str] = &[
    "packet",
    "layers",
    "tcp_options",
    "mptcp",
    "quic",
    "cid",
    "quic_ext_frame",
    "control_api",
];

/// Runs the check of target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "packet" => packet(data),
        "layers" => layers(data),
        "tcp_options" => tcp_options(data),
        "mptcp" => mptcp(data),
        "quic" => quic(data),
        "cid" => cid(data),
        "quic_ext_frame" => quic_ext_frame(data),
        "control_api" => control_api(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// Reads a target's parameters off the front of its input; missing bytes are 0.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn rest(self) -> &'a [u8] {
        self.data
    }
}

fn hex(data: &[u8]) -> String {
    let shown = &data[..data.len().min(2048)];
    let mut s: String = shown.iter().map(|b| format!("{b:02x}")).collect();
    if shown.len() < data.len() {
        s.push_str(&format!("... ({} bytes)", data.len()));
    }
    s
}

/// Demands `ours == reference`, except that migr-common may say `truncated`
/// where the reference read past `MAX_PARSE_OFFSET` (see [`crate::reference`]).
fn agree<T: Debug + PartialEq, E: Debug + PartialEq>(
    what: impl FnOnce() -> String,
    frame: &[u8],
    ours: &Result<T, E>,
    reference: &Result<T, E>,
    past_limit: bool,
    truncated: &E,
) {
    if ours == reference {
        return;
    }
    if past_limit && ours.as_ref().err() == Some(truncated) {
        return;
    }
    panic!(
        "{}: migr-common and the reference disagree\n  migr-common: {ours:?}\n  reference:   {reference:?}\n  reference read past the parse limit: {past_limit}\n  frame: {}",
        what(),
        hex(frame)
    );
}

// ---------------------------------------------------------------------------
// migr-common
// ---------------------------------------------------------------------------

/// `packet`: the input is an Ethernet frame. `parse_packet`, then what the
/// classifier parses next: the QUIC header of a UDP payload, the MPTCP option
/// that the TCP walk found.
pub fn packet(data: &[u8]) {
    let b = Bytes::new(data);
    let parsed = parse_packet(data);
    let ours = project::result(parsed, project::packet);
    let theirs = r::packet(&b);
    agree(
        || "parse_packet".to_string(),
        data,
        &ours,
        &theirs,
        b.went_past_limit(),
        &r::PacketError::Truncated,
    );
    let Ok(p) = parsed else {
        return;
    };
    if let Some((start, end)) = p.udp_payload() {
        for (cid_len, grease) in [(8, false), (20, true)] {
            check_quic(data, start, end, cid_len, grease, 0x21);
        }
    }
    if let Some(t) = p.tcp()
        && let Some(opt) = t.mptcp
    {
        check_mptcp(data, opt, t.flags);
    }
}

/// `layers`: each layer parser on its own, at any offset:
/// `selector, offset (2), ip_end (2), frame`.
pub fn layers(data: &[u8]) {
    /// One layer's result.
    #[derive(Debug, PartialEq)]
    enum Layer {
        Eth(r::Eth),
        Ip(r::Ip),
        Udp(r::Udp),
        Tcp(r::Tcp),
    }
    let mut input = Input::new(data);
    let selector = input.u8();
    let at = input.u16() as usize;
    let ip_end = input.u16() as usize;
    let frame = input.rest();
    let b = Bytes::new(frame);
    let (what, ours, theirs) = match selector % 5 {
        0 => (
            None,
            project::result(wire::ethernet::parse_ethernet(frame), |e| {
                Layer::Eth(project::eth(e))
            }),
            r::ethernet(&b).map(Layer::Eth),
        ),
        1 => (
            Some("parse_ipv4"),
            project::result(wire::ip::parse_ipv4(frame, at), |i| {
                Layer::Ip(project::ip(i))
            }),
            r::ipv4(&b, at).map(Layer::Ip),
        ),
        2 => (
            Some("parse_ipv6"),
            project::result(wire::ip::parse_ipv6(frame, at), |i| {
                Layer::Ip(project::ip(i))
            }),
            r::ipv6(&b, at).map(Layer::Ip),
        ),
        3 => (
            Some("parse_udp"),
            project::result(wire::udp::parse_udp(frame, at, ip_end), |u| {
                Layer::Udp(project::udp(u))
            }),
            r::udp(&b, at, ip_end).map(Layer::Udp),
        ),
        _ => (
            Some("parse_tcp"),
            project::result(wire::tcp::parse_tcp(frame, at, ip_end), |t| {
                Layer::Tcp(project::tcp(t))
            }),
            r::tcp(&b, at, ip_end).map(Layer::Tcp),
        ),
    };
    let what = || match what {
        None => "parse_ethernet".to_string(),
        Some(name) => format!("{name}(offset {at}, ip_end {ip_end})"),
    };
    agree(
        what,
        frame,
        &ours,
        &theirs,
        b.went_past_limit(),
        &r::PacketError::Truncated,
    );
}

/// `tcp_options`: `find_option` over any window: `kind, start (2), width, frame`.
pub fn tcp_options(data: &[u8]) {
    let mut input = Input::new(data);
    let kind = input.u8();
    let start = input.u16() as usize;
    let end = start + input.u8() as usize;
    let frame = input.rest();
    let b = Bytes::new(frame);
    let ours = project::result(wire::tcp::find_option(frame, start, end, kind), |o| {
        o.map(project::opt)
    });
    let theirs = r::find_option(&b, start, end, kind);
    agree(
        || format!("find_option(start {start}, end {end}, kind {kind})"),
        frame,
        &ours,
        &theirs,
        b.went_past_limit(),
        &r::PacketError::Truncated,
    );
}

/// `mptcp`: `parse_mptcp` at any place: `tcp flags, offset (2), length, frame`.
pub fn mptcp(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let offset = input.u16();
    let len = input.u8();
    check_mptcp(input.rest(), OptionRef { offset, len }, flags);
}

fn check_mptcp(frame: &[u8], opt: OptionRef, tcp_flags: u8) {
    let b = Bytes::new(frame);
    let ours = project::mptcp(wire::mptcp::parse_mptcp(frame, opt, tcp_flags));
    let theirs = r::mptcp(&b, project::opt(opt), tcp_flags);
    let what = || {
        format!(
            "parse_mptcp(offset {}, len {}, flags {tcp_flags:#04x})",
            opt.offset, opt.len
        )
    };
    agree(
        what,
        frame,
        &ours,
        &theirs,
        b.went_past_limit(),
        &r::MptcpError::Truncated,
    );
}

/// `quic`: `parse_quic(_with)`, then the server id in the DCID:
/// `short DCID length, mode, server id place, start (2), end (2), frame`.
///
/// Mode bit 0: `grease_ok`; bit 1: the window is the UDP payload, when the
/// frame parses as UDP; bit 2: the window is open-ended (`usize::MAX`).
/// Server id place: offset in the high nibble, length - 1 in the low 2 bits.
pub fn quic(data: &[u8]) {
    let mut input = Input::new(data);
    let cid_len = input.u8();
    let mode = input.u8();
    let sid = input.u8();
    let mut start = input.u16() as usize;
    let mut end = input.u16() as usize;
    let frame = input.rest();
    if mode & 0x02 != 0
        && let Ok(p) = parse_packet(frame)
        && let Some(window) = p.udp_payload()
    {
        (start, end) = window;
    }
    if mode & 0x04 != 0 {
        end = usize::MAX;
    }
    check_quic(frame, start, end, cid_len, mode & 0x01 != 0, sid);
}

fn check_quic(frame: &[u8], start: usize, end: usize, cid_len: u8, grease: bool, sid: u8) {
    let b = Bytes::new(frame);
    let header = quic::parse_quic_with(frame, start, end, cid_len, grease);
    let ours = project::quic(header);
    let theirs = r::quic(&b, start, end, cid_len, grease);
    let what =
        || format!("parse_quic_with(start {start}, end {end}, cid_len {cid_len}, grease {grease})");
    agree(
        what,
        frame,
        &ours,
        &theirs,
        b.went_past_limit(),
        &r::QuicError::Truncated,
    );
    if !grease {
        assert_eq!(
            quic::parse_quic(frame, start, end, cid_len),
            header,
            "parse_quic differs from parse_quic_with(.., false)"
        );
    }
    // The classifier's next step: the server id of a DCID of the listener's length.
    if let Ok(h) = header
        && h.dcid().len == cid_len
    {
        let config = CidConfig {
            cid_len,
            server_id_offset: sid >> 4,
            server_id_len: (sid & 0x03) + 1,
            _reserved: 0,
        };
        check_server_id(frame, h.dcid().offset as usize, config);
    }
}

fn check_server_id(frame: &[u8], cid_at: usize, c: CidConfig) {
    let b = Bytes::new(frame);
    let ours = c.server_id_in(frame, cid_at).ok_or(());
    let theirs = r::server_id(&b, cid_at, c.cid_len, c.server_id_offset, c.server_id_len).ok_or(());
    let what = || format!("server_id_in(cid at {cid_at}, {c:?})");
    agree(what, frame, &ours, &theirs, b.went_past_limit(), &());
}

/// `cid`: `CidConfig`: `CID length, id offset, id length, CID offset (2), bytes`.
pub fn cid(data: &[u8]) {
    let mut input = Input::new(data);
    let cid_len = input.u8();
    let offset = input.u8();
    let len = input.u8();
    let at = input.u16() as usize;
    let bytes = input.rest();
    let config = CidConfig {
        cid_len,
        server_id_offset: offset,
        server_id_len: len,
        _reserved: 0,
    };
    let valid = r::cid_config_ok(cid_len, offset, len);
    assert_eq!(config.validate().is_ok(), valid, "validate {config:?}");
    assert_eq!(
        CidConfig::new(cid_len, offset, len).is_ok(),
        valid,
        "new {config:?}"
    );
    check_server_id(bytes, at, config);
    let b = Bytes::new(bytes);
    assert_eq!(
        config.server_id(bytes),
        r::server_id(&b, 0, cid_len, offset, len),
        "server_id {config:?} of {}",
        hex(bytes)
    );
    if !valid {
        return;
    }
    let max = config.max_server_id();
    assert_eq!(max as u64, (1u64 << (8 * len as u32)) - 1, "max_server_id");
    // write, then read back; nothing else in the CID changes
    let wanted = bytes
        .iter()
        .fold(0u32, |v, byte| v.rotate_left(8) ^ *byte as u32)
        & max;
    let mut cid = bytes.to_vec();
    let written = config.write_server_id(&mut cid, wanted);
    if bytes.len() < cid_len as usize {
        assert_eq!(written, Err(CidConfigError::BufferTooShort), "{config:?}");
        return;
    }
    assert_eq!(written, Ok(()), "{config:?}");
    assert_eq!(config.server_id(&cid), Some(wanted), "{config:?}");
    let id_bytes = offset as usize..offset as usize + len as usize;
    for (i, (before, after)) in bytes.iter().zip(&cid).enumerate() {
        if !id_bytes.contains(&i) {
            assert_eq!(
                before, after,
                "byte {i} changed by write_server_id {config:?}"
            );
        }
    }
    if max < u32::MAX {
        assert_eq!(
            config.write_server_id(&mut cid, max + 1),
            Err(CidConfigError::ServerIdTooLarge)
        );
    }
}

// ---------------------------------------------------------------------------
// migr-quic: the extension's frames
// ---------------------------------------------------------------------------

/// `quic_ext_frame`: `Frame::decode` and `decode_stream` on the input (and on
/// the input behind a control stream's type), no panic, and every decoded
/// frame re-encodes to bytes that decode to it again. Then a frame made up
/// from the input is encoded and must decode back.
pub fn quic_ext_frame(data: &[u8]) {
    match Frame::decode(data) {
        Ok((f, used)) => {
            assert!(
                (1..=data.len()).contains(&used),
                "used {used} of {}",
                data.len()
            );
            let encoded = round_trip(f, data);
            // Shorter only if the input used longer varints than needed.
            assert!(
                encoded.len() < used || encoded == data[..used],
                "{f:?} re-encodes as {} from {}",
                hex(&encoded),
                hex(&data[..used])
            );
        }
        Err(FrameError::UnknownType {
            frame_type,
            frame_len,
        }) => {
            assert!(frame_type > frame::frame_type::POOL_MIGRATION_ADDRESS);
            assert!(
                frame_len <= data.len(),
                "unknown frame of {frame_len} bytes"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    let mut stream = Vec::with_capacity(4 + data.len());
    stream.extend_from_slice(&[0xad, 0x69, 0x67, 0x72]); // STREAM_TYPE
    stream.extend_from_slice(data);
    for input in [data, &stream[..]] {
        match frame::decode_stream(input) {
            Ok(frames) => {
                let encoded = frame::encode_stream(&frames).unwrap_or_else(|e| {
                    panic!("{frames:?} from {} does not encode: {e}", hex(input))
                });
                assert_eq!(
                    frame::decode_stream(&encoded),
                    Ok(frames),
                    "stream {} re-encoded as {}",
                    hex(input),
                    hex(&encoded)
                );
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    made_up_frame(data);
}

/// Encodes `f`, which was decoded from `input`, and decodes it again.
fn round_trip(f: Frame, input: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::new();
    if let Err(e) = f.encode(&mut encoded) {
        panic!("{f:?} decoded from {} does not encode: {e}", hex(input));
    }
    assert_eq!(
        Frame::decode(&encoded),
        Ok((f, encoded.len())),
        "{f:?} encoded as {}",
        hex(&encoded)
    );
    encoded
}

/// A frame built from the input's first bytes: encoding either works, and then
/// decoding gives the frame back, or fails for the reasons `encode` documents.
fn made_up_frame(data: &[u8]) {
    let mut input = Input::new(data);
    let kind = input.u8();
    let mut value = 0u64;
    for _ in 0..8 {
        value = (value << 8) | input.u8() as u64;
    }
    let port = input.u16();
    let mut octets = [0u8; 16];
    for o in &mut octets {
        *o = input.u8();
    }
    let ip = if kind & 0x10 != 0 {
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
    };
    let address = SocketAddr::new(ip, port);
    // Values up to 2^64 - 1: the top bits pick small and too large ones too.
    let value = match kind >> 6 {
        0 => value & 0x3fff,
        1 => value & 0x3fff_ffff_ffff_ffff,
        _ => value,
    };
    let f = match kind & 0x03 {
        0 => Frame::Hello { version: value },
        1 => Frame::Trigger,
        2 => Frame::ServerMigration {
            sequence: value,
            address,
        },
        _ => Frame::PoolMigrationAddress { address },
    };
    let mut encoded = Vec::new();
    match f.encode(&mut encoded) {
        Ok(()) => {
            round_trip(f, data);
        }
        Err(FrameError::ValueTooLarge(v)) => assert!(v > (1 << 62) - 1, "{f:?}"),
        Err(FrameError::UnusableAddress(a)) => {
            assert_eq!(a, address);
            assert!(port == 0 || a.ip().is_unspecified() || a.ip().is_multicast());
        }
        Err(e) => panic!("{f:?} fails to encode: {e:?}"),
    }
}

// ---------------------------------------------------------------------------
// migr-user: the control API
// ---------------------------------------------------------------------------

/// `control_api`: the input is one request line, read the way the agent reads
/// it (`serve_client`: lossy UTF-8, trimmed). `parse_request` must not panic,
/// must give the same answer twice, and:
///
/// - a refusal has a message, and its error response serialises to one JSON
///   line that reads back to the same error and id;
/// - an accepted `service.add` passes `validate_spec`;
/// - an accepted request, encoded again the way a client builds requests
///   ([`encode_request`]), decodes to the same operation and id.
pub fn control_api(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let line = text.trim();
    let (id, parsed) = api::parse_request(line);
    let again = api::parse_request(line);
    assert!(
        again == (id.clone(), parsed.clone()),
        "parse_request is not deterministic on {line:?}:\n  first:  {:?}\n  second: {again:?}",
        (&id, &parsed)
    );
    match parsed {
        Err(e) => {
            assert!(
                !e.message.is_empty(),
                "an error without a message for {line:?}: {e:?}"
            );
            check_error_response(line, id, e);
        }
        Ok(op) => {
            if let Op::ServiceAdd(spec) = &op {
                assert_eq!(
                    api::validate_spec(spec),
                    Ok(()),
                    "service.add accepted an invalid spec from {line:?}"
                );
            }
            let request = encode_request(id.clone(), &op);
            let encoded = serde_json::to_string(&request)
                .unwrap_or_else(|e| panic!("{request:?} (from {line:?}) does not serialise: {e}"));
            assert!(
                !encoded.contains('\n'),
                "a request line with a newline: {encoded:?}"
            );
            let (id2, op2) = api::parse_request(&encoded);
            assert!(
                id2 == id && op2.as_ref() == Ok(&op),
                "{line:?} decodes to {op:?} (id {id:?}), but its re-encoding {encoded:?} decodes to {op2:?} (id {id2:?})"
            );
        }
    }
}

/// A request for `op`, as a client builds it: the operation's name and its
/// arguments serialised with their own `Serialize` (as `migrctl` does).
pub fn encode_request(id: Option<Value>, op: &Op) -> Request {
    fn to<T: serde::Serialize + std::fmt::Debug>(args: &T) -> Value {
        serde_json::to_value(args).unwrap_or_else(|e| panic!("{args:?} does not serialise: {e}"))
    }
    let (name, args) = match op {
        Op::Hello => ("hello", Value::Null),
        Op::ServiceAdd(spec) => ("service.add", to(spec)),
        Op::ServiceRemove(a) => ("service.remove", to(a)),
        Op::ServiceList => ("service.list", Value::Null),
        Op::ServiceShow(a) => ("service.show", to(a)),
        Op::Phase(a) => ("phase", to(a)),
        Op::Criu(a) => ("criu", to(a)),
        Op::Stats => ("stats", Value::Null),
        Op::Health => ("health", Value::Null),
    };
    assert!(api::OPS.contains(&name), "{name} is missing from api::OPS");
    Request {
        v: api::PROTOCOL_VERSION,
        id,
        op: name.to_string(),
        args,
    }
}

/// The agent answers a refused request with `Response::err(id, e)`; the line
/// must read back (as `migrctl` reads it) to the same error and id.
fn check_error_response(line: &str, id: Option<Value>, e: ApiError) {
    let response = Response::err(id.clone(), e.clone());
    let out = serde_json::to_string(&response)
        .unwrap_or_else(|err| panic!("the response to {line:?} does not serialise: {err}"));
    assert!(
        !out.contains('\n'),
        "a response line with a newline: {out:?}"
    );
    let back: Response = serde_json::from_str(&out)
        .unwrap_or_else(|err| panic!("the response {out:?} to {line:?} does not read back: {err}"));
    // `"id": null` is written as such and reads back as no id.
    let id = id.filter(|v| !v.is_null());
    assert!(
        !back.ok && back.error.as_ref() == Some(&e) && back.id == id,
        "the response {out:?} to {line:?} reads back as {back:?}"
    );
}
