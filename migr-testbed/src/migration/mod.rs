//! One live migration with real CRIU (cold: dump, copy, restore; or
//! post-copy with lazy pages), on a bare process or under runc or podman,
//! while a client sends requests (back to back, or sporadic).
//!
//! - QUIC: `migr-echo server` (bound to 0.0.0.0:4433) moves from the source
//!   container (10.60.11.2) to the destination container (10.60.12.2, a new
//!   IP); the client follows the server's announcement (seed 000).
//! - TCP, the COAT case (seed 002): `migr-testbed tcp-server` on the same IP
//!   (10.60.20.2:5000) in both containers, dumped and restored with
//!   `--tcp-established`; once the restore returned, the router's route to
//!   that IP moves to the destination node (COAT's flow update).
//!
//! Steering on: migr-agent on both edge nodes; CRIU's action script runs
//! `migrctl criu-hook` on each side (pre-dump/network-lock: source freeze;
//! pre-restore: destination restoring; post-resume: destination restored).
//! The orchestration sends what no hook covers: `prepare` on both,
//! `restoring` on the destination before the dump (a P-Explicit client sends
//! to the new address from its acknowledgement on, while the service still
//! runs at the source: those packets are parked at the destination rather
//! than refused), `restored` on the source once the restore returned (it
//! forwards what it parked, and stragglers), and `done`.
//!
//! Steering off: no agents, what users have today: CRIU's own network lock,
//! and every packet that arrives while the service is down is lost and
//! retransmitted by the client's transport.//!
//! Parts: `config` (what a run is asked to do), `measurements` (what it
//! measured, as JSON and as text), `commands` (the service's and the
//! client's command lines) and `steering` (the agents and CRIU's action
//! scripts). The run itself, step by step, is here.

mod commands;
mod config;
mod measurements;
mod memory;
mod steering;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

pub use config::{Mode, Protocol, RunConfig, Technique};
pub use measurements::{Frames, Run, ServiceGap};
pub use memory::PreDumpRound;

use super::{
    Bins, WorkDir,
    agent::write_hook,
    criu::{self, dir_bytes, phase_time, read_phases},
    dns, now_s,
    placement::{Files, Placement, Runtime},
    proc::{Proc, Spawn, become_subreaper, pid_free},
    stats,
    topology::{DST_CT_IP, DST_NODE_IP, ROUTER_CLIENT_IP, SAME_IP, SRC_CT_IP, Topology},
    transfer,
};

