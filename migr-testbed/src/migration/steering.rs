//! migr's part in a run with steering: the agents on both edge nodes and
//! the service's registration with them, and what CRIU's action scripts
//! run (the announcement, then `migrctl criu-hook`). Apart from the run
//! because a run without steering needs none of it but the idle hook.

use std::path::Path;

use anyhow::Result;

use super::{RunConfig, SERVER_ID, SERVICE};
use crate::{
    Bins,
    agent::{Agent, hook_command},
    topology::{DST_UPLINK, SRC_UPLINK, Topology},
};

/// The agents on both edge nodes (steering on, else none), and the
/// `service add` arguments of each for once the service runs (none when it
/// stays unregistered).
pub(super) type Agents = (Option<(Agent, Agent)>, Option<(Vec<String>, Vec<String>)>);

/// Starts migr-agent on both edge nodes. The service reaches the source at
/// `old` and, once moved, the destination at `new`.
pub(super) fn start_agents(
    bins: &Bins,
    cfg: &RunConfig,
    topo: &Topology,
    d: &Path,
    old: &str,
    new: &str,
    say: &impl Fn(String),
) -> Result<Agents> {
    if !cfg.steering {
        return Ok((None, None));
    }
    let quic = cfg.protocol.quic();
    let udp = cfg.protocol == super::Protocol::Udp;
    let same_ip = cfg.protocol.same_ip();
    let mut registration = None;
    let mode = cfg.agent_xdp_mode.as_str();
    let src = Agent::start(bins, &topo.src, SRC_UPLINK, mode, d, "src")?;
    let dst = Agent::start(bins, &topo.dst, DST_UPLINK, mode, d, "dst")?;
    let mac = topo.router_mac_to_src()?;
    let base = &["service", "add", "--id", "1", "--name", SERVICE][..];
    let forward = ["--forward-iface", SRC_UPLINK, "--next-hop-mac", &mac];
    let quic_rule = ["--server-id", SERVER_ID, "--cid", "8,1,2", "--quic-grease"];
    // How the service's packets are recognised, and where they go once
    // it has left the source: the same address at its new node, or the
    // new address.
    let (rule, rule_extra): (&str, &[&str]) = if quic {
        ("--quic", &quic_rule)
    } else if udp {
        ("--udp", &[])
    } else {
        ("--tcp", &[])
    };
    let moved: [&str; 2] = if same_ip {
        ["--forward-mode", "same-ip"]
    } else {
        ["--forward-to", new]
    };
    let owned = |args: Vec<&str>| args.into_iter().map(String::from).collect::<Vec<_>>();
    let src_args = owned([base, &[rule, old], rule_extra, &moved, &forward].concat());
    let dst_args = owned([base, &[rule, new], rule_extra].concat());
    if cfg.registered {
        // Registered once the service runs: a container is known by
        // its id (podman makes it up).
        registration = Some((src_args, dst_args));
    } else {
        say("migr-agent on both edge nodes, no service registered".into());
    }
    Ok((Some((src, dst)), registration))
}

/// The source's pre-dump step for an explicit QUIC strategy: have the
/// server (PID `server_pid`, listening to `ctl_file`) announce `new`, wait
/// for the client's acknowledgement in `server_log`, and stamp it in
/// `phases`. The agent freezes only after it (seed 000, step 4).
pub(super) fn announce_script(
    new: &str,
    ctl_file: &Path,
    server_log: &Path,
    phases: &Path,
    server_pid: i32,
) -> String {
    format!(
        "printf 'announce {new}\\n' > '{ctl}' && kill -USR1 {server_pid}\n\
         i=0\n\
         until grep -q migration-acknowledged '{log}'; do\n\
         \x20 i=$((i+1)); if [ $i -gt 5000 ]; then echo 'migr testbed: no acknowledgement' >&2; break; fi\n\
         \x20 sleep 0.001\n\
         done\n\
         echo \"acknowledged $(date +%s.%N)\" >> '{phases}'",
        ctl = ctl_file.display(),
        log = server_log.display(),
        phases = phases.display(),
    )
}

/// What the source's and the destination's action scripts run after their
/// own steps: the agent's `migrctl criu-hook`, or without agents one that
/// finds no agent (what an installed hook does on a node without migr).
pub(super) fn hook_commands(
    bins: &Bins,
    agents: Option<&(Agent, Agent)>,
    d: &Path,
    container: bool,
) -> (Option<String>, Option<String>) {
    match agents {
        // Under a runtime the hook finds the service by container.
        Some((src, dst)) => (
            Some(src.hook_command((!container).then_some(SERVICE))),
            Some(dst.hook_command((!container).then_some(SERVICE))),
        ),
        None => {
            let nowhere = d.join("no-agent.sock");
            let idle = hook_command(&bins.ctl, &nowhere, (!container).then_some(SERVICE));
            (Some(idle.clone()), Some(idle))
        }
    }
}
