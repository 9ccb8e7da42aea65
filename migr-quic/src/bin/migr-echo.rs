//! Seed 000's workload: a client sends 1 kB requests that the server echoes,
//! sporadically or back to back, while the server migrates.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use migr_common::cid::CidConfig;
use migr_quic::driver::{Client, Server, ServerConnection};
use migr_quic::service_gaps::{self, AnswerGaps};
use migr_quic::tls::{self, SelfSigned};
use migr_quic::{
    ClientEvent, ClientMigrationConfig, ProbeMode, RoutableCidGenerator, ServerEndpointConfig,
    ServerEvent, Strategy,
};
use quinn_proto::TransportConfig;
use rustls::pki_types::CertificateDer;

const MAX_REQUEST: usize = 1 << 20;

#[derive(Parser)]
#[command(
    name = "migr-echo",
    about = "Echo workload over QUIC with server-side migration (seed 000)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const SERVER_HELP: &str = "Echo every request back, and migrate when told to.

The server prints one event line per happening on stdout, for an orchestrator to follow:
  listening ADDR | connection ID | negotiated ID | trigger ID | milestone N | announce ADDR |
  migration-acknowledged ADDR acked=K | listen ADDR | unlisten ADDR | protocol-error ID ERROR |
  answer-gap FROM TO (answers paused over 20 ms; wall-clock seconds)

Driving a migration (the service must not move before `migration-acknowledged`, seed 000 step 4):
  * --after-requests N --migrate-to ADDR: after N served requests, listen at ADDR too,
    announce it to every client, print `migration-acknowledged` once all of them acknowledged.
    Without --migrate-to, --after-requests only prints `milestone N` (e.g. to move a PoA server).
  * --control-file PATH: on SIGUSR1 run each line of PATH: `announce ADDR`, `listen ADDR`,
    `unlisten ADDR`. E.g. `echo 'announce 10.77.2.1:4433' > ctl; kill -USR1 $PID`.
  * --on-trigger-migrate-to ADDR: announce ADDR when a client sends TRIGGER.
  * --leave-old-after-ack: stop listening at the other addresses once acknowledged.";

const CLIENT_HELP: &str = "Send 1 kB requests (sporadic or back to back) and write one CSV row
per request: index,send_time_ms,response_time_ms,service_time_ms,server_address (times in ms
since the client started; server_address is the server's real address when the response
arrived). Extension events go to stderr as `event ...` lines; at the end, one line
`packets-lost UNIX_SECONDS [PN,..]` per loss quinn-proto declared, and one line
`summary requests=N lost_packets=N pto_count=N loss_detected=N congestion_events=N
server_address=ADDR negotiated=BOOL`.";

#[derive(Subcommand)]
enum Command {
    #[command(
        about = "Echo every request back, and migrate when told to",
        long_about = SERVER_HELP
    )]
    Server(ServerArgs),
    #[command(
        about = "Send requests and write one CSV row per request",
        long_about = CLIENT_HELP
    )]
    Client(ClientArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// Address to listen at (a specific IP, or 0.0.0.0:PORT for a container
    /// that moves to another IP). Repeat to listen at several.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Server id embedded in every connection ID.
    #[arg(long, default_value_t = 1)]
    server_id: u32,
    /// Connection ID length in bytes.
    #[arg(long, default_value_t = 8)]
    cid_len: u8,
    /// Byte offset of the server id inside the connection ID.
    #[arg(long, default_value_t = 1)]
    cid_offset: u8,
    /// Server id length in bytes (1..=4).
    #[arg(long, default_value_t = 2)]
    server_id_len: u8,
    /// Pool of addresses the server may move to (PoA), comma separated.
    #[arg(long, value_delimiter = ',')]
    pool: Vec<SocketAddr>,
    /// Where to write the server's self-signed certificate (DER) for clients.
    #[arg(long)]
    cert_out: PathBuf,
    /// Name the certificate is issued for.
    #[arg(long, default_value = "migr-echo")]
    name: String,
    /// After this many served requests print `milestone N` (and migrate, with --migrate-to).
    #[arg(long)]
    after_requests: Option<usize>,
    /// Address to announce at the milestone.
    #[arg(long, requires = "after_requests")]
    migrate_to: Option<SocketAddr>,
    /// Announce this address when a client sends TRIGGER.
    #[arg(long)]
    on_trigger_migrate_to: Option<SocketAddr>,
    /// Stop listening at every other address once an announcement is acknowledged.
    #[arg(long)]
    leave_old_after_ack: bool,
    /// File with commands, read on SIGUSR1.
    #[arg(long)]
    control_file: Option<PathBuf>,
    /// Touch this many MiB of memory and keep it: the state a migration
    /// moves (seed 000's small and large containers are 28 and 280 MB).
    #[arg(long, default_value_t = 0)]
    ballast_mb: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// One request every --period-ms.
    Sporadic,
    /// Each request right after the previous response.
    BackToBack,
}

