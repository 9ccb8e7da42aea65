//! migr-agent: attaches the XDP datapath to the node's interfaces.
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use migr_common::maps::ProtoClass;
use migr_user::datapath::{AttachMode, Datapath, MAIN_PROGRAM};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "migr-agent",
    version,
    about = "migr's per-node agent: keeps connections alive while containers migrate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath, attach it, and print the counters until SIGINT/SIGTERM.
    Run {
        /// Interface to attach to (repeat for several).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// XDP mode: auto (native, else skb), native or skb.
        #[arg(long, default_value = "auto")]
        mode: AttachMode,
        /// Seconds between counter prints.
        #[arg(long, default_value_t = 5.0)]
        interval: f64,
        /// Exit after printing the counters this many times (default: run until signalled).
        #[arg(long)]
        count: Option<u64>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run {
            ifaces,
            mode,
            interval,
            count,
        } => runtime.block_on(run(ifaces, mode, interval, count)),
    }
}

async fn run(
    ifaces: Vec<String>,
    mode: AttachMode,
    interval: f64,
    count: Option<u64>,
) -> Result<()> {
    if !(interval.is_finite() && interval > 0.0) {
        bail!("--interval must be a positive number of seconds, got {interval}");
    }
    let mut datapath = Datapath::load()?;
    for iface in &ifaces {
        let took = datapath.attach(MAIN_PROGRAM, iface, mode)?;
        tracing::info!(%iface, mode = ?took, "attached");
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(interval));
    ticker.tick().await;
    let mut printed = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                print_counters(&datapath)?;
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("detaching");
    // Dropping the datapath detaches its links.
    drop(datapath);
    Ok(())
}

fn print_counters(datapath: &Datapath) -> Result<()> {
    let counters = datapath.proto_counters()?;
    let line: Vec<String> = ProtoClass::ALL
        .iter()
        .map(|c| format!("{}={}", c.name(), counters[*c as usize]))
        .collect();
    println!("packets: {}", line.join(" "));
    Ok(())
}
