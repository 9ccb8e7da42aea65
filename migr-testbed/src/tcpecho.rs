//! The TCP workload of the COAT case: a blocking echo server (one thread per
//! connection, what CRIU checkpoints) and a back-to-back client that writes
//! the same CSV as `migr-echo client`, plus a `summary` line with the
//! kernel's retransmission count for its connection (TCP_INFO).
//! `migr-testbed tcp-server` and `migr-testbed tcp-client` run these.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use migr_quic::service_gaps::{self, AnswerGaps};

/// Serves forever: every connection gets its bytes echoed back. Keeps
/// `ballast_mb` MiB of touched memory (the state a migration moves).
pub fn serve(listen: SocketAddr, ready: Option<&Path>, ballast_mb: usize) -> Result<()> {
    let _ballast = ballast(ballast_mb);
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening {listen}");
    if let Some(p) = ready {
        std::fs::write(p, b"")?;
    }
    let gaps = Arc::new(AnswerGaps::new(service_gaps::THRESHOLD));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let gaps = gaps.clone();
        let _ = stream.set_nodelay(true);
        println!(
            "connection {}",
            stream.peer_addr().map_or("?".into(), |a| a.to_string())
        );
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        // CRIU 4.1.1 does not carry TCP_NODELAY over a
                        // checkpoint: a restored socket would run Nagle
                        // (and stall on the client's delayed ACKs). Set
                        // it again before every write.
                        let _ = stream.set_nodelay(true);
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        if let Some(gap) = gaps.answered() {
                            println!("{}", gap.line());
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// `mb` MiB of touched memory: the state a migration moves.
pub(super) fn ballast(mb: usize) -> Vec<u8> {
    let mut ballast = vec![0u8; mb << 20];
    for (i, byte) in ballast.iter_mut().step_by(4096).enumerate() {
        *byte = (i as u8) | 1;
    }
    std::hint::black_box(ballast)
}

/// Sends up to `count` requests of `size` bytes back to back over one
/// connection, each after the previous echo arrived in full, and stops early
/// once `stop` exists; one CSV row per request.
/// With `watch_send_queue`, also prints `send-queue-busy FROM TO` (wall-clock
/// seconds) for every stretch in which request bytes were unacknowledged:
/// the testbed tells from them whether a freeze hit the upload or only the
/// echo.
pub fn client(
    server: SocketAddr,
    count: usize,
    size: usize,
    csv: &Path,
    stop: Option<&Path>,
    watch_send_queue: bool,
) -> Result<()> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_nodelay(true)?;
    let watch = watch_send_queue
        .then(|| SendQueueWatch::start(&stream))
        .transpose()?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = super::stats::RequestCsv::create(csv, started)?;
    let mut echo = vec![0u8; size];
    let mut result = Ok(());
    let mut sent = 0;
    for index in 0..count {
        if stop.is_some_and(Path::exists) {
            break;
        }
        sent += 1;
        let request: Vec<u8> = (0..size).map(|i| (i + index) as u8).collect();
        let sent = Instant::now();
        if let Err(e) = stream
            .write_all(&request)
            .and_then(|()| stream.read_exact(&mut echo))
        {
            result = Err(anyhow::anyhow!("request {index}: {e}"));
            break;
        }
        let received = Instant::now();
        if echo != request {
            result = Err(anyhow::anyhow!("request {index}: the echo differs"));
            break;
        }
        out.row(index, sent, received, server)?;
    }
    if let Some(watch) = watch {
        match watch.stop() {
            Ok(busy) => {
                for (from, to) in busy {
                    eprintln!("send-queue-busy {from:.6} {to:.6}");
                }
            }
            Err(e) => eprintln!("send-queue-watch-failed {e:#}"),
        }
    }
    let info = tcp_info(&stream);
    eprintln!(
        "summary requests={sent} retransmits={} lost={} rto_us={}",
        info.map_or("?".into(), |i| i.tcpi_total_retrans.to_string()),
        info.map_or("?".into(), |i| i.tcpi_lost.to_string()),
        info.map_or("?".into(), |i| i.tcpi_rto.to_string()),
    );
    result
}

/// Samples the socket's send queue (SIOCOUTQ: bytes not yet acknowledged)
/// every 250 us on a thread of its own, and keeps the stretches in which it
/// was not empty.
struct SendQueueWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<Vec<(f64, f64)>>>,
}

impl SendQueueWatch {
    fn start(stream: &TcpStream) -> Result<Self> {
        let probe = stream
            .try_clone()
            .context("a second handle for the send-queue watch")?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut busy = Vec::new();
            let mut since: Option<f64> = None;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let now = super::now_s();
                match (outq(&probe)? > 0, since) {
                    (true, None) => since = Some(now),
                    (false, Some(from)) => {
                        busy.push((from, now));
                        since = None;
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_micros(250));
            }
            if let Some(from) = since {
                busy.push((from, super::now_s()));
            }
            Ok(busy)
        });
        Ok(Self { stop, thread })
    }

    fn stop(self) -> Result<Vec<(f64, f64)>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.join() {
            Ok(result) => result.context("SIOCOUTQ"),
            Err(_) => bail!("the send-queue watch panicked"),
        }
    }
}

/// Bytes in the socket's send queue not yet acknowledged by the peer.
fn outq(stream: &TcpStream) -> std::io::Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one int.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        Ok(n)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn tcp_info(stream: &TcpStream) -> Option<libc::tcp_info> {
    // SAFETY: getsockopt into a zeroed tcp_info of the right size.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info)
    }
}

/// Parses `--name value` style arguments for the two commands.
pub fn main_server(args: &[String]) -> Result<()> {
    let listen = arg(args, "--listen")?.context("--listen ADDR")?.parse()?;
    let ready = arg(args, "--ready")?.map(std::path::PathBuf::from);
    let ballast = arg(args, "--ballast-mb")?.unwrap_or("0").parse()?;
    serve(listen, ready.as_deref(), ballast)
}

pub fn main_client(args: &[String]) -> Result<()> {
    let server = arg(args, "--server")?.context("--server ADDR")?.parse()?;
    let count = arg(args, "--count")?.unwrap_or("1000").parse()?;
    let size = arg(args, "--size")?.unwrap_or("1024").parse()?;
    let csv = arg(args, "--csv")?.context("--csv PATH")?;
    let stop = arg(args, "--stop-file")?.map(Path::new);
    let watch = args.iter().any(|a| a == "--watch-send-queue");
    client(server, count, size, Path::new(csv), stop, watch)
}

pub(super) fn arg<'a>(args: &'a [String], name: &str) -> Result<Option<&'a str>> {
    match args.iter().position(|a| a == name) {
        Some(i) => match args.get(i + 1) {
            Some(v) => Ok(Some(v)),
            None => bail!("{name} needs a value"),
        },
        None => Ok(None),
    }
}