#[derive(Args)]
struct ClientArgs {
    /// Server address.
    #[arg(long)]
    server: SocketAddr,
    /// Local address to bind (port 0: any).
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// The server's certificate (DER), as written by `server --cert-out`.
    #[arg(long)]
    ca: PathBuf,
    /// Name the certificate is issued for.
    #[arg(long, default_value = "migr-echo")]
    name: String,
    /// Migration strategy: p-explicit, r-explicit or poa.
    #[arg(long, default_value = "p-explicit")]
    strategy: Strategy,
    /// While the server does not answer: fast (a PING every 2 x SRTT,
    /// 5..500 ms) or rfc9002 (only QUIC's own probe timeouts, which double:
    /// how a client without migr recovers).
    #[arg(long, default_value = "fast")]
    probing: ProbeMode,
    /// Without the extension: a plain quinn-proto client (no HELLO, no
    /// address changes, QUIC's own loss recovery only), as an unmodified
    /// QUIC client behaves. For same-IP moves and baselines.
    #[arg(long, conflicts_with_all = ["strategy", "probing", "trigger_after"])]
    plain: bool,
    #[arg(long, value_enum, default_value = "sporadic")]
    mode: Mode,
    /// Period of sporadic requests.
    #[arg(long, default_value_t = 10_000)]
    period_ms: u64,
    /// Number of requests.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Request payload size.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// CSV output (default: stdout).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Send a TRIGGER after this many requests.
    #[arg(long)]
    trigger_after: Option<usize>,
    /// Do not count quinn-proto's probe timeouts. Counting them means
    /// formatting quinn-proto's trace log, which costs some latency.
    #[arg(long)]
    no_pto_count: bool,
    /// Give up on a request after this long.
    #[arg(long, default_value_t = 20_000)]
    request_timeout_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Server(args) => run_server(args).await,
        Command::Client(args) => run_client(args).await,
    }
}

