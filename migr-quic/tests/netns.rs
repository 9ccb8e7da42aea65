//! Real sockets across network namespaces (privileged: root, or CAP_NET_ADMIN
//! plus CAP_SYS_ADMIN, and iproute2). Two namespaces joined by a veth pair;
//! the server's side carries OLD and NEW. In the middle of a back-to-back run
//! the server becomes unreachable at OLD (`ip addr del`) and the client must
//! follow it to NEW, with each strategy. Everything this test creates is named
//! `mq-<pid>-...` and is removed on success and failure alike.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const OLD: &str = "10.77.1.1";
const NEW: &str = "10.77.2.1";
const NOWHERE: &str = "10.77.3.1";
const CLIENT: &str = "10.77.0.2";
const PORT: u16 = 4433;
const REQUESTS: usize = 1500;
const MOVE_AFTER: usize = 300;

/// Namespaces, processes and files of one test; torn down on drop.
struct Testbed {
    server_ns: String,
    client_ns: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(args: &[&str]) -> Output {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("this test needs iproute2's `ip` (apt-get install iproute2): {e}")
    });
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Testbed {
    fn new(label: &str) -> Self {
        let prefix = format!("mq-{}-{label}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let server_ns = format!("{prefix}-s");
        let client_ns = format!("{prefix}-c");
        let add = Command::new("ip")
            .args(["netns", "add", &server_ns])
            .output()
            .unwrap_or_else(|e| {
                panic!("this test needs iproute2's `ip` (apt-get install iproute2): {e}")
            });
        if !add.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "this test needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network \
                 namespaces; `ip netns add` failed: {}",
                String::from_utf8_lossy(&add.stderr).trim()
            );
        }
        // From here on Drop cleans up, whatever fails.
        let bed = Self {
            server_ns,
            client_ns,
            dir,
            children: Vec::new(),
        };
        let (s, c) = (bed.server_ns.as_str(), bed.client_ns.as_str());
        ip(&["netns", "add", c]);
        ip(&[
            "-n", s, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", c,
        ]);
        // The server's addresses are /32s: deleting a subnet's primary address
        // would take the secondaries in that subnet with it.
        for (ns, dev, addresses) in [
            (s, "vs", vec![format!("{OLD}/32"), format!("{NEW}/32")]),
            (c, "vc", vec![format!("{CLIENT}/16")]),
        ] {
            for address in &addresses {
                ip(&["-n", ns, "addr", "add", address, "dev", dev]);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", s, "route", "add", "10.77.0.0/16", "dev", "vs"]);
        bed
    }

    fn spawn(&mut self, ns: &str, args: &[String], stdout: Stdio) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_migr-echo")])
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning migr-echo");
        self.children.push(child);
        self.children.len() - 1
    }
}

/// Lines a child prints, read on a thread so the child never blocks.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_line(rx: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no `{prefix}` line from the server: {e}"),
        }
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the client did not finish in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
    }
    text
}

struct Row {
    service_ms: f64,
    server: String,
}

fn read_csv(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 5, "{line}");
            Row {
                service_ms: fields[3].parse().unwrap(),
                server: fields[4].to_string(),
            }
        })
        .collect()
}

fn follow_the_server(strategy: &str) {
    let mut bed = Testbed::new(strategy);
    let old = format!("{OLD}:{PORT}");
    let new = format!("{NEW}:{PORT}");
    let cert = bed.dir.join("cert.der");
    let csv = bed.dir.join("requests.csv");
    let server_ns = bed.server_ns.clone();
    let client_ns = bed.client_ns.clone();

    let mut server_args: Vec<String> = vec![
        "server".into(),
        "--listen".into(),
        old.clone(),
        "--cert-out".into(),
        cert.display().to_string(),
        "--after-requests".into(),
        MOVE_AFTER.to_string(),
    ];
    let explicit = strategy != "poa";
    if explicit {
        server_args.extend(["--migrate-to".into(), new.clone()]);
    } else {
        server_args.extend([
            "--listen".into(),
            new.clone(),
            "--pool".into(),
            format!("{NOWHERE}:{PORT},{new}"),
        ]);
    }
    let server = bed.spawn(&server_ns, &server_args, Stdio::piped());
    let server_lines = lines(&mut bed.children[server]);
    wait_for_line(&server_lines, "listening", Duration::from_secs(10));

    let client_args: Vec<String> = [
        "client",
        "--server",
        &old,
        "--ca",
        &cert.display().to_string(),
        "--strategy",
        strategy,
        "--mode",
        "back-to-back",
        "--count",
        &REQUESTS.to_string(),
        "--csv",
        &csv.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let client = bed.spawn(&client_ns, &client_args, Stdio::null());

    // The orchestrator's part: move only once the client acknowledged the
    // announcement (explicit strategies), or at the milestone (PoA).
    let cue = if explicit {
        "migration-acknowledged"
    } else {
        "milestone"
    };
    let line = wait_for_line(&server_lines, cue, Duration::from_secs(30));
    let moved = Instant::now();
    ip(&[
        "-n",
        &server_ns,
        "addr",
        "del",
        &format!("{OLD}/32"),
        "dev",
        "vs",
    ]);

    let status = wait_with_timeout(&mut bed.children[client], Duration::from_secs(60));
    let client_stderr = stderr_of(&mut bed.children[client]);
    assert!(status.success(), "client failed: {client_stderr}");
    let rows = read_csv(&csv);
    assert_eq!(rows.len(), REQUESTS, "every request was answered");
    assert_eq!(rows.first().unwrap().server, old);
    assert_eq!(
        rows.last().unwrap().server,
        new,
        "the client followed the server"
    );
    let at_old = rows.iter().filter(|r| r.server == old).count();
    assert!(at_old >= MOVE_AFTER / 2, "the switch happened mid-run");
    let worst = rows.iter().map(|r| r.service_ms).fold(0.0, f64::max);
    let mut sorted: Vec<f64> = rows.iter().map(|r| r.service_ms).collect();
    sorted.sort_by(f64::total_cmp);
    let summary = client_stderr
        .lines()
        .find(|l| l.starts_with("summary"))
        .unwrap_or_else(|| panic!("the client printed no summary line:\n{client_stderr}"));
    assert!(
        summary.contains("loss_detected="),
        "the summary says whether a loss was detected: {summary}"
    );
    println!(
        "[netns {strategy}] server said `{line}`; {at_old} requests at OLD, {} at NEW; \
         median {:.2} ms, worst {worst:.2} ms; moved {:?} before the client finished; {summary}",
        REQUESTS - at_old,
        sorted[sorted.len() / 2],
        moved.elapsed(),
    );
    match strategy {
        "p-explicit" => assert!(
            summary.contains("loss_detected=0"),
            "P-Explicit moved without waiting for a loss: {summary}"
        ),
        "r-explicit" => assert!(
            !summary.contains("loss_detected=0"),
            "R-Explicit moved after a loss: {summary}"
        ),
        _ => {}
    }
    if !explicit {
        assert!(
            client_stderr.contains("ProbingStarted") && client_stderr.contains(NOWHERE),
            "PoA probed the whole pool: {client_stderr}"
        );
    }
}

#[test]
fn netns_p_explicit_follows_the_server() {
    follow_the_server("p-explicit");
}

#[test]
fn netns_r_explicit_follows_the_server() {
    follow_the_server("r-explicit");
}

#[test]
fn netns_poa_follows_the_server() {
    follow_the_server("poa");
}
