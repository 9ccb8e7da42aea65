//! `cargo xtask demo`: two namespaces joined by a veth pair; migr-agent is
//! attached on one side, UDP traffic comes from the other, the counters are
//! printed, and everything is removed again.

use std::process::{Child, Command};

use anyhow::{Context as _, Result};

use crate::{run, setup};

struct Topology {
    namespaces: Vec<String>,
    agent: Option<Child>,
    /// The agent's control socket and state, removed with the namespaces.
    state_dir: std::path::PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        println!(
            "[demo] cleaned up namespaces {}",
            self.namespaces.join(", ")
        );
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run::status(Command::new("ip").args(args))
}

pub fn demo() -> Result<()> {
    setup::setup()?;
    run::status(run::cargo().args(["build", "--package", "migr-user", "--bins"]))?;
    let agent_bin = run::workspace_root().join("target/debug/migr-agent");

    let pid = std::process::id();
    let (client, node) = (
        format!("migr-demo{pid}-client"),
        format!("migr-demo{pid}-node"),
    );
    let mut topo = Topology {
        namespaces: vec![],
        agent: None,
        // Not the agent's default /run/migr: the demo must neither meet a real agent's
        // socket and state nor leave its own behind.
        state_dir: std::path::PathBuf::from(format!("/run/migr-demo{pid}")),
    };
    let state_dir = topo.state_dir.display().to_string();
    let socket = format!("{state_dir}/agent.sock");
    for ns in [&client, &node] {
        ip(&["netns", "add", ns])?;
        topo.namespaces.push(ns.clone());
    }
    ip(&[
        "link", "add", "name", "veth-c", "netns", &client, "type", "veth", "peer", "name",
        "veth-n", "netns", &node,
    ])?;
    ip(&[
        "-n",
        &client,
        "addr",
        "add",
        "10.250.0.1/24",
        "dev",
        "veth-c",
    ])?;
    ip(&["-n", &node, "addr", "add", "10.250.0.2/24", "dev", "veth-n"])?;
    for (ns, dev) in [(&client, "veth-c"), (&node, "veth-n")] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    println!("[demo] namespaces {client} and {node}, joined by veth-c <-> veth-n");

    let agent = Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(&agent_bin)
        .args([
            "run",
            "--iface",
            "veth-n",
            "--interval",
            "3",
            "--count",
            "1",
            "--state-dir",
            &state_dir,
            "--socket",
            &socket,
        ])
        .spawn()
        .context("starting migr-agent")?;
    topo.agent = Some(agent);
    std::thread::sleep(std::time::Duration::from_millis(1000));

    println!("[demo] sending 100 UDP datagrams and 3 pings from the client namespace");
    run::status(Command::new("ip").args([
        "netns",
        "exec",
        &client,
        "bash",
        "-c",
        "for i in $(seq 100); do echo hello > /dev/udp/10.250.0.2/9999; done",
    ]))?;
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-q",
            "10.250.0.2",
        ])
        .stdout(std::process::Stdio::null())
        .status();
    let status = topo.agent.as_mut().map(|a| a.wait()).transpose()?;
    topo.agent = None;
    if let Some(status) = status
        && !status.success()
    {
        anyhow::bail!("migr-agent exited with {status}");
    }
    println!("[demo] the agent's counters above show the UDP datagrams it saw on veth-n");
    Ok(())
}