// ---------------------------------------------------------------- server

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    // One written byte per page makes every page resident (and dumped).
    let mut ballast = vec![0u8; args.ballast_mb << 20];
    for (i, byte) in ballast.iter_mut().step_by(4096).enumerate() {
        *byte = (i as u8) | 1;
    }
    let _ballast = std::hint::black_box(ballast);
    let cid = CidConfig::new(args.cid_len, args.cid_offset, args.server_id_len)
        .map_err(|e| anyhow::anyhow!("CID config: {e}"))?;
    let generator = RoutableCidGenerator::new(cid, args.server_id)
        .map_err(|e| anyhow::anyhow!("server id: {e}"))?;
    let cert = SelfSigned::generate(&[&args.name])?;
    std::fs::write(&args.cert_out, cert.cert_der.as_ref())
        .with_context(|| format!("writing {}", args.cert_out.display()))?;
    let config = ServerEndpointConfig {
        server_config: Arc::new(cert.server_config(TransportConfig::default())?),
        cid_generator: generator,
        pool: args.pool.clone(),
    };
    let server = Arc::new(Server::bind(config, args.listen[0]).await?);
    for address in &args.listen[1..] {
        server.add_address(*address).await?;
    }
    for address in server.addresses() {
        say(format!("listening {address}"));
    }

    let served = Arc::new(AtomicUsize::new(0));
    let milestone = Arc::new(tokio::sync::Notify::new());
    spawn_acceptor(
        server.clone(),
        served.clone(),
        milestone.clone(),
        args.after_requests,
    );

    if let Some(n) = args.after_requests {
        let server = server.clone();
        let migrate_to = args.migrate_to;
        let leave = args.leave_old_after_ack;
        tokio::spawn(async move {
            milestone.notified().await;
            say(format!("milestone {n}"));
            if let Some(address) = migrate_to
                && let Err(e) = migrate(&server, address, leave).await
            {
                eprintln!("migration to {address} failed: {e:#}");
            }
        });
    }

    let events_server = server.clone();
    let on_trigger = args.on_trigger_migrate_to;
    let leave = args.leave_old_after_ack;
    tokio::spawn(async move {
        while let Some((ch, event)) = events_server.next_event().await {
            match event {
                ServerEvent::Negotiated => say(format!("negotiated {}", ch.0)),
                ServerEvent::TriggerReceived => {
                    say(format!("trigger {}", ch.0));
                    if let Some(address) = on_trigger {
                        let server = events_server.clone();
                        tokio::spawn(async move {
                            if let Err(e) = migrate(&server, address, leave).await {
                                eprintln!("migration to {address} failed: {e:#}");
                            }
                        });
                    }
                }
                ServerEvent::ProtocolError(e) => say(format!("protocol-error {} {e}", ch.0)),
                _ => {}
            }
        }
    });

    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                if let Some(path) = &args.control_file
                    && let Err(e) = run_control_file(&server, path, args.leave_old_after_ack).await
                {
                    eprintln!("control file: {e:#}");
                }
            }
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn spawn_acceptor(
    server: Arc<Server>,
    served: Arc<AtomicUsize>,
    milestone: Arc<tokio::sync::Notify>,
    after_requests: Option<usize>,
) {
    // Pauses between answers: the service's own downtime.
    let gaps = Arc::new(AnswerGaps::new(service_gaps::THRESHOLD));
    tokio::spawn(async move {
        while let Some(conn) = server.accept().await {
            say(format!("connection {}", conn.handle().0));
            let served = served.clone();
            let milestone = milestone.clone();
            let gaps = gaps.clone();
            tokio::spawn(async move {
                let _ = echo_connection(conn, served, milestone, after_requests, gaps).await;
            });
        }
    });
}

async fn echo_connection(
    conn: ServerConnection,
    served: Arc<AtomicUsize>,
    milestone: Arc<tokio::sync::Notify>,
    after_requests: Option<usize>,
    gaps: Arc<AnswerGaps>,
) -> anyhow::Result<()> {
    loop {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let served = served.clone();
        let milestone = milestone.clone();
        let gaps = gaps.clone();
        tokio::spawn(async move {
            let request = recv.read_to_end(MAX_REQUEST).await?;
            send.write_all(&request).await?;
            send.finish()?;
            if let Some(gap) = gaps.answered() {
                say(gap.line());
            }
            let count = served.fetch_add(1, Ordering::Relaxed) + 1;
            if Some(count) == after_requests {
                milestone.notify_one();
            }
            anyhow::Ok(())
        });
    }
}

async fn migrate(server: &Server, address: SocketAddr, leave_old: bool) -> anyhow::Result<()> {
    // A wildcard listener on the port covers the new address once the
    // process runs there (e.g. restored by CRIU into another namespace).
    let covered = server
        .addresses()
        .iter()
        .any(|a| a == &address || (a.ip().is_unspecified() && a.port() == address.port()));
    if !covered {
        server.add_address(address).await?;
        say(format!("listen {address}"));
    }
    say(format!("announce {address}"));
    let acked = server.announce_migration(address).await?;
    say(format!("migration-acknowledged {address} acked={acked}"));
    if leave_old {
        for old in server.addresses() {
            if old != address && server.remove_address(old) {
                say(format!("unlisten {old}"));
            }
        }
    }
    Ok(())
}

