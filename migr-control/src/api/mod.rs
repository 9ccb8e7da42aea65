//! The control protocol between `migrctl` (or any client) and `migr-agent`:
//! one JSON object per line over a Unix stream socket. Documented in
//! `docs/control-api.md`; this module is its single definition.
//!
//! Parsing never panics: every malformed, unknown or out-of-range input
//! becomes an [`ApiError`] with a message that names the problem.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::phase::{PhaseCommand, Role};

mod migrations;
mod spec;
mod status;

pub use migrations::*;
pub use spec::*;
pub use status::*;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line the agent reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Machine-readable error classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not valid JSON, misses a field, has an unknown field or a bad value.
    BadRequest,
    /// `v` is not a version this agent speaks.
    UnsupportedVersion,
    /// `op` is not an operation this agent knows.
    UnknownOp,
    /// No such service.
    NotFound,
    /// The service id, name or an address is taken.
    Conflict,
    /// The phase command is not allowed in the service's current state.
    InvalidTransition,
    /// The datapath refused an update (the message has the kernel's error).
    Datapath,
    /// The peer may not make this request (`--socket-group-read-only`).
    Forbidden,
    /// The agent is at one of its limits (connections, queued requests):
    /// nothing was done; try again.
    Busy,
    /// Anything else.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = serde_json::to_value(self.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        write!(f, "{} ({code})", self.message)
    }
}

impl std::error::Error for ApiError {}

/// A request line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Echoed back in the response; any JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub op: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub args: Value,
}

/// A response line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn ok(id: Option<Value>, result: Value) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(id: Option<Value>, error: ApiError) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

/// A service, by id (a number, or a string of digits) or by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServiceRef {
    Id(u32),
    Name(String),
}

impl ServiceRef {
    /// Parses a command-line argument: digits are an id, anything else a name.
    pub fn parse(s: &str) -> Self {
        match s.parse::<u32>() {
            Ok(id) => Self::Id(id),
            Err(_) => Self::Name(s.to_string()),
        }
    }
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceArgs {
    pub service: ServiceRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveArgs {
    pub service: ServiceRef,
    /// Remove even though parked frames are still stored (they are discarded).
    #[serde(default)]
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseArgs {
    pub service: ServiceRef,
    pub phase: PhaseCommand,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriuArgs {
    /// The service; without it, `container_ids` find it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// The ids the dumped or restored container's cgroups name
    /// (`container::ids_in_cgroups`); a container no service is registered
    /// for is left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_ids: Vec<String>,
    /// `CRTOOLS_SCRIPT_ACTION`.
    pub action: String,
    /// The hook gives up (and CRIU goes on) after this many milliseconds; a
    /// request the agent reaches later is refused unapplied, so that no
    /// phase lands after CRIU has moved past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// `CRTOOLS_INIT_PID`: the dumped or restored tree's init. A local
    /// replay watches the UDP sockets of its network namespace and waits
    /// while they are full (`migr_user::socket_room`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// A parsed, validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Hello,
    ServiceAdd(ServiceSpec),
    ServiceRemove(RemoveArgs),
    ServiceList,
    ServiceShow(ServiceArgs),
    Phase(PhaseArgs),
    Criu(CriuArgs),
    Stats,
    Health,
}

/// Every operation, for error messages and docs.
pub const OPS: [&str; 9] = [
    "hello",
    "service.add",
    "service.remove",
    "service.list",
    "service.show",
    "phase",
    "criu",
    "stats",
    "health",
];

impl Op {
    /// The operation's name on the wire (one of [`OPS`]).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::ServiceAdd(_) => "service.add",
            Self::ServiceRemove(_) => "service.remove",
            Self::ServiceList => "service.list",
            Self::ServiceShow(_) => "service.show",
            Self::Phase(_) => "phase",
            Self::Criu(_) => "criu",
            Self::Stats => "stats",
            Self::Health => "health",
        }
    }

    /// Does this operation change state (and so must be logged)?
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Self::ServiceAdd(_) | Self::ServiceRemove(_) | Self::Phase(_) | Self::Criu(_)
        )
    }
}

fn args<T: serde::de::DeserializeOwned + Default>(op: &str, v: Value) -> Result<T, ApiError> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("arguments of {op}: {e}")))
}

fn required<T: serde::de::DeserializeOwned>(op: &str, v: Value) -> Result<T, ApiError> {
    if v.is_null() {
        return Err(ApiError::bad(format!("{op} needs arguments (\"args\")")));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("arguments of {op}: {e}")))
}

