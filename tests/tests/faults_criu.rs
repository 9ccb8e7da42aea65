//! Faults of real CRIU in mid-migration (issue 10), on the testbed
//! (docs/testbed.md): six network namespaces, migr-agent on both edge nodes,
//! `migr-echo server` in the source container, a `migr-echo client` sending
//! QUIC requests back to back to the source container's address.
//!
//! - `criu dump` fails: the action script refuses `post-dump`. CRIU resumes
//!   the dumped tasks in place and unlocks the network; `network-unlock`
//!   while frozen is the hook's `abort`. The frames parked during the dump go
//!   back to the source instance, which answers them.
//! - `criu restore` fails: the destination container already has a socket
//!   bound to the service's port, so CRIU cannot bind the restored one. The
//!   orchestrator aborts the destination, restores the images back into the
//!   source container, and aborts the source: its parked frames go to the
//!   restored source instance.
//!
//! The client is R-Explicit and no migration is announced: it keeps sending
//! to the source address, so everything it sends during the fault reaches the
//! source node. Asserted: every request answered exactly once, the datapath
//! lost nothing (parked = replayed, no overflow, drop or failure), the
//! service ends `aborted` on both nodes. Timings are printed, not asserted.
//!
//! Needs root and CRIU 4.1.1 (`cargo xtask setup`). Uses the testbed's
//! public API only; cleans up its namespaces, CRIU's nftables tables and its
//! processes (by PID) whether it passes or fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use migr_testbed::{
    Bins, Preset, Topology, WorkDir,
    agent::Agent,
    criu,
    migration::Frames,
    now_s,
    proc::{Adopted, Proc, Spawn, become_subreaper, is_alive, pid_free, reap},
    stats,
    topology::{DST_CT_IP, DST_UPLINK, SRC_CT_IP, SRC_UPLINK},
};

const SERVICE: &str = "echo";
const PORT: u16 = 4433;
const REQUESTS: usize = 3000;
const MIGRATE_AFTER: usize = 1000;

/// One testbed at a time (they share the two cores).
static SERIAL: Mutex<()> = Mutex::new(());

/// A service's frame counts (the testbed's own account) and its state.
fn frames_of(agent: &Agent) -> Result<(Frames, String)> {
    let svc = agent.service(SERVICE)?;
    let state = svc["state"]
        .as_str()
        .with_context(|| format!("no state in the service status: {svc}"))?
        .to_string();
    Ok((Frames::from_status(&svc)?, state))
}