async fn run_control_file(
    server: &Arc<Server>,
    path: &PathBuf,
    leave_old: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (command, argument) = line.split_once(' ').unwrap_or((line, ""));
        let address: SocketAddr = argument
            .trim()
            .parse()
            .with_context(|| format!("bad address in {line:?}"))?;
        match command {
            "announce" => {
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(e) = migrate(&server, address, leave_old).await {
                        eprintln!("migration to {address} failed: {e:#}");
                    }
                });
            }
            "listen" => {
                server.add_address(address).await?;
                say(format!("listen {address}"));
            }
            "unlisten" => {
                if server.remove_address(address) {
                    say(format!("unlisten {address}"));
                }
            }
            other => bail!("unknown command {other:?} (announce, listen, unlisten)"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- client

/// Watches quinn-proto's trace log for what it does not expose: its probe
/// timeouts ("PTO fired") and which packets it declared lost, and when
/// ("packets lost: [..]"), so that a loss can be placed on the migration's
/// timeline.
struct QuinnWatch {
    ptos: AtomicU64,
    losses: std::sync::Mutex<Vec<String>>,
}

impl log::Log for QuinnWatch {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("quinn_proto")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        if text.starts_with("PTO fired") {
            self.ptos.fetch_add(1, Ordering::Relaxed);
        } else if let Some(rest) = text.strip_prefix("packets lost: ") {
            let packets = rest.split(", bytes lost").next().unwrap_or(rest);
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            if let Ok(mut losses) = self.losses.lock() {
                losses.push(format!("packets-lost {at:.6} {}", packets.replace(' ', "")));
            }
        }
    }

    fn flush(&self) {}
}

static QUINN_WATCH: QuinnWatch = QuinnWatch {
    ptos: AtomicU64::new(0),
    losses: std::sync::Mutex::new(Vec::new()),
};

async fn run_client(args: ClientArgs) -> anyhow::Result<()> {
    if !args.no_pto_count && log::set_logger(&QUINN_WATCH).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    let cert = std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let client_config = tls::client_config(CertificateDer::from(cert), TransportConfig::default())?;
    let migration = if args.plain {
        ClientMigrationConfig::plain()
    } else {
        ClientMigrationConfig {
            probing: args.probing,
            ..ClientMigrationConfig::new(args.strategy)
        }
    };
    let client =
        Client::connect(client_config, migration, args.bind, args.server, &args.name).await?;

    // Small, line-sized writes: blocking I/O is fine here.
    let mut csv: Box<dyn Write> = match &args.csv {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    writeln!(
        csv,
        "index,send_time_ms,response_time_ms,service_time_ms,server_address"
    )?;

    let start = Instant::now();
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let mut loss_events = 0;
    for index in 0..args.count {
        if let Mode::Sporadic = args.mode {
            let due = start + Duration::from_millis(args.period_ms) * index as u32;
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        }
        if args.trigger_after == Some(index) {
            client.send_trigger()?;
        }
        let payload: Vec<u8> = (0..args.size).map(|i| (i + index) as u8).collect();
        let sent = Instant::now();
        let response = tokio::time::timeout(timeout, request(&client, &payload))
            .await
            .with_context(|| format!("request {index} timed out"))??;
        let received = Instant::now();
        if response != payload {
            bail!("request {index}: the echo differs from the request");
        }
        for event in client.try_events() {
            if matches!(event, ClientEvent::LossDetected { .. }) {
                loss_events += 1;
            }
            eprintln!("event {event:?}");
        }
        let ms = |t: Instant| (t - start).as_secs_f64() * 1e3;
        writeln!(
            csv,
            "{index},{:.3},{:.3},{:.3},{}",
            ms(sent),
            ms(received),
            (received - sent).as_secs_f64() * 1e3,
            client.server_address()
        )?;
        csv.flush()?;
    }
    let stats = client.stats();
    if let Ok(losses) = QUINN_WATCH.losses.lock() {
        for line in losses.iter() {
            eprintln!("{line}");
        }
    }
    eprintln!(
        "summary requests={} lost_packets={} pto_count={} loss_detected={} \
         congestion_events={} server_address={} negotiated={}",
        args.count,
        stats.path.lost_packets,
        if args.no_pto_count {
            "n/a".to_string()
        } else {
            QUINN_WATCH.ptos.load(Ordering::Relaxed).to_string()
        },
        loss_events,
        stats.path.congestion_events,
        client.server_address(),
        client.is_negotiated(),
    );
    client.close().await;
    Ok(())
}

async fn request(client: &Client, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = client.open_bi().await?;
    send.write_all(payload).await?;
    send.finish()?;
    recv.read_to_end(MAX_REQUEST).await
}
