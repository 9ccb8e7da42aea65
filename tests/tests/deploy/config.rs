//! The agent's config file through the real `migr-agent` binary.

use std::process::Command;

use migr_testkit::agent_harness::{bins, http_get};
use serde_json::Value;

use crate::scratch::{IFACE, Scratch, VethNs, ctl, read, start_agent, stop_agent};

/// A file with a value out of range and one with an unknown key: the agent
/// refuses each before touching anything, naming the file, line and
/// column, and the reason.
#[test]
fn agent_refuses_a_bad_config_file_naming_line_and_reason() {
    let scratch = Scratch::new("config-bad");
    let cases = [
        (
            "iface = [\"eth0\"]\n# the lease\nlease-ms = 5\n",
            ":3:12: 5 is out of range: must be from 100 to 3600000",
        ),
        (
            "iface = [\"eth0\"]\nlease_ms = 500\n",
            ":2:1: unknown field `lease_ms`",
        ),
        ("drain-ms = \"2s\"\n", ":1:12: invalid type: string"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = scratch.dir.join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(&bins().agent)
            .args(["run", "--config"])
            .arg(&file)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run migr-agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{text:?} was not refused: {stderr}"
        );
        let wanted = format!("{}{expected}", file.display());
        assert!(
            stderr.contains(&wanted),
            "{text:?}: expected {wanted:?} in:\n{stderr}"
        );
    }
    let missing = scratch.dir.join("absent.toml");
    let out = Command::new(&bins().agent)
        .args(["run", "--iface", "eth0", "--config"])
        .arg(&missing)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("absent.toml"),
        "{stderr}"
    );
}

/// A running agent takes its interface, metrics address and lease from the
/// file, and its socket and pin directory from the flags that override the
/// file's.
#[test]
fn running_agent_uses_the_file_and_flags_override_it() {
    let net = VethNs::new("cfg");
    let mut scratch = Scratch::new("config-run");
    let file_socket = scratch.dir.join("file.sock");
    let flag_socket = scratch.dir.join("flag.sock");
    let file_pins = scratch.pin_dir("file");
    let flag_pins = scratch.pin_dir("flag");
    let state_dir = scratch.dir.join("state");
    let config = scratch.dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "iface = [\"{IFACE}\"]\nsocket = \"{}\"\npin-dir = \"{}\"\nstate-dir = \"{}\"\nmetrics = \"127.0.0.1:19471\"\n",
            file_socket.display(),
            file_pins.display(),
            state_dir.display()
        ),
    )
    .unwrap();
    let log = scratch.dir.join("agent.log");
    let (flag_socket_s, flag_pins_s, config_s) = (
        flag_socket.to_str().unwrap(),
        flag_pins.to_str().unwrap(),
        config.to_str().unwrap(),
    );
    let args = [
        "run",
        "--config",
        config_s,
        "--socket",
        flag_socket_s,
        "--pin-dir",
        flag_pins_s,
    ];
    let agent = start_agent(
        &net.ns,
        &bins().agent,
        &args,
        &bins().ctl,
        &flag_socket,
        &log,
    );

    assert!(!file_socket.exists(), "the file's socket was overridden");
    let stats = ctl(&bins().ctl, &flag_socket, &["stats", "--json"]);
    assert!(stats.status.success());
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        stats["agent"]["interfaces"],
        serde_json::json!([IFACE]),
        "from the file"
    );
    assert_eq!(
        stats["agent"]["pin_dir"], flag_pins_s,
        "the flag's pin directory"
    );
    assert!(
        flag_pins.join(format!("link-{IFACE}")).exists(),
        "pinned where the flag said"
    );
    assert!(!file_pins.exists(), "nothing pinned where the file said");
    let (status, metrics) = http_get(&net.ns, "127.0.0.1:19471", "/metrics")
        .unwrap_or_else(|e| panic!("metrics on the file's address: {e}\n{}", read(&log)));
    assert!(status.starts_with("HTTP/1.0 200"), "{status}\n{metrics}");
    assert!(
        read(&log).contains("read the config file"),
        "{}",
        read(&log)
    );
    stop_agent(agent, &log);
}