/// Parses one request line. Returns the request id (when one could be read)
/// alongside the result, so that even an error response can echo it.
pub fn parse_request(line: &str) -> (Option<Value>, Result<Op, ApiError>) {
    let raw: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return (None, Err(ApiError::bad(format!("not valid JSON: {e}")))),
    };
    let id = raw.get("id").cloned();
    if !raw.is_object() {
        return (id, Err(ApiError::bad("a request must be a JSON object")));
    }
    if let Some(v) = raw.get("v")
        && let Some(n) = v.as_u64()
        && n != u64::from(PROTOCOL_VERSION)
    {
        return (
            id,
            Err(ApiError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {n} is not supported; this agent speaks version {PROTOCOL_VERSION}"
                ),
            )),
        );
    }
    let req: Request = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return (id, Err(ApiError::bad(format!("request: {e}")))),
    };
    (id, parse_op(&req.op, req.args))
}

fn parse_op(op: &str, a: Value) -> Result<Op, ApiError> {
    let parsed = match op {
        "hello" => args::<NoArgs>(op, a).map(|_| Op::Hello)?,
        "service.add" => Op::ServiceAdd(required(op, a)?),
        "service.remove" => Op::ServiceRemove(required(op, a)?),
        "service.list" => args::<NoArgs>(op, a).map(|_| Op::ServiceList)?,
        "service.show" => Op::ServiceShow(required(op, a)?),
        "phase" => Op::Phase(required(op, a)?),
        "criu" => Op::Criu(required(op, a)?),
        "stats" => args::<NoArgs>(op, a).map(|_| Op::Stats)?,
        "health" => args::<NoArgs>(op, a).map(|_| Op::Health)?,
        other => {
            return Err(ApiError::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown operation {other:?}: expected one of {}",
                    OPS.join(", ")
                ),
            ));
        }
    };
    if let Op::ServiceAdd(spec) = &parsed {
        validate_spec(spec)?;
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(line: &str) -> Result<Op, ApiError> {
        parse_request(line).1
    }

    fn spec_json(extra: &str) -> String {
        format!(
            r#"{{"v":1,"op":"service.add","args":{{"id":3,"name":"echo","rules":[{{"proto":"udp","addr":"10.0.0.2:7000"}}]{extra}}}}}"#
        )
    }

    #[test]
    fn a_full_service_parses() {
        let line = r#"{"v":1,"id":"r1","op":"service.add","args":{"id":7,"name":"web-1",
            "rules":[{"proto":"udp","addr":"10.0.0.2:7000"},{"proto":"tcp","addr":"10.0.0.2:443"},
                     {"proto":"quic","addr":"10.0.0.2:4433","server_ids":[258],"cid":{"len":8,"offset":1,"id_len":2},"grease":true},
                     {"proto":"mptcp","addr":"10.0.0.2:8080"}],
            "forward":{"mode":"address-changing","addr":"10.0.1.2:7000","iface":"eth1","next_hop_mac":"02:00:00:00:00:01"},
            "park_limit":{"frames":10,"bytes":10000},"drain_ms":500}}"#;
        let (id, parsed) = parse_request(line);
        assert_eq!(id, Some(Value::String("r1".into())));
        let Op::ServiceAdd(spec) = parsed.unwrap() else {
            panic!("not an add")
        };
        assert_eq!(spec.rules.len(), 4);
        assert_eq!(spec.rules[2].server_ids, [258]);
        assert_eq!(spec.forward.unwrap().iface, "eth1");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        for (line, needle) in [
            ("", "not valid JSON"),
            ("{", "not valid JSON"),
            ("[1,2]", "must be a JSON object"),
            (r#"{"v":1}"#, "missing field `op`"),
            (r#"{"op":"stats"}"#, "missing field `v`"),
            (r#"{"v":"one","op":"stats"}"#, "invalid type"),
            (r#"{"v":1,"op":"stats","extra":1}"#, "unknown field `extra`"),
            (
                r#"{"v":1,"op":"stats","args":{"x":1}}"#,
                "unknown field `x`",
            ),
            (r#"{"v":1,"op":"phase"}"#, "needs arguments"),
            (
                r#"{"v":1,"op":"phase","args":{"service":"a","phase":"melt"}}"#,
                "unknown variant `melt`",
            ),
            (
                r#"{"v":1,"op":"phase","args":{"service":"a","phase":"freeze","role":"middle"}}"#,
                "unknown variant `middle`",
            ),
            (
                r#"{"v":1,"op":"phase","args":{"service":-1,"phase":"freeze"}}"#,
                "did not match any variant",
            ),
            (
                r#"{"v":1,"op":"phase","args":{"service":"a","phase":"freeze","drain_ms":-5}}"#,
                "invalid value",
            ),
        ] {
            let e = op(line).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{line}: {e}");
            assert!(e.message.contains(needle), "{line}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn versions_and_ops_are_checked() {
        let e = op(r#"{"v":2,"op":"stats"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        let e = op(r#"{"v":1,"op":"explode"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownOp);
        assert!(e.message.contains("service.add"));
        assert_eq!(op(r#"{"v":1,"op":"stats"}"#).unwrap(), Op::Stats);
        assert_eq!(op(r#"{"v":1,"op":"health"}"#).unwrap(), Op::Health);
        assert_eq!(
            op(r#"{"v":1,"op":"service.show","args":{"service":"12"}}"#).unwrap(),
            Op::ServiceShow(ServiceArgs {
                service: ServiceRef::Name("12".into())
            })
        );
    }

    #[test]
    fn bad_values_in_a_spec_are_refused() {
        for (extra, needle) in [
            (r#","forward":{"iface":"eth0"}"#, "forward.addr is required"),
            (
                r#","forward":{"iface":"eth0","addr":"[fd00::1]:1"}"#,
                "different IP families",
            ),
            (
                r#","forward":{"iface":"eth0","addr":"10.0.0.9:1","next_hop_mac":"zz"}"#,
                "not a MAC",
            ),
            (
                r#","forward":{"iface":"eth0","mode":"same-ip"}"#,
                "same-ip mode needs",
            ),
            (
                r#","forward":{"iface":"eth0","mode":"teleport"}"#,
                "unknown variant",
            ),
            (r#","park_limit":{"frames":0,"bytes":1}"#, "at least 1"),
            (r#","colour":"red""#, "unknown field `colour`"),
        ] {
            let e = op(&spec_json(extra)).unwrap_err();
            assert!(
                e.message.contains(needle),
                "{extra}: {e:?} lacks {needle:?}"
            );
        }
        let bad_rules = [
            (r#"{"proto":"udp","addr":"10.0.0.2:0"}"#, "port 0"),
            (r#"{"proto":"udp","addr":"0.0.0.0:53"}"#, "unspecified"),
            (
                r#"{"proto":"quic","addr":"10.0.0.2:443"}"#,
                "needs its CID config",
            ),
            (
                r#"{"proto":"quic","addr":"10.0.0.2:443","cid":{"len":4,"offset":3,"id_len":2}}"#,
                "exceeds the CID length",
            ),
            (
                r#"{"proto":"quic","addr":"10.0.0.2:443","server_ids":[70000],"cid":{"len":8,"offset":1,"id_len":2}}"#,
                "does not fit",
            ),
            (
                r#"{"proto":"udp","addr":"10.0.0.2:53","server_ids":[1]}"#,
                "only apply to QUIC",
            ),
            (
                r#"{"proto":"sctp","addr":"10.0.0.2:53"}"#,
                "unknown variant",
            ),
            (
                r#"{"proto":"udp","addr":"10.0.0.2"}"#,
                "invalid socket address",
            ),
        ];
        for (rule, needle) in bad_rules {
            let line = format!(
                r#"{{"v":1,"op":"service.add","args":{{"id":3,"name":"x","rules":[{rule}]}}}}"#
            );
            let e = op(&line).unwrap_err();
            assert!(e.message.contains(needle), "{rule}: {e:?} lacks {needle:?}");
        }
        for (id, name, needle) in [
            (0, "a", "out of range"),
            (4096, "a", "out of range"),
            (1, "", "1..=64"),
            (1, "a b", "may only contain"),
            (1, "123", "all digits"),
        ] {
            let line =
                format!(r#"{{"v":1,"op":"service.add","args":{{"id":{id},"name":"{name}"}}}}"#);
            let e = op(&line).unwrap_err();
            assert!(e.message.contains(needle), "{line}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics() {
        // A cheap deterministic fuzz: mutate a valid request byte by byte.
        let base = spec_json(r#","forward":{"iface":"eth0","addr":"10.0.0.9:1"}"#);
        let bytes = base.as_bytes();
        let mut seed = 0x1234_5678u32;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let mut m = bytes.to_vec();
            let i = seed as usize % m.len();
            m[i] = (seed >> 8) as u8;
            if seed.is_multiple_of(3) {
                m.truncate(seed as usize % m.len());
            }
            let line = String::from_utf8_lossy(&m);
            let _ = parse_request(&line);
        }
    }

    #[test]
    fn responses_round_trip() {
        let r = Response::err(Some(Value::from(4)), ApiError::bad("nope"));
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"v":1,"id":4,"ok":false,"error":{"code":"bad_request","message":"nope"}}"#
        );
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back.error.unwrap().message, "nope");
    }

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(
            parse_mac("02:0a:ff:00:10:01").unwrap(),
            [2, 10, 255, 0, 16, 1]
        );
        assert_eq!(format_mac([2, 10, 255, 0, 16, 1]), "02:0a:ff:00:10:01");
        for bad in ["", "02:0a", "02:0a:ff:00:10:011", "g2:0a:ff:00:10:01"] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
