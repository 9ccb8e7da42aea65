//! `migrctl`: the operators' and orchestrators' command line for migr-agent,
//! and CRIU's action script.
//!
//! Exit codes: 0 success; 1 the agent refused the request (the message says
//! why); 2 bad command-line arguments; 3 the agent could not be reached.

use std::{path::PathBuf, time::Duration};

use clap::{CommandFactory as _, Parser, Subcommand};
use serde_json::{Value, json};

use migr_control::{
    api::{PhaseResult, ServiceRef, ServiceStatus},
    phase::{PhaseCommand, Role},
};

use crate::agent::DEFAULT_SOCKET;

mod add;
mod client;
mod explain;
mod hook;
mod report;

use add::{AddArgs, add_spec};
use hook::{criu_config, criu_hook};
use report::{describe_forward, health, print_phase, print_service, print_table, stats, status};

pub use client::{Client, CtlError};
pub use hook::{CriuHookArgs, HookConfig, parse_hook_config};

pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNREACHABLE: i32 = 3;

#[derive(Parser)]
#[command(
    name = "migrctl",
    version,
    about = "Control migr-agent: services, migration phases, statistics, CRIU hook",
    after_help = "Exit codes: 0 ok, 1 the agent refused the request, 2 bad arguments, 3 agent unreachable.\n\
                  Run without arguments with CRTOOLS_SCRIPT_ACTION set (i.e. as CRIU's --action-script), migrctl acts as `migrctl criu-hook`.\n\
                  Protocol: docs/control-api.md; operations: docs/agent.md."
)]
struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "MIGR_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Give up on the agent after this many milliseconds.
    #[arg(long, global = true, default_value_t = 5_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register, remove and inspect services.
    #[command(subcommand)]
    Service(Box<ServiceCommand>),
    /// Move a service to a migration phase: prepare, freeze, restoring, restored, done, abort.
    #[command(long_about = "Move a service to a migration phase.\n\n\
        Source node: freeze parks the service's packets; restored forwards them to the new node \
        (the parked ones first, in order); done stops forwarding after the drain time; abort \
        passes them to the local service again (the parked ones first).\n\
        Destination node: restoring parks early arrivals; restored passes them to the restored \
        service (the parked ones first).\nprepare only records that a migration is coming.")]
    Phase {
        /// Service id or name.
        service: String,
        /// The phase to enter.
        phase: PhaseCommand,
        /// Which end this node is (only needed for `restored` without a prior freeze/restoring).
        #[arg(long)]
        role: Option<Role>,
        /// For `done` on the source: how long to keep forwarding, in milliseconds.
        #[arg(long)]
        drain_ms: Option<u64>,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counters and state of every service.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// A table of services, their states and counters.
    Status,
    /// Is the agent ready (attached, maps pinned, park ring drained, no
    /// service faulted)? Prints each check; exits 1 if one fails.
    Health {
        #[arg(long)]
        json: bool,
    },
    /// CRIU action script: maps CRTOOLS_SCRIPT_ACTION to a phase of one service.
    #[command(long_about = CRIU_HOOK_HELP)]
    CriuHook(CriuHookArgs),
    /// Make CRIU run migrctl as its action script when a container runtime
    /// (runc, podman) drives it, or undo that; other lines of the file stay as they are.
    #[command(subcommand)]
    CriuConfig(CriuConfigCommand),
    /// Run the frames of a capture file (pcap, Ethernet) through a private
    /// copy of the datapath with the agent's current tables: per frame, the
    /// service, the verdict and the reasons. The agent's counters, parked
    /// frames and state are not touched. Run as root on the node.
    Explain {
        pcap: PathBuf,
        /// Where the agent pinned its maps (migr-agent run --pin-dir).
        #[arg(long, default_value = crate::agent::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Send one raw JSON request line and print the response (for debugging).
    Raw { request: String },
    /// Print a shell completion script for migrctl (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print migrctl's manual page (roff), or with --dir write it and one
    /// page per subcommand (migrctl-service-add.8, ...) there.
    Manpage {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

const CRIU_HOOK_HELP: &str = "CRIU action script: maps CRTOOLS_SCRIPT_ACTION to a phase of one service.\n\n\
  pre-dump, network-lock     -> freeze    (source: park before the tasks stop)\n\
  network-unlock (if frozen) -> abort     (the dump failed or --leave-running: the tasks go on here)\n\
  pre-restore                -> restoring (destination: park early arrivals)\n\
  post-resume                -> restored  (destination: the restored tasks run; replay)\n\
  anything else              -> nothing (the agent is not contacted)\n\n\
The service comes from --service, MIGR_SERVICE, or the config file (--config, MIGR_CRIU_CONFIG, \
or /etc/migr/criu-hook.conf; lines `service = NAME`, `socket = PATH`, `strict = true`, `timeout_ms = N`).\n\
Without a service named there, the hook finds the service registered for the container CRIU \
works on (`migrctl service add --container ID`) from the cgroups of CRTOOLS_INIT_PID, as runc \
and podman run CRIU (`migrctl criu-config install` makes them run this hook); at pre-restore, \
where CRIU gives no PID, setup-namespaces moves the service to restoring instead. A container \
no service is registered for is left alone.\n\
If the agent cannot be reached, or refuses, the hook says so on stderr and exits 0, so the \
migration goes on without migr (as it would without migr installed); with --strict (or \
MIGR_CRIU_STRICT=1, or `strict = true`) it exits 1 and CRIU aborts the dump or restore.";

#[derive(Subcommand)]
enum CriuConfigCommand {
    /// Add `action-script MIGRCTL` (and a marker line) to CRIU's config file.
    Install {
        /// CRIU's config file for RPC mode (runc and podman on runc read this one).
        #[arg(long, default_value = "/etc/criu/runc.conf")]
        file: PathBuf,
        /// The action script (default: this migrctl).
        #[arg(long)]
        script: Option<PathBuf>,
    },
    /// Take out exactly the lines `install` added.
    Remove {
        #[arg(long, default_value = "/etc/criu/runc.conf")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Register a service: its id and name, how its packets are recognised, and where they go when it leaves.
    Add(Box<AddArgs>),
    /// Remove a service (refused while parked frames are stored, unless --force).
    Remove {
        service: String,
        /// Discard parked frames that were not replayed.
        #[arg(long)]
        force: bool,
    },
    /// List the services.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Everything about one service: rules, forward target, state, counters, timeline.
    Show {
        service: String,
        #[arg(long)]
        json: bool,
    },
}

/// migrctl's `main`: returns the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 1 && std::env::var_os("CRTOOLS_SCRIPT_ACTION").is_some() {
        // Installed directly as CRIU's --action-script: no arguments, so the
        // environment and the config file say everything.
        let env_socket = std::env::var_os("MIGR_SOCKET");
        let client = Client::new(
            env_socket
                .clone()
                .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from),
            Duration::from_millis(1000),
        );
        return criu_hook(&CriuHookArgs::default(), &client, env_socket.is_some());
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    let client = Client::new(&cli.socket, Duration::from_millis(cli.timeout_ms));
    let socket_given = std::env::var_os("MIGR_SOCKET").is_some()
        || args
            .iter()
            .any(|a| a == "--socket" || a.starts_with("--socket="));
    let result = match cli.command {
        Command::CriuHook(hook) => {
            // CRIU waits for the hook: a second, unless --timeout-ms says otherwise.
            let client = if args.iter().any(|a| a.starts_with("--timeout-ms")) {
                client
            } else {
                Client::new(&cli.socket, Duration::from_millis(1000))
            };
            return criu_hook(&hook, &client, socket_given);
        }
        Command::Service(cmd) => service(&client, *cmd),
        Command::Phase {
            service,
            phase,
            role,
            drain_ms,
            json,
        } => phase_cmd(&client, &service, phase, role, drain_ms, json),
        Command::Stats { json } => stats(&client, json),
        Command::Status => status(&client),
        Command::Health { json } => health(&client, json),
        Command::Explain {
            pcap,
            pin_dir,
            json,
        } => explain::explain(&client, &pcap, &pin_dir, json),
        Command::Raw { request } => client.raw(&request).map(|line| print!("{line}")),
        Command::CriuConfig(cmd) => criu_config(cmd),
        Command::Completions { shell } => {
            crate::shell_files::completions(Cli::command(), shell, &mut std::io::stdout())
                .map_err(|e| CtlError::refused(format!("{e:#}")))
        }
        Command::Manpage { dir } => write_manpages(dir.as_deref()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("migrctl: {}", e.message);
            e.code
        }
    }
}

/// `migrctl manpage [--dir DIR]`.
fn write_manpages(dir: Option<&std::path::Path>) -> Result<(), CtlError> {
    let written = match dir {
        None => {
            crate::shell_files::manpage(Cli::command(), &mut std::io::stdout()).map(|()| vec![])
        }
        Some(dir) => crate::shell_files::manpages(Cli::command(), dir),
    };
    for page in written.map_err(|e| CtlError::refused(format!("{e:#}")))? {
        println!("{}", page.display());
    }
    Ok(())
}

fn service_arg(s: &str) -> Value {
    serde_json::to_value(ServiceRef::parse(s)).unwrap_or(Value::Null)
}

fn service(client: &Client, cmd: ServiceCommand) -> Result<(), CtlError> {
    match cmd {
        ServiceCommand::Add(a) => {
            let json_out = a.json;
            let spec = add_spec(*a)?;
            let v = client.call(
                "service.add",
                serde_json::to_value(&spec).unwrap_or_default(),
            )?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                let st: ServiceStatus = from(v)?;
                println!(
                    "added service {} ({}): {} rule(s), {}",
                    st.spec.id,
                    st.spec.name,
                    st.spec.rules.len(),
                    describe_forward(st.spec.forward.as_ref())
                );
            }
            Ok(())
        }
        ServiceCommand::Remove { service, force } => {
            let v = client.call(
                "service.remove",
                json!({ "service": service_arg(&service), "force": force }),
            )?;
            println!(
                "removed service {} ({}){}",
                v["id"],
                v["name"].as_str().unwrap_or("?"),
                match v["discarded_frames"].as_u64() {
                    Some(n) if n > 0 => format!(", {n} parked frames discarded"),
                    _ => String::new(),
                }
            );
            Ok(())
        }
        ServiceCommand::List { json } => {
            let v = client.call("service.list", Value::Null)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            vec![
                                s["id"].to_string(),
                                s["name"].as_str().unwrap_or("").into(),
                                s["state"].as_str().unwrap_or("").into(),
                                s["datapath"].as_str().unwrap_or("").into(),
                                s["rules"].to_string(),
                                s["pending_frames"].to_string(),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(
                &["ID", "NAME", "STATE", "DATAPATH", "RULES", "PARKED"],
                &rows,
            );
            Ok(())
        }
        ServiceCommand::Show { service, json } => {
            let v = client.call("service.show", json!({ "service": service_arg(&service) }))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            let st: ServiceStatus = from(v)?;
            print_service(&st);
            Ok(())
        }
    }
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, CtlError> {
    serde_json::from_value(v)
        .map_err(|e| CtlError::refused(format!("unexpected answer from the agent: {e}")))
}

fn phase_cmd(
    client: &Client,
    service: &str,
    phase: PhaseCommand,
    role: Option<Role>,
    drain_ms: Option<u64>,
    json_out: bool,
) -> Result<(), CtlError> {
    let mut args = json!({ "service": service_arg(service), "phase": phase });
    if let Some(r) = role {
        args["role"] = json!(r);
    }
    if let Some(d) = drain_ms {
        args["drain_ms"] = json!(d);
    }
    let v = client.call("phase", args)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let r: PhaseResult = from(v)?;
    print_phase(&r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
