//! The plain UDP workload: what an unmodified request/response client over
//! UDP does. The server echoes each datagram; the client sends one request,
//! waits up to `--timeout-ms` for its echo and never retries: a request
//! whose datagram (or echo) is lost is a lost request, and the client goes
//! on with the next. Same CSV as the other clients (answered requests only;
//! a row's send time is when the client began to wait, i.e. the first
//! request it sent since its last answer, so that a given-up request counts
//! in the wait) and a `summary` line. `migr-testbed udp-server` and `udp-client` run
//! these; CRIU checkpoints the server's bound socket as it is.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use migr_quic::service_gaps::{self, AnswerGaps};

use super::{
    stats::RequestCsv,
    tcpecho::{arg, ballast},
};

/// Echoes every datagram to its sender, forever.
pub fn serve(listen: SocketAddr, ballast_mb: usize) -> Result<()> {
    let _ballast = ballast(ballast_mb);
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening {listen}");
    let mut buf = vec![0u8; 64 * 1024];
    let gaps = AnswerGaps::new(service_gaps::THRESHOLD);
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        // A full send buffer loses the echo, as a real service would.
        if socket.send_to(&buf[..n], from).is_ok()
            && let Some(gap) = gaps.answered()
        {
            println!("{}", gap.line());
        }
    }
}

/// Sends up to `count` requests of `size` bytes, each after the previous
/// echo arrived or `timeout` passed, and stops early once `stop` exists.
/// Each request starts with its index, so a late echo of an earlier one is
/// told apart (counted `late`, not taken as an answer).
pub fn client(
    server: SocketAddr,
    count: usize,
    size: usize,
    timeout: Duration,
    csv: &Path,
    stop: Option<&Path>,
) -> Result<()> {
    let size = size.max(8);
    let started = Instant::now();
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(server)?;
    let mut out = RequestCsv::create(csv, started)?;
    let (mut sent, mut timed_out, mut late) = (0usize, 0usize, 0usize);
    let mut echo = vec![0u8; 64 * 1024];
    let mut waiting_since = None;
    for index in 0..count {
        if stop.is_some_and(Path::exists) {
            break;
        }
        let mut request: Vec<u8> = (0..size).map(|i| (i + index) as u8).collect();
        request[..8].copy_from_slice(&(index as u64).to_be_bytes());
        let sent_at = Instant::now();
        socket.send(&request)?;
        sent += 1;
        let deadline = sent_at + timeout;
        let answered = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut echo) {
                Ok(n) if echo[..n] == request[..] => break Some(Instant::now()),
                Ok(_) => late += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None;
                }
                // ICMP port unreachable while nothing listens: the request
                // is lost all the same; wait out its timeout.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e).context(format!("request {index}")),
            }
        };
        let Some(received) = answered else {
            timed_out += 1;
            waiting_since.get_or_insert(sent_at);
            continue;
        };
        let since = waiting_since.take().unwrap_or(sent_at);
        out.row(index, since, received, server)?;
    }
    eprintln!("summary requests={sent} timed_out={timed_out} late={late}");
    Ok(())
}

pub fn main_server(args: &[String]) -> Result<()> {
    let listen = arg(args, "--listen")?.context("--listen ADDR")?.parse()?;
    let ballast = arg(args, "--ballast-mb")?.unwrap_or("0").parse()?;
    serve(listen, ballast)
}

pub fn main_client(args: &[String]) -> Result<()> {
    let server = arg(args, "--server")?.context("--server ADDR")?.parse()?;
    let count = arg(args, "--count")?.unwrap_or("1000").parse()?;
    let size = arg(args, "--size")?.unwrap_or("1024").parse()?;
    let timeout_ms: u64 = arg(args, "--timeout-ms")?.unwrap_or("1000").parse()?;
    let csv = arg(args, "--csv")?.context("--csv PATH")?;
    let stop = arg(args, "--stop-file")?.map(Path::new);
    client(
        server,
        count,
        size,
        Duration::from_millis(timeout_ms),
        Path::new(csv),
        stop,
    )
}
