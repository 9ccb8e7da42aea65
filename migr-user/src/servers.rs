//! The agent's two listeners: the control socket (JSON lines, docs/
//! control-api.md) and the Prometheus endpoint. Both run on tokio and reach
//! the engine thread through [`EngineHandle`].
//!
//! Neither may starve the engine, whatever its clients do: each listener
//! caps its open connections (a connection over the cap gets an error and is
//! closed), accept errors (out of file descriptors, say) back off instead of
//! spinning, the engine's request queue is bounded (`engine/handle.rs`), and
//! a scrape is served from a rendering at most [`METRICS_MAX_AGE`] old, so
//! scrapers cost the engine one stats pass a second however many there are.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use migr_control::api::{self, ApiError, ErrorCode, Op, Response};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, UnixListener, UnixStream},
    sync::Semaphore,
};

use crate::{engine::EngineHandle, metrics};

/// Open control connections at most.
pub const MAX_CONTROL_CONNECTIONS: usize = 256;
/// Open metrics connections at most.
pub const MAX_METRICS_CONNECTIONS: usize = 32;
/// How old a served metrics rendering may be.
pub const METRICS_MAX_AGE: Duration = Duration::from_secs(1);

/// The wait after the `failures`-th accept error in a row: 10 ms doubling
/// to 1 s. Accept fails over and over when the process is out of file
/// descriptors; retrying at once would spin a core and starve the engine.
pub fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.saturating_sub(1).min(7)).min(Duration::from_secs(1))
}

/// Logs the `failures`-th accept error in a row (at powers of two) and
/// waits [`accept_backoff`].
async fn back_off(what: &'static str, failures: u32, error: std::io::Error) {
    let wait = accept_backoff(failures);
    if failures.is_power_of_two() {
        tracing::warn!(%error, failures, wait_ms = wait.as_millis() as u64,
            "accepting a {what} connection failed; backing off");
    }
    tokio::time::sleep(wait).await;
}

/// Who may change things through the control socket (anyone who can
/// connect may read; the socket's mode decides who can connect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    AnyPeer,
    /// Only peers with uid 0 (`--socket-group-read-only`).
    RootChanges,
}

impl Access {
    /// Why a peer with `uid` (None: unknown) may not run `op`, if it may not.
    pub fn refusal(self, op: &Op, uid: Option<u32>) -> Option<ApiError> {
        if self == Access::AnyPeer || !op.mutates() || uid == Some(0) {
            return None;
        }
        let who = uid.map_or("a peer whose uid is unknown".to_string(), |u| {
            format!("uid {u}")
        });
        Some(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "{who} may only read: the agent runs with --socket-group-read-only, so changes take root"
            ),
        ))
    }
}

/// Serves the control socket for ever.
pub async fn serve_control(listener: UnixListener, engine: EngineHandle, access: Access) {
    let cap = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let mut failures = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                failures += 1;
                back_off("control", failures, e).await;
                continue;
            }
        };
        failures = 0;
        match cap.clone().try_acquire_owned() {
            Ok(permit) => {
                let engine = engine.clone();
                tokio::spawn(async move {
                    serve_client(stream, engine, access).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(refuse_client(stream));
            }
        }
    }
}

/// Tells a connection over the cap why it is closed.
async fn refuse_client(mut stream: UnixStream) {
    let busy = ApiError::new(
        ErrorCode::Busy,
        format!("too many control connections (at most {MAX_CONTROL_CONNECTIONS}); try again"),
    );
    let mut out = serde_json::to_vec(&Response::err(None, busy)).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}