/// The testbed with both agents, the service prepared on both nodes, the
/// server running in the source container and the client started.
struct Bed {
    // Field order is drop order: processes, then agents, then namespaces,
    // then the work directory.
    client: Option<Proc>,
    server: Option<Proc>,
    /// A restored server (not our child until criu exits).
    restored: Option<Adopted>,
    /// Other processes of the test (e.g. the port squatter).
    extra: Vec<Proc>,
    src: Agent,
    dst: Agent,
    topo: Topology,
    dir: WorkDir,
    bins: Bins,
    server_pid: i32,
    csv: PathBuf,
    client_err: PathBuf,
    started: Instant,
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn file_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

/// CRIU's action script: records each action, hands it to this node's
/// agent (`migrctl criu-hook`), then refuses `fail_at` if given.
fn write_hook(path: &Path, phases: &Path, agent: Option<&Agent>, fail_at: Option<&str>) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut text = format!(
        "#!/bin/sh\n# migr faults_criu: CRIU action script\n\
         echo \"$CRTOOLS_SCRIPT_ACTION $(date +%s.%N)\" >> '{}'\n",
        phases.display()
    );
    if let Some(agent) = agent {
        let hook = agent.hook_command(Some(SERVICE));
        text.push_str(hook.strip_prefix("exec ").unwrap_or(&hook));
        text.push('\n');
    }
    if let Some(action) = fail_at {
        text.push_str(&format!(
            "if [ \"$CRTOOLS_SCRIPT_ACTION\" = {action} ]; then\n\
             \x20 echo 'migr faults_criu: refusing {action}' >&2\n\
             \x20 exit 1\nfi\n"
        ));
    }
    text.push_str("exit 0\n");
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Bed {
    fn up(label: &str) -> Result<Self> {
        migr_testbed::check_environment()?;
        become_subreaper()?;
        let bins = Bins::build()?;
        let dir = WorkDir::new(&std::env::temp_dir(), label)?;
        let d = dir.path.clone();
        let topo = Topology::build(Preset::None)?;
        let (old, new) = (format!("{SRC_CT_IP}:{PORT}"), format!("{DST_CT_IP}:{PORT}"));
        let src = Agent::start(&bins, &topo.src, SRC_UPLINK, "auto", &d, "src")?;
        let dst = Agent::start(&bins, &topo.dst, DST_UPLINK, "auto", &d, "dst")?;
        let mac = topo.router_mac_to_src()?;
        let base = ["service", "add", "--id", "1", "--name", SERVICE];
        let quic_rule = ["--server-id", "7", "--cid", "8,1,2", "--quic-grease"];
        let forward = ["--forward-iface", SRC_UPLINK, "--next-hop-mac", &mac];
        src.ok(&[
            &base[..],
            &["--quic", &old],
            &quic_rule,
            &["--forward-to", &new],
            &forward,
        ]
        .concat())?;
        dst.ok(&[&base[..], &["--quic", &new], &quic_rule].concat())?;
        src.phase(SERVICE, "prepare", &[])?;
        dst.phase(SERVICE, "prepare", &[])?;

        let cert = d.join("cert.der");
        let server_log = d.join("server.log");
        let mut cmd = Command::new(&bins.echo);
        cmd.arg("server")
            .args(["--listen", &format!("0.0.0.0:{PORT}")])
            .arg("--cert-out")
            .arg(&cert)
            .args(["--server-id", "7", "--cid-len", "8", "--cid-offset", "1"])
            .args(["--server-id-len", "2"]);
        let mut server = Proc::spawn(
            "the server",
            &mut cmd,
            Spawn {
                netns: Some(topo.src_ct.name()),
                setsid: true,
                stdout: Some(&server_log),
                stderr: Some(&d.join("server.err")),
            },
        )?;
        wait_until(Duration::from_secs(20), "the server to listen", || {
            if let Some(status) = server.try_exit() {
                bail!("the server exited with {status}");
            }
            Ok(file_has(&server_log, "listening") && cert.exists())
        })?;
        let server_pid = server.pid();

        let csv = d.join("client.csv");
        let client_err = d.join("client.err");
        let mut cmd = Command::new(&bins.echo);
        cmd.arg("client")
            .args(["--server", &old])
            .arg("--ca")
            .arg(&cert)
            .args(["--strategy", "r-explicit", "--mode", "back-to-back"])
            .args(["--count", &REQUESTS.to_string()])
            .arg("--csv")
            .arg(&csv);
        let client = Proc::spawn(
            "the client",
            &mut cmd,
            Spawn {
                netns: Some(topo.client.name()),
                stderr: Some(&client_err),
                ..Spawn::default()
            },
        )?;
        Ok(Self {
            bins,
            dir,
            client: Some(client),
            server: Some(server),
            restored: None,
            extra: Vec::new(),
            src,
            dst,
            topo,
            server_pid,
            csv,
            client_err,
            started: Instant::now(),
        })
    }

    fn d(&self) -> PathBuf {
        self.dir.path.clone()
    }

    fn wait_rows(&mut self, rows: usize, limit: Duration) -> Result<()> {
        let (csv, err) = (self.csv.clone(), self.client_err.clone());
        let client = self.client.as_mut().unwrap();
        wait_until(limit, &format!("{rows} answered requests"), || {
            if stats::rows_so_far(&csv) >= rows {
                return Ok(true);
            }
            if let Some(status) = client.try_exit() {
                bail!(
                    "the client exited ({status}) after {} rows: {}",
                    stats::rows_so_far(&csv),
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(4));
            Ok(false)
        })
    }

    /// Waits for the client to finish; checks every request was answered
    /// exactly once. Returns (answered, worst service time in ms).
    fn finish_client(&mut self) -> Result<(usize, f64)> {
        let client = self.client.as_mut().unwrap();
        let status = client.wait_exit(Duration::from_secs(120))?;
        let requests = stats::read_requests(&self.csv)?;
        let mut seen = vec![0u32; REQUESTS];
        for r in &requests {
            anyhow::ensure!(r.index < REQUESTS, "row for request {}", r.index);
            seen[r.index] += 1;
        }
        let missing = seen.iter().filter(|&&n| n == 0).count();
        let twice = seen.iter().filter(|&&n| n > 1).count();
        anyhow::ensure!(
            status.success() && missing == 0 && twice == 0,
            "client {status}: {missing} requests unanswered, {twice} answered more than once: {}",
            std::fs::read_to_string(&self.client_err).unwrap_or_default()
        );
        let worst = requests.iter().map(|r| r.service_ms).fold(0.0, f64::max);
        Ok((requests.len(), worst))
    }

    /// CRIU's nftables tables left in either container.
    fn remove_lock_tables(&self) -> Result<Vec<String>> {
        let mut removed = criu::remove_lock_tables(&self.topo.src_ct)?;
        removed.extend(criu::remove_lock_tables(&self.topo.dst_ct)?);
        Ok(removed)
    }
}

/// Another migr-echo server on the service's port in the destination
/// container: CRIU cannot bind the restored socket there.
fn squat_destination_port(bed: &mut Bed) -> Result<()> {
    let d = bed.d();
    let squat_log = d.join("squatter.log");
    let mut cmd = Command::new(&bed.bins.echo);
    cmd.arg("server")
        .args(["--listen", &format!("0.0.0.0:{PORT}")])
        .arg("--cert-out")
        .arg(d.join("squatter.der"));
    let mut squatter = Proc::spawn(
        "the port squatter",
        &mut cmd,
        Spawn {
            netns: Some(bed.topo.dst_ct.name()),
            stdout: Some(&squat_log),
            ..Spawn::default()
        },
    )?;
    wait_until(Duration::from_secs(20), "the squatter to listen", || {
        if let Some(status) = squatter.try_exit() {
            bail!("the squatter exited with {status}");
        }
        Ok(file_has(&squat_log, "listening"))
    })?;
    bed.extra.push(squatter);
    Ok(())
}

fn actions(path: &Path) -> Vec<String> {
    criu::read_phases(path)
        .into_iter()
        .map(|(a, _)| a)
        .collect()
}

fn report(label: &str, bed: &Bed, answered: usize, worst_ms: f64, extra: &str) -> Result<()> {
    let (src, src_state) = frames_of(&bed.src)?;
    let (dst, dst_state) = frames_of(&bed.dst)?;
    println!(
        "[faults_criu] {label}: {answered}/{REQUESTS} answered once; worst request {worst_ms:.1} ms; \
         source {src_state}: {src:?}; destination {dst_state}: {dst:?}; {extra}; test {:.1} s",
        bed.started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_lossless(bed: &Bed) -> Result<(Frames, Frames)> {
    let (src, src_state) = frames_of(&bed.src)?;
    let (dst, dst_state) = frames_of(&bed.dst)?;
    assert_eq!(src_state, "aborted", "source: {src:?}");
    assert_eq!(dst_state, "aborted", "destination: {dst:?}");
    assert_eq!(
        src.replayed, src.parked,
        "every parked frame back to the source: {src:?}"
    );
    assert_eq!(dst.replayed, dst.parked, "{dst:?}");
    assert_eq!(src.lost(), 0, "the source's datapath lost nothing: {src:?}");
    assert_eq!(
        dst.lost(),
        0,
        "the destination's datapath lost nothing: {dst:?}"
    );
    assert_eq!(src.forwarded, 0, "nothing went to the destination: {src:?}");
    Ok((src, dst))
}

/// `criu dump` fails after the dump: the action script refuses `post-dump`.
/// CRIU resumes the tasks in place and unlocks the network, which the hook
/// turns into `abort`: the frames parked since `pre-dump` go back to the
/// source instance.
#[test]
fn criu_dump_fails_the_agent_aborts_and_the_source_answers_everything() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::up("faults-criu-dump").unwrap_or_else(|e| panic!("{e:#}"));
    let result = (|| -> Result<()> {
        let d = bed.d();
        let (phases, hook) = (d.join("phases-src"), d.join("hook-src.sh"));
        write_hook(&hook, &phases, Some(&bed.src), Some("post-dump"));
        bed.wait_rows(MIGRATE_AFTER, Duration::from_secs(120))?;
        let t0 = now_s();
        let dump = criu::dump(
            &bed.bins,
            bed.server_pid,
            &bed.topo.src_ct,
            &d.join("images-src"),
            &hook,
            &d.join("dump.log"),
            &[],
        );
        let dump_s = now_s() - t0;
        let error = match dump {
            Ok(_) => bail!("criu dump succeeded although post-dump refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains("criu dump failed"), "{error}");
        let actions: Vec<String> = criu::read_phases(&phases)
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        assert!(
            actions.iter().any(|a| a == "post-dump")
                && actions.iter().any(|a| a == "network-unlock"),
            "CRIU ran post-dump, then network-unlock: {actions:?}"
        );
        let server = bed.server.as_mut().unwrap();
        assert!(
            server.try_exit().is_none() && is_alive(bed.server_pid),
            "CRIU resumed the dumped server in place"
        );
        let (frames, state) = frames_of(&bed.src)?;
        assert_eq!(
            state, "aborted",
            "network-unlock while frozen is abort: {frames:?}"
        );
        let tables = bed.remove_lock_tables()?;
        let (answered, worst) = bed.finish_client()?;
        // The destination was only prepared: abort it too (prepared -> idle
        // would be `abort` as well; here it stays prepared, nothing parked).
        bed.dst.phase(SERVICE, "abort", &[])?;
        let (src, _) = frames_of(&bed.src)?;
        assert!(
            src.parked > 0,
            "the client's requests during the dump were parked: {src:?}"
        );
        assert_eq!(
            src.replayed, src.parked,
            "every parked frame back to the source: {src:?}"
        );
        assert_eq!(src.lost(), 0, "{src:?}");
        assert_eq!(src.forwarded, 0, "{src:?}");
        report(
            "dump fails (post-dump refused)",
            &bed,
            answered,
            worst,
            &format!(
                "criu dump ran {:.0} ms; CRIU tables left and removed: {tables:?}; actions {actions:?}",
                dump_s * 1e3
            ),
        )?;
        Ok(())
    })();
    drop(bed);
    result.unwrap_or_else(|e| panic!("{e:#}"));
}

/// `criu restore` fails at the destination: a process there already holds
/// the service's UDP port, so CRIU cannot bind the restored socket. The
/// orchestrator aborts the destination, restores the images back into the
/// source container (a script that only records the actions: the source is
/// frozen, not restoring), and aborts the source, whose parked frames go to
/// the restored source instance.
#[test]
fn criu_restore_fails_both_nodes_abort_and_the_source_is_restored_in_place() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::up("faults-criu-restore").unwrap_or_else(|e| panic!("{e:#}"));
    let result = (|| -> Result<()> {
        let d = bed.d();
        squat_destination_port(&mut bed)?;

        let (src_phases, dst_phases) = (d.join("phases-src"), d.join("phases-dst"));
        let (src_hook, dst_hook) = (d.join("hook-src.sh"), d.join("hook-dst.sh"));
        let back_phases = d.join("phases-back");
        let back_hook = d.join("hook-back.sh");
        write_hook(&src_hook, &src_phases, Some(&bed.src), None);
        write_hook(&dst_hook, &dst_phases, Some(&bed.dst), None);
        write_hook(&back_hook, &back_phases, None, None);
        bed.wait_rows(MIGRATE_AFTER, Duration::from_secs(120))?;

        let t0 = now_s();
        bed.dst.phase(SERVICE, "restoring", &[])?;
        let images = d.join("images-src");
        criu::dump(
            &bed.bins,
            bed.server_pid,
            &bed.topo.src_ct,
            &images,
            &src_hook,
            &d.join("dump.log"),
            &[],
        )?;
        let t_dumped = now_s();
        let server = bed.server.as_mut().unwrap();
        server.wait_exit(Duration::from_secs(5))?;
        let images_dst = d.join("images-dst");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&images)
            .arg(&images_dst)
            .status()?;
        anyhow::ensure!(status.success(), "copying the images");
        wait_until(Duration::from_secs(5), "the dumped PID to be free", || {
            Ok(pid_free(bed.server_pid))
        })?;
        let restore = criu::restore(
            &bed.bins,
            &images_dst,
            &bed.topo.dst_ct,
            &dst_hook,
            &d.join("restore.log"),
            &[],
        );
        let t_failed = now_s();
        let error = match restore {
            Ok((_, pid)) => {
                bed.restored = Some(Adopted {
                    name: "unexpectedly restored".into(),
                    pid,
                });
                bail!("criu restore succeeded although the port was taken");
            }
            Err(e) => format!("{e:#}"),
        };
        println!("[faults_criu] the restore failed as intended: {error}");
        let dst_actions: Vec<String> = criu::read_phases(&dst_phases)
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        let (_, src_state) = frames_of(&bed.src)?;
        assert_eq!(
            src_state, "frozen",
            "the source parks until the orchestrator decides"
        );
        // The orchestrator: abort at the destination, restore at the source.
        bed.dst.phase(SERVICE, "abort", &[])?;
        // The failed restore's tasks were ours (subreaper): reap them.
        reap(bed.server_pid, Duration::from_secs(5));
        wait_until(
            Duration::from_secs(5),
            "the failed restore's PID to be free",
            || Ok(pid_free(bed.server_pid)),
        )?;
        let (_, pid) = criu::restore(
            &bed.bins,
            &images,
            &bed.topo.src_ct,
            &back_hook,
            &d.join("restore-back.log"),
            &[],
        )?;
        bed.restored = Some(Adopted {
            name: "the server restored at the source".into(),
            pid,
        });
        // The dump's lock in the source container drops everything: gone
        // before the parked frames go back.
        let tables = bed.remove_lock_tables()?;
        bed.src.phase(SERVICE, "abort", &[])?;
        let t_aborted = now_s();
        let (answered, worst) = bed.finish_client()?;
        let (src, dst) = check_lossless(&bed)?;
        assert!(
            src.parked > 0,
            "requests sent during the fault were parked: {src:?}"
        );
        assert_eq!(dst.parked, 0, "nothing reached the destination: {dst:?}");
        assert!(bed.restored.as_ref().unwrap().alive());
        report(
            "restore fails (port taken at the destination)",
            &bed,
            answered,
            worst,
            &format!(
                "dump {:.0} ms, failed restore {:.0} ms, restore back and abort {:.0} ms \
                 (parked for {:.0} ms in all); CRIU tables removed: {tables:?}; \
                 destination actions {dst_actions:?}",
                (t_dumped - t0) * 1e3,
                (t_failed - t_dumped) * 1e3,
                (t_aborted - t_failed) * 1e3,
                (t_aborted - t0) * 1e3,
            ),
        )?;
        Ok(())
    })();
    drop(bed);
    result.unwrap_or_else(|e| panic!("{e:#}"));
}

/// `criu dump` of a wrong PID (one no process has) after the orchestrator
/// froze the service: CRIU fails before it seizes anything, the
/// orchestrator aborts, and the frames parked since the freeze go back to
/// the source instance, which never stopped.
#[test]
fn criu_dump_of_a_wrong_pid_fails_and_the_orchestrator_aborts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::up("faults-criu-wrong-pid").unwrap_or_else(|e| panic!("{e:#}"));
    let result = (|| -> Result<()> {
        let d = bed.d();
        let (phases, hook) = (d.join("phases-src"), d.join("hook-src.sh"));
        write_hook(&hook, &phases, Some(&bed.src), None);
        bed.wait_rows(MIGRATE_AFTER, Duration::from_secs(120))?;
        // A PID nobody has: above every PID in use, below pid_max.
        let wrong = (bed.server_pid + 100_000..4_000_000)
            .find(|&p| pid_free(p))
            .unwrap();
        let t0 = now_s();
        bed.src.phase(SERVICE, "freeze", &[])?;
        // Requests keep coming while the orchestrator runs the dump.
        std::thread::sleep(Duration::from_millis(50));
        let dump = criu::dump(
            &bed.bins,
            wrong,
            &bed.topo.src_ct,
            &d.join("images-src"),
            &hook,
            &d.join("dump.log"),
            &[],
        );
        let error = match dump {
            Ok(_) => bail!("criu dump of PID {wrong} succeeded"),
            Err(e) => format!("{e:#}"),
        };
        println!("[faults_criu] the dump failed as intended: {error}");
        let actions = actions(&phases);
        let (_, state) = frames_of(&bed.src)?;
        // The orchestrator's abort (unless a hook already did it).
        let by = if state == "frozen" {
            bed.src.phase(SERVICE, "abort", &[])?;
            "the orchestrator"
        } else {
            "a CRIU hook"
        };
        let t_aborted = now_s();
        bed.dst.phase(SERVICE, "abort", &[])?;
        let tables = bed.remove_lock_tables()?;
        let (answered, worst) = bed.finish_client()?;
        assert!(
            is_alive(bed.server_pid),
            "the real server was never touched"
        );
        let (src, src_state) = frames_of(&bed.src)?;
        assert_eq!(src_state, "aborted", "{src:?}");
        assert!(
            src.parked > 0,
            "requests sent during the freeze were parked: {src:?}"
        );
        assert_eq!(
            src.replayed, src.parked,
            "every parked frame back to the source: {src:?}"
        );
        assert_eq!(src.lost(), 0, "{src:?}");
        assert_eq!(src.forwarded, 0, "{src:?}");
        report(
            "dump of a wrong PID after the freeze",
            &bed,
            answered,
            worst,
            &format!(
                "aborted by {by}; frozen for {:.0} ms; CRIU actions {actions:?}; tables removed {tables:?}",
                (t_aborted - t0) * 1e3,
            ),
        )?;
        Ok(())
    })();
    drop(bed);
    result.unwrap_or_else(|e| panic!("{e:#}"));
}

/// `criu dump --leave-running`, then the restore fails at the destination:
/// the source instance still runs with the PIDs CRIU must restore (one host,
/// no PID namespace: "Can't fork for PID: File exists"), and a squatter
/// holds the port there besides. With `--leave-running` CRIU unlocks the
/// network when the dump ends and the tasks go on; the hook turns that into
/// `abort` at the source at once, so the source never waits for the
/// restore's outcome. The orchestrator aborts the destination when the
/// restore fails.
#[test]
fn criu_restore_fails_after_a_leave_running_dump_and_the_source_went_on() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::up("faults-criu-leave-running").unwrap_or_else(|e| panic!("{e:#}"));
    let result = (|| -> Result<()> {
        let d = bed.d();
        squat_destination_port(&mut bed)?;
        let (src_phases, dst_phases) = (d.join("phases-src"), d.join("phases-dst"));
        let (src_hook, dst_hook) = (d.join("hook-src.sh"), d.join("hook-dst.sh"));
        write_hook(&src_hook, &src_phases, Some(&bed.src), None);
        write_hook(&dst_hook, &dst_phases, Some(&bed.dst), None);
        bed.wait_rows(MIGRATE_AFTER, Duration::from_secs(120))?;
        let t0 = now_s();
        bed.dst.phase(SERVICE, "restoring", &[])?;
        let images = d.join("images-src");
        criu::dump(
            &bed.bins,
            bed.server_pid,
            &bed.topo.src_ct,
            &images,
            &src_hook,
            &d.join("dump.log"),
            &["--leave-running"],
        )?;
        let t_dumped = now_s();
        let (_, src_state) = frames_of(&bed.src)?;
        assert_eq!(
            src_state, "aborted",
            "network-unlock after a --leave-running dump is abort"
        );
        assert!(
            bed.server.as_mut().unwrap().try_exit().is_none(),
            "the source instance still runs"
        );
        let restore = criu::restore(
            &bed.bins,
            &images,
            &bed.topo.dst_ct,
            &dst_hook,
            &d.join("restore.log"),
            &[],
        );
        match restore {
            Ok((_, pid)) => {
                bed.restored = Some(Adopted {
                    name: "unexpectedly restored".into(),
                    pid,
                });
                bail!("criu restore succeeded although the port was taken");
            }
            Err(e) => println!("[faults_criu] the restore failed as intended: {e:#}"),
        }
        bed.dst.phase(SERVICE, "abort", &[])?;
        let t_failed = now_s();
        let tables = bed.remove_lock_tables()?;
        let (answered, worst) = bed.finish_client()?;
        let (src, dst) = check_lossless(&bed)?;
        assert_eq!(dst.parked, 0, "{dst:?}");
        report(
            "--leave-running dump, restore fails",
            &bed,
            answered,
            worst,
            &format!(
                "dump {:.0} ms (source parked {} frames meanwhile), failed restore and abort {:.0} ms; \
                 source actions {:?}; destination actions {:?}; tables removed {tables:?}",
                (t_dumped - t0) * 1e3,
                src.parked,
                (t_failed - t_dumped) * 1e3,
                actions(&src_phases),
                actions(&dst_phases),
            ),
        )?;
        Ok(())
    })();
    drop(bed);
    result.unwrap_or_else(|e| panic!("{e:#}"));
}