pub const SERVICE: &str = "echo";
/// The QUIC service's port.
pub const PORT: u16 = 4433;
/// The TCP (same-IP) service's port.
pub const TCP_PORT: u16 = 5000;
const SERVER_ID: &str = "7";
/// Requests of this size and more are a bulk transfer: the TCP client
/// watches its send queue (where the freeze hit).
const BULK_BYTES: usize = 64 * 1024;

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn file_has(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

/// Runs one migration and returns its measurements. Everything it created
/// is gone when it returns, also when it fails.
pub fn run(bins: &Bins, cfg: &RunConfig) -> Result<Run> {
    super::check_environment()?;
    become_subreaper()?;
    let say = |line: String| {
        if cfg.verbose {
            println!("[testbed] {line}");
        }
    };
    let quic = cfg.protocol.quic();
    let tcp_dns = cfg.protocol == Protocol::TcpDns;
    let udp = cfg.protocol == Protocol::Udp;
    // The service keeps its address; the route to it moves at the restore.
    let same_ip = cfg.protocol.same_ip();
    if tcp_dns && cfg.steering {
        bail!("the TCP+DNS baseline runs without steering");
    }
    // Under a container runtime (runc, podman).
    let container = cfg.runtime != Runtime::Criu;
    if container && tcp_dns {
        bail!("the TCP+DNS baseline runs without containers");
    }
    if container && cfg.technique != Technique::Cold {
        bail!("under a container runtime the testbed runs cold migrations only");
    }
    let label = cfg.label();
    let mut dir = WorkDir::new(&cfg.work_base, &label)?;
    dir.keep = cfg.keep_files;
    let d = dir.path.clone();
    let topo = Topology::build(cfg.preset)?;
    say(format!(
        "topology up ({} preset): {}",
        cfg.preset.name(),
        topo.names().join(", ")
    ));
    // The addresses the client reaches the service at, before and after.
    let (old, new) = if same_ip {
        let same = format!("{SAME_IP}:{}", if quic { PORT } else { TCP_PORT });
        for ct in [&topo.src_ct, &topo.dst_ct] {
            ct.ip(&["addr", "add", &format!("{SAME_IP}/32"), "dev", "eth0"])?;
        }
        (same.clone(), same)
    } else if quic {
        (format!("{SRC_CT_IP}:{PORT}"), format!("{DST_CT_IP}:{PORT}"))
    } else {
        (
            format!("{SRC_CT_IP}:{TCP_PORT}"),
            format!("{DST_CT_IP}:{TCP_PORT}"),
        )
    };

    let (src_phases_file, dst_phases_file) = (d.join("phases-src"), d.join("phases-dst"));
    let (src_hook, dst_hook) = (d.join("hook-src.sh"), d.join("hook-dst.sh"));
    let (agents, registration) = steering::start_agents(bins, cfg, &topo, &d, &old, &new, &say)?;
    // The agents that know the service (all of them unless it is unregistered).
    let managed = agents.as_ref().filter(|_| cfg.registered);

    // The service, in the source container.
    let files = Files::new(cfg.runtime, &d)?;
    let cert = files.host.join("cert.der");
    let ctl_file = files.host.join("server.ctl");
    let server_log = files.host.join("server.log");
    let server_err = files.host.join("server.err");
    let server_cmd = commands::server_command(bins, cfg, &files, &old, &new);
    let program = std::path::PathBuf::from(server_cmd.get_program());
    let args: Vec<String> = server_cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let placement = Placement::new(
        cfg.runtime,
        &d,
        &program,
        &args,
        &files,
        (&topo.src_ct, &src_hook),
        (&topo.dst_ct, &dst_hook),
    )?
    // A lazy dump keeps the source's tasks until every page is served:
    // the restore cannot reuse their PIDs.
    .with_pid_namespace(cfg.technique.remote_lazy());
    let mut server = placement.start(server_cmd, &topo.src_ct, &files)?;
    wait_until(Duration::from_secs(20), "the server to listen", || {
        if let Some(status) = server.exited() {
            bail!(
                "the server exited ({status}): {}",
                std::fs::read_to_string(&server_err).unwrap_or_default()
            );
        }
        Ok(file_has(&server_log, "listening") && (!quic || cert.exists()))
    })?;
    if let (Some((src, dst)), Some((mut src_args, mut dst_args))) = (&agents, registration) {
        if let Some(id) = server.container_id()? {
            for args in [&mut src_args, &mut dst_args] {
                args.extend(["--container".to_string(), id.clone()]);
            }
        }
        for (agent, args) in [(src, &src_args), (dst, &dst_args)] {
            agent.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        src.phase(SERVICE, "prepare", &[])?;
        dst.phase(SERVICE, "prepare", &[])?;
        say("migr-agent on both edge nodes (XDP on s-r and d-r), service prepared".into());
    }
    let server_pid = server.pid();
    // CRIU's action scripts. On pre-dump, the last moment the service still
    // runs, the source's script has the QUIC server announce the destination
    // address and waits for the client's acknowledgement (seed 000, step 4:
    // the container moves only after it), so that the client leaves the old
    // address as late as possible; then the agent freezes.
    let announce = (cfg.protocol == Protocol::Quic && cfg.strategy != "poa").then(|| {
        steering::announce_script(&new, &ctl_file, &server_log, &src_phases_file, server_pid)
    });
    let (src_then, dst_then) = steering::hook_commands(bins, agents.as_ref(), &d, container);
    write_hook(
        &src_hook,
        &src_phases_file,
        announce.as_deref(),
        src_then.as_deref(),
    )?;
    write_hook(&dst_hook, &dst_phases_file, None, dst_then.as_deref())?;

    // TCP+DNS: the name server, in the router, on its client-side address.
    let dns_server = if tcp_dns {
        let server = dns::DnsServer::start(
            &topo.router,
            ROUTER_CLIENT_IP.parse()?,
            cfg.dns_ttl_s,
            SRC_CT_IP,
            &d,
        )?;
        let name = dns::NAME;
        let log = d.join("dnsmasq.log");
        let hosts = d.join("dns-hosts").display().to_string();
        wait_until(
            Duration::from_secs(10),
            "dnsmasq to read its hosts file",
            || Ok(file_has(&log, &format!("read {hosts}"))),
        )?;
        say(format!(
            "dnsmasq (PID {}) on {}: {name} A {SRC_CT_IP}, TTL {} s",
            server.pid(),
            server.listen,
            cfg.dns_ttl_s
        ));
        Some(server)
    } else {
        None
    };

    // The client.
    let csv = d.join("client.csv");
    let client_err = d.join("client.err");
    let mut client_cmd = commands::client_command(bins, cfg, &old, &cert, &d, dns_server.as_ref())?;
    client_cmd
        .args(["--count", &cfg.requests.to_string()])
        .arg("--csv")
        .arg(&csv);
    let mut client = Proc::spawn(
        "the client",
        &mut client_cmd,
        Spawn {
            netns: Some(topo.client.name()),
            setsid: false,
            stdout: None,
            stderr: Some(&client_err),
        },
    )?;
    wait_until(
        Duration::from_secs(120),
        "requests before the migration",
        || {
            if let Some(status) = client.try_exit() {
                bail!(
                    "the client exited early ({status}): {}",
                    std::fs::read_to_string(&client_err).unwrap_or_default()
                );
            }
            // Counting rows reads the file: not every millisecond.
            std::thread::sleep(Duration::from_millis(4));
            Ok(stats::rows_so_far(&csv) >= cfg.migrate_after)
        },
    )?;
    say(format!(
        "{} requests answered by the source container; migrating ({}, CRIU)",
        cfg.migrate_after,
        cfg.technique.name()
    ));

    // The migration: pre-copy first (the service keeps running).
    let t_start = now_s();
    let pre = memory::pre_copy(bins, cfg.technique, server_pid, &topo, &d, &src_phases_file)?;
    // What the source's datapath does once the pre-dumps are over: still
    // `pass` (CRIU ran no action script, so migr parks nothing yet).
    let src_datapath_after_pre_copy = match managed {
        Some((src, _)) if !pre.rounds.is_empty() => Some(
            src.service(SERVICE)?["datapath"]
                .as_str()
                .context("the source agent's datapath state")?
                .to_string(),
        ),
        _ => None,
    };
    if let Some((_, dst)) = managed {
        dst.phase(SERVICE, "restoring", &[])?;
    }
    // TCP+DNS: the connection cannot survive the new IP; CRIU dumps it and
    // restores it closed (the listener is restored as it was).
    let criu_extra: &[&str] = if quic || udp {
        &[]
    } else if tcp_dns {
        &["--tcp-close"]
    } else {
        &["--tcp-established"]
    };
    let images = d.join("images-src");
    let pre_args = pre.dump_args();
    let mut dump_extra = criu_extra.to_vec();
    dump_extra.extend(pre_args.iter().map(String::as_str));
    let mut lazy_dump = None;
    let dump_seconds = if cfg.technique.remote_lazy() {
        let (dump, seconds) = memory::LazyDump::start(
            bins,
            server_pid,
            &topo,
            &images,
            &src_hook,
            (&d.join("dump.log"), &src_phases_file),
            &dump_extra,
        )?;
        lazy_dump = Some(dump);
        seconds
    } else {
        placement.dump(
            bins,
            &mut server,
            &topo.src_ct,
            &images,
            &src_hook,
            &d.join("dump.log"),
            &dump_extra,
        )?
    };
    if announce.is_some() && !file_has(&server_log, "migration-acknowledged") {
        bail!(
            "the client did not acknowledge the announcement:\n{}",
            std::fs::read_to_string(&server_log).unwrap_or_default()
        );
    }
    let t_transfer = Instant::now();
    let images_dst = d.join("images-dst");
    // Over the links, through the router: the presets shape it.
    transfer::copy_over_network(&topo.src, &topo.dst, DST_NODE_IP, &images, &images_dst)
        .context("moving the images from the source node to the destination node")?;
    let transfer_ms = t_transfer.elapsed().as_secs_f64() * 1e3;
    pre.link_parent(&images_dst)?;
    if lazy_dump.is_none() {
        wait_until(Duration::from_secs(5), "the dumped PID to be free", || {
            Ok(pid_free(server_pid))
        })?;
    }
    let mut restore_extra = criu_extra.to_vec();
    let mut lazy = None;
    if cfg.technique.remote_lazy() || cfg.technique == Technique::PostCopyLocal {
        // Remote: the pages come from the lazy dump at the source node.
        let source = cfg.technique.remote_lazy().then_some(&topo);
        lazy = Some(memory::lazy_pages_daemon(bins, &images_dst, &d, source)?);
        restore_extra.push("--lazy-pages");
    }
    // Once the restored service runs (CRIU's post-resume; runc returns
    // some tens of ms later) the orchestration moves the flow and tells the
    // source's agent.
    let mut t_forward = now_s();
    let mut resumed = || -> Result<()> {
        if let Some(server) = &dns_server {
            // The orchestration updates the service's record.
            server.update(DST_CT_IP)?;
        } else if same_ip {
            // COAT's flow update: the service's IP is reachable at the
            // destination node from now on.
            topo.move_same_ip(true)?;
        }
        t_forward = now_s();
        if let Some((src, _)) = managed {
            src.phase(SERVICE, "restored", &[])?;
            t_forward = now_s();
        }
        Ok(())
    };
    let (restore_seconds, mut restored) = placement.restore(
        bins,
        &images_dst,
        &topo.dst_ct,
        (&dst_hook, &dst_phases_file),
        &d.join("restore.log"),
        &restore_extra,
        &mut resumed,
    )?;
    let restored_pid = restored.pid();
    let mut lock_tables_removed = criu::remove_lock_tables(&topo.src_ct)?;
    lock_tables_removed.extend(criu::remove_lock_tables(&topo.dst_ct)?);
    say(format!(
        "dumped in {:.0} ms, copied in {transfer_ms:.0} ms, restored in {:.0} ms into the destination container (PID {restored_pid})",
        dump_seconds * 1e3,
        restore_seconds * 1e3
    ));

    // The rest of the requests, then the numbers.
    if let Some(ms) = cfg.stop_after_restore_ms {
        // UDP: long enough for a request given up during the downtime to
        // time out and the next one to be answered (that wait is the gap).
        let ms = if udp {
            ms.max(cfg.udp_timeout_ms + 1000)
        } else {
            ms
        };
        std::thread::sleep(Duration::from_millis(ms));
        // The connection's TCP state on both ends, for the record.
        for (ns, name) in [
            (&topo.client, "ss-client"),
            (&topo.dst_ct, "ss-dst-container"),
        ] {
            if let Ok(text) = ns.exec(&["ss", "-tinoe"]) {
                let _ = std::fs::write(d.join(name), text);
            }
            if let Ok(text) = ns.exec(&["cat", "/proc/net/netstat"]) {
                let _ = std::fs::write(d.join(format!("{name}.netstat")), text);
            }
        }
        std::fs::write(d.join("client.stop"), b"")?;
    }
    // Wait for the client; post-copy: note when the lazy-pages daemon,
    // which exits once it served every page, is done.
    let mut lazy_done = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let client_status = loop {
        if lazy_done.is_none()
            && let Some(p) = lazy.as_mut()
            && p.try_exit().is_some()
        {
            lazy_done = Some(now_s());
        }
        if let Some(status) = client.try_exit() {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the client did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if let Some(p) = lazy.as_mut()
        && lazy_done.is_none()
    {
        p.wait_exit(Duration::from_secs(60))?;
        lazy_done = Some(now_s());
    }
    if let Some(dump) = lazy_dump {
        dump.finish(Duration::from_secs(60))?;
    }
    if let Some((src, _)) = managed {
        src.phase(SERVICE, "done", &["--drain-ms", "100"])?;
    }
    let requests_detail = stats::read_requests(&csv)?;
    let client_summary = stats::client_summary(&client_err);
    let client_error = (!client_status.success()).then(|| {
        std::fs::read_to_string(&client_err)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("rror") || l.contains("request"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    let (src_frames, dst_frames) = match managed {
        Some((src, dst)) => (
            Some(Frames::from_status(&src.service(SERVICE)?)?),
            Some(Frames::from_status(&dst.service(SERVICE)?)?),
        ),
        None => (None, None),
    };
    let src_phases = read_phases(&src_phases_file);
    let dst_phases = read_phases(&dst_phases_file);
    let pre_dump = phase_time(&src_phases, "pre-dump").context("no pre-dump action recorded")?;
    let post_dump = phase_time(&src_phases, "post-dump").context("no post-dump action recorded")?;
    let pre_restore =
        phase_time(&dst_phases, "pre-restore").context("no pre-restore action recorded")?;
    let post_resume =
        phase_time(&dst_phases, "post-resume").context("no post-resume action recorded")?;
    let acknowledged = phase_time(&src_phases, "acknowledged").unwrap_or(pre_dump);
    // The moment the service's network stops: CRIU's network lock.
    let client_log = std::fs::read_to_string(&client_err).unwrap_or_default();
    let freeze_hit = stats::FreezeHit::classify(
        &client_log,
        phase_time(&src_phases, "network-lock").unwrap_or(pre_dump),
    );
    let declared_losses = stats::declared_losses(&client_log, pre_dump);
    let (disruption_ms, disruption_at) = stats::disruption(&requests_detail);
    let (excess_wait_ms, long_gaps_ms) = stats::excess_and_long_gaps(&requests_detail);
    // What the client sent (its summary says when it stopped early).
    let requests = client_summary
        .get("requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cfg.requests);
    let mut run = Run {
        label,
        protocol: cfg.protocol,
        steering: cfg.steering,
        strategy: cfg.strategy.clone(),
        client_probing: cfg.client_probing.clone(),
        preset: cfg.preset,
        mode: cfg.mode,
        technique: cfg.technique,
        ballast_mb: cfg.ballast_mb,
        requests,
        answered: requests_detail.len(),
        lost: requests.saturating_sub(requests_detail.len()),
        client_ok: client_status.success(),
        client_error,
        final_server: requests_detail
            .last()
            .map(|r| r.server.clone())
            .unwrap_or_default(),
        downtime_ms: (post_resume - pre_dump) * 1e3,
        dump_ms: (post_dump - pre_dump) * 1e3,
        transfer_ms,
        restore_ms: (post_resume - pre_restore) * 1e3,
        total_migration_ms: (t_forward.max(post_resume) - t_start) * 1e3,
        flow_moved_after_resume_ms: (t_forward - post_resume) * 1e3,
        announce_to_ack_ms: (acknowledged - pre_dump) * 1e3,
        service_gap: ServiceGap::from_log(&server_log, pre_dump, post_resume),
        disruption_ms,
        disruption_at,
        excess_wait_ms,
        long_gaps_ms,
        median_service_ms: stats::median_service(&requests_detail),
        max_service_ms: requests_detail
            .iter()
            .map(|r| r.service_ms)
            .fold(0.0, f64::max),
        after_migration_service_ms: match cfg.mode {
            Mode::Sporadic { .. } => requests_detail
                .iter()
                .find(|r| r.index == cfg.migrate_after)
                .map(|r| r.service_ms),
            Mode::BackToBack => None,
        },
        image_bytes: dir_bytes(&images),
        pre_copy_answer_gaps_ms: quic.then(|| pre.answer_gaps_ms(&server_log, &src_phases)),
        pre_dump_rounds: pre.rounds,
        src_datapath_after_pre_copy,
        lazy_pages_ms: lazy_done.map(|t| (t - post_resume) * 1e3),
        client_summary,
        src_frames,
        dst_frames,
        src_phases,
        dst_phases,
        lock_tables_removed,
        delay_line: topo.delay_stats(),
        freeze_hit,
        declared_losses,
        service_socket_drops: None,
        requests_detail,
        work_dir: d.clone(),
    };
    // The containers' IP/UDP/TCP counters (checksum errors, drops), for
    // the record in the work directory; a service socket's drops, in the run.
    for (ns, name, service_side) in [
        (&topo.src_ct, "snmp-src-container", true),
        (&topo.dst_ct, "snmp-dst-container", true),
        (&topo.client, "snmp-client", false),
    ] {
        let text = ns.exec(&["cat", "/proc/net/snmp"])?;
        if service_side {
            let drops = stats::udp_rcvbuf_errors(&text)
                .with_context(|| format!("no Udp RcvbufErrors in {name}"))?;
            *run.service_socket_drops.get_or_insert(0) += drops;
        }
        let _ = std::fs::write(d.join(name), text);
    }
    // Teardown, in order: the restored service, the agents, the namespaces.
    restored.kill();
    drop(dns_server);
    drop(agents);
    drop(topo);
    Ok(run)
}