async fn serve_client(stream: UnixStream, engine: EngineHandle, access: Access) {
    let peer = stream.peer_cred().ok();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = api::MAX_REQUEST_BYTES as u64 + 1;
        let n = match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "control connection read failed");
                return;
            }
        };
        if n == 0 {
            return;
        }
        let received = Instant::now();
        let too_long = line.len() > api::MAX_REQUEST_BYTES && !line.ends_with(b"\n");
        let response = if too_long {
            Response::err(
                None,
                ApiError::bad(format!(
                    "request longer than {} bytes",
                    api::MAX_REQUEST_BYTES
                )),
            )
        } else {
            let text = String::from_utf8_lossy(&line);
            let (id, parsed) = api::parse_request(text.trim());
            match parsed {
                Ok(op) => {
                    if op.mutates() {
                        tracing::debug!(peer_pid = ?peer.and_then(|p| p.pid()),
                            peer_uid = ?peer.map(|p| p.uid()), ?op, "control request");
                    }
                    if let Some(refused) = access.refusal(&op, peer.map(|p| p.uid())) {
                        tracing::info!(peer_pid = ?peer.and_then(|p| p.pid()),
                            peer_uid = ?peer.map(|p| p.uid()), op = op.name(), "refused a change from a read-only peer");
                        Response::err(id, refused)
                    } else {
                        match engine.call(op, received).await {
                            Ok(v) => Response::ok(id, v),
                            Err(e) => Response::err(id, e),
                        }
                    }
                }
                Err(e) => {
                    tracing::info!(peer_pid = ?peer.and_then(|p| p.pid()), error = %e,
                        "refused a malformed control request");
                    Response::err(id, e)
                }
            }
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_else(|e| {
            serde_json::to_vec(&Response::err(
                None,
                ApiError::new(ErrorCode::Internal, e.to_string()),
            ))
            .unwrap_or_default()
        });
        out.push(b'\n');
        if write.write_all(&out).await.is_err() || too_long {
            return;
        }
    }
}

/// The last metrics rendering and when it was made.
#[derive(Default)]
pub struct MetricsCache {
    last: Option<(Instant, String)>,
}

impl MetricsCache {
    /// The rendering to serve at `now`, if the last one is recent enough.
    pub fn fresh(&self, now: Instant) -> Option<&str> {
        match &self.last {
            Some((at, body)) if now.saturating_duration_since(*at) < METRICS_MAX_AGE => Some(body),
            _ => None,
        }
    }

    pub fn store(&mut self, at: Instant, body: String) {
        self.last = Some((at, body));
    }
}

/// Serves /metrics for ever.
pub async fn serve_metrics(listener: TcpListener, engine: EngineHandle) {
    let cap = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    // One rendering at a time: concurrent scrapes wait for it and share it.
    let cache = Arc::new(tokio::sync::Mutex::new(MetricsCache::default()));
    let mut failures = 0;
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                failures += 1;
                back_off("metrics", failures, e).await;
                continue;
            }
        };
        failures = 0;
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            // Over the cap: close at once (the scraper counts a failed scrape).
            drop(stream);
            continue;
        };
        let (engine, cache) = (engine.clone(), cache.clone());
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let request_line = String::from_utf8_lossy(&head);
            let first = request_line.lines().next().unwrap_or("");
            let (status, body) = match route(first) {
                Route::Metrics => {
                    let mut cache = cache.lock().await;
                    match cache.fresh(Instant::now()) {
                        Some(body) => ("200 OK", body.to_string()),
                        None => match render(&engine).await {
                            Ok(body) => {
                                cache.store(Instant::now(), body.clone());
                                ("200 OK", body)
                            }
                            Err(e) => ("500 Internal Server Error", format!("{e}\n")),
                        },
                    }
                }
                Route::Healthz => health_answer(&engine).await.map_or_else(
                    |e| (UNAVAILABLE, format!("not alive: {e}\n")),
                    |_| ("200 OK", "ok\n".to_string()),
                ),
                Route::Readyz => readiness(health_answer(&engine).await),
                Route::Unknown => (
                    "404 Not Found",
                    "try /metrics, /healthz or /readyz\n".to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            drop(permit);
        });
    }
}

/// What a metrics-listener request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    /// Alive: the engine answers.
    Healthz,
    /// Ready: every check of `engine/health.rs` passes.
    Readyz,
    Unknown,
}

/// Reads the request line (`GET /path HTTP/1.x`; a query is ignored).
pub fn route(request_line: &str) -> Route {
    let mut words = request_line.split_whitespace();
    let (Some("GET"), Some(target)) = (words.next(), words.next()) else {
        return Route::Unknown;
    };
    match target.split('?').next().unwrap_or("") {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => Route::Unknown,
    }
}

const UNAVAILABLE: &str = "503 Service Unavailable";

/// How long a health probe waits for the engine before calling it dead.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

async fn health_answer(engine: &EngineHandle) -> Result<api::Health, String> {
    let call = engine.call(Op::Health, Instant::now());
    let value = tokio::time::timeout(HEALTH_TIMEOUT, call)
        .await
        .map_err(|_| format!("the engine did not answer within {HEALTH_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// `/readyz`' status and body: a line per check, `[+]` passed, `[-]` failed.
pub fn readiness(health: Result<api::Health, String>) -> (&'static str, String) {
    let health = match health {
        Ok(h) => h,
        Err(e) => return (UNAVAILABLE, format!("[-]engine failed: {e}\n")),
    };
    let mut body = String::new();
    for c in &health.checks {
        let mark = if c.ok { "[+]" } else { "[-]" };
        let verdict = if c.ok { "ok" } else { "failed" };
        body.push_str(&format!("{mark}{} {verdict}: {}\n", c.name, c.detail));
    }
    match health.ready {
        true => ("200 OK", body + "ready\n"),
        false => (UNAVAILABLE, body + "not ready\n"),
    }
}

async fn render(engine: &EngineHandle) -> Result<String, String> {
    let value = engine
        .call(Op::Stats, Instant::now())
        .await
        .map_err(|e| e.to_string())?;
    let stats = serde_json::from_value::<api::Stats>(value).map_err(|e| e.to_string())?;
    Ok(metrics::render(&stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_socket_group_may_read_and_only_root_may_change() {
        let (_, change) =
            api::parse_request(r#"{"v":1,"op":"service.remove","args":{"service":"x"}}"#);
        let change = change.expect("a valid request");
        let read = Op::ServiceList;
        assert!(Access::AnyPeer.refusal(&change, Some(1000)).is_none());
        let ro = Access::RootChanges;
        assert!(ro.refusal(&read, Some(1000)).is_none());
        assert!(ro.refusal(&change, Some(0)).is_none());
        let e = ro.refusal(&change, Some(1000)).expect("refused");
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.message.contains("uid 1000"), "{}", e.message);
        assert!(
            ro.refusal(&change, None).is_some(),
            "an unknown peer is not root"
        );
    }

    #[test]
    fn accept_errors_back_off_from_10_ms_to_a_second() {
        let waits: Vec<u64> = (1..=9)
            .map(|n| accept_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(accept_backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn requests_are_routed_by_path() {
        assert_eq!(route("GET /metrics HTTP/1.1"), Route::Metrics);
        assert_eq!(route("GET /healthz HTTP/1.0"), Route::Healthz);
        assert_eq!(route("GET /readyz?verbose HTTP/1.1"), Route::Readyz);
        assert_eq!(route("GET /metrics"), Route::Metrics);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::Unknown);
        assert_eq!(route("GET /readyzz HTTP/1.1"), Route::Unknown);
        assert_eq!(route(""), Route::Unknown);
    }

    #[test]
    fn readiness_lists_every_check_and_fails_on_any() {
        let check = |name: &str, ok| api::HealthCheck {
            name: name.into(),
            ok,
            detail: "d".into(),
        };
        let (status, body) = readiness(Ok(api::Health::from_checks(vec![check("attached", true)])));
        assert_eq!(status, "200 OK");
        assert_eq!(body, "[+]attached ok: d\nready\n");
        let (status, body) = readiness(Ok(api::Health::from_checks(vec![
            check("attached", true),
            check("ring_drained", false),
        ])));
        assert_eq!(status, UNAVAILABLE);
        assert!(body.contains("[-]ring_drained failed: d\n"), "{body}");
        assert!(body.ends_with("not ready\n"));
        assert_eq!(readiness(Err("gone".into())).0, UNAVAILABLE);
    }

    #[test]
    fn a_metrics_rendering_is_served_for_a_second() {
        let t0 = Instant::now();
        let mut cache = MetricsCache::default();
        assert_eq!(cache.fresh(t0), None);
        cache.store(t0, "body".into());
        assert_eq!(cache.fresh(t0 + Duration::from_millis(999)), Some("body"));
        assert_eq!(cache.fresh(t0 + METRICS_MAX_AGE), None);
    }
}
