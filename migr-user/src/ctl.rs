//! `migrctl`: the operators' and orchestrators' command line for migr-agent,
//! and CRIU's action script.
//!
//! Exit codes: 0 success; 1 the agent refused the request (the message says
//! why); 2 bad command-line arguments; 3 the agent could not be reached.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::agent::DEFAULT_SOCKET;
use migr_control::{
    api::{
        self, CidSpec, ForwardModeSpec, ForwardSpec, MatchRule, ParkLimit, PhaseResult, RuleProto,
        ServiceRef, ServiceSpec, ServiceStatus, Stats,
    },
    phase::{PhaseCommand, Role},
};

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
    /// CRIU action script: maps CRTOOLS_SCRIPT_ACTION to a phase of one service.
    #[command(long_about = CRIU_HOOK_HELP)]
    CriuHook(CriuHookArgs),
    /// Make CRIU run migrctl as its action script when a container runtime
    /// (runc, podman) drives it, or undo that; other lines of the file stay as they are.
    #[command(subcommand)]
    CriuConfig(CriuConfigCommand),
    /// Send one raw JSON request line and print the response (for debugging).
    Raw { request: String },
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    AddressChanging,
    SameIp,
}

#[derive(Args)]
struct AddArgs {
    /// Service id, 1..4095.
    #[arg(long, required_unless_present = "from_json")]
    id: Option<u32>,
    /// Service name (letters, digits, - _ .).
    #[arg(long, required_unless_present = "from_json")]
    name: Option<String>,
    /// Match UDP to IP:PORT (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    udp: Vec<SocketAddr>,
    /// Match TCP to IP:PORT (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    tcp: Vec<SocketAddr>,
    /// Match QUIC to IP:PORT, by server id (repeatable; needs --cid).
    #[arg(long, value_name = "IP:PORT")]
    quic: Vec<SocketAddr>,
    /// QUIC server id of this service (repeatable).
    #[arg(long = "server-id", value_name = "ID")]
    server_ids: Vec<u32>,
    /// QUIC CID layout: LEN,OFFSET,ID_LEN (CID length, server id offset, server id length).
    #[arg(long, value_name = "LEN,OFFSET,ID_LEN", value_parser = parse_cid)]
    cid: Option<CidSpec>,
    /// The QUIC server accepts a greased fixed bit (RFC 9287).
    #[arg(long)]
    quic_grease: bool,
    /// Match MPTCP to IP:PORT and learn its connections' tokens, so joins to any address follow (repeatable).
    #[arg(long, value_name = "IP:PORT")]
    mptcp: Vec<SocketAddr>,
    /// Address-changing forward: the service's new IP:PORT (port 0 keeps the original).
    #[arg(long, value_name = "IP:PORT")]
    forward_to: Option<SocketAddr>,
    /// Egress interface toward the new node.
    #[arg(long, value_name = "IF")]
    forward_iface: Option<String>,
    /// MAC of the next hop (default: from the neighbour table).
    #[arg(long, value_name = "MAC")]
    next_hop_mac: Option<String>,
    /// IP of the next hop, for the neighbour-table lookup (default: the --forward-to address).
    #[arg(long, value_name = "IP")]
    next_hop: Option<IpAddr>,
    /// address-changing (new IP/port, checksums updated) or same-ip (only MACs change).
    #[arg(long, value_enum, default_value = "address-changing")]
    forward_mode: ModeArg,
    /// Bound of the parked-frame store, in frames (default: the agent's).
    #[arg(long)]
    park_limit_frames: Option<u64>,
    /// Bound of the parked-frame store, in bytes (default: the agent's).
    #[arg(long)]
    park_limit_bytes: Option<u64>,
    /// Default drain time of `done`, in milliseconds.
    #[arg(long)]
    drain_ms: Option<u64>,
    /// Pace of backlog replays in frames per second, 0 for unpaced (default: the agent's).
    #[arg(long)]
    replay_rate: Option<u64>,
    /// The container it runs in (the runtime's container id, or a short id
    /// of 12+ hex digits): `migrctl criu-hook` under runc or podman finds the
    /// service by it.
    #[arg(long, value_name = "ID")]
    container: Option<String>,
    /// When restored at its new node, announce the service's addresses
    /// there (gratuitous ARP / unsolicited NA, 5 rounds over 0.5 s): for
    /// same-IP moves on an L2 segment.
    #[arg(long)]
    announce: bool,
    /// Take the whole spec as JSON from FILE (or - for stdin), as in docs/control-api.md.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "name"])]
    from_json: Option<PathBuf>,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_cid(s: &str) -> Result<CidSpec, String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [len, offset, id_len] = parts[..] else {
        return Err(format!("{s:?}: expected LEN,OFFSET,ID_LEN, e.g. 8,1,2"));
    };
    let num = |p: &str| {
        p.trim()
            .parse::<u8>()
            .map_err(|_| format!("{s:?}: {p:?} is not a number 0..255"))
    };
    Ok(CidSpec {
        len: num(len)?,
        offset: num(offset)?,
        id_len: num(id_len)?,
    })
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub struct CtlError {
    pub code: i32,
    pub message: String,
}

impl CtlError {
    fn refused(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_REFUSED,
            message: message.into(),
        }
    }
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    fn unreachable(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_UNREACHABLE,
            message: message.into(),
        }
    }
}

/// A connection to the agent.
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// Sends one raw request line, returns the response line.
    pub fn raw(&self, line: &str) -> Result<String, CtlError> {
        let unreachable = |e: std::io::Error| {
            CtlError::unreachable(format!(
                "cannot reach migr-agent at {}: {e}",
                self.socket.display()
            ))
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        let mut out = line.trim_end().as_bytes().to_vec();
        out.push(b'\n');
        stream.write_all(&out).map_err(unreachable)?;
        let mut reader = BufReader::new(stream);
        let mut response = String::new();
        reader.read_line(&mut response).map_err(|e| {
            CtlError::unreachable(format!(
                "no answer from migr-agent at {} within {} ms: {e}",
                self.socket.display(),
                self.timeout.as_millis()
            ))
        })?;
        if response.is_empty() {
            return Err(CtlError::unreachable(format!(
                "migr-agent at {} closed the connection without an answer",
                self.socket.display()
            )));
        }
        Ok(response)
    }

    /// Sends `op` with `args`; returns the result, or the agent's error.
    pub fn call(&self, op: &str, args: Value) -> Result<Value, CtlError> {
        let mut req = json!({ "v": api::PROTOCOL_VERSION, "op": op });
        if !args.is_null() {
            req["args"] = args;
        }
        let line = self.raw(&req.to_string())?;
        let resp: api::Response = serde_json::from_str(&line)
            .map_err(|e| CtlError::refused(format!("unreadable answer from the agent: {e}")))?;
        if resp.ok {
            Ok(resp.result.unwrap_or(Value::Null))
        } else {
            let e = resp
                .error
                .unwrap_or_else(|| api::ApiError::bad("error without details"));
            Err(CtlError::refused(e.to_string()))
        }
    }
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
        Command::Raw { request } => client.raw(&request).map(|line| print!("{line}")),
        Command::CriuConfig(cmd) => criu_config(cmd),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("migrctl: {}", e.message);
            e.code
        }
    }
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

fn add_spec(a: AddArgs) -> Result<ServiceSpec, CtlError> {
    if let Some(path) = a.from_json {
        let text = if path == Path::new("-") {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(&path)
        }
        .map_err(|e| CtlError::usage(format!("reading {}: {e}", path.display())))?;
        return serde_json::from_str(&text)
            .map_err(|e| CtlError::usage(format!("{}: {e}", path.display())));
    }
    let mut rules = Vec::new();
    let plain = |proto, addrs: &[SocketAddr], rules: &mut Vec<MatchRule>| {
        for addr in addrs {
            rules.push(MatchRule {
                proto,
                addr: *addr,
                server_ids: Vec::new(),
                cid: None,
                grease: false,
            });
        }
    };
    plain(RuleProto::Udp, &a.udp, &mut rules);
    plain(RuleProto::Tcp, &a.tcp, &mut rules);
    plain(RuleProto::Mptcp, &a.mptcp, &mut rules);
    if a.quic.is_empty() && (!a.server_ids.is_empty() || a.cid.is_some() || a.quic_grease) {
        return Err(CtlError::usage(
            "--server-id, --cid and --quic-grease need a --quic address",
        ));
    }
    for addr in &a.quic {
        rules.push(MatchRule {
            proto: RuleProto::Quic,
            addr: *addr,
            server_ids: a.server_ids.clone(),
            cid: a.cid,
            grease: a.quic_grease,
        });
    }
    let forward = match (a.forward_iface, a.forward_to) {
        (None, None) if a.next_hop_mac.is_none() && a.next_hop.is_none() => None,
        (None, _) => {
            return Err(CtlError::usage(
                "a forward target needs --forward-iface (the egress interface toward the new node)",
            ));
        }
        (Some(iface), addr) => Some(ForwardSpec {
            mode: match a.forward_mode {
                ModeArg::AddressChanging => ForwardModeSpec::AddressChanging,
                ModeArg::SameIp => ForwardModeSpec::SameIp,
            },
            addr,
            iface,
            next_hop_mac: a.next_hop_mac,
            next_hop: a.next_hop,
        }),
    };
    let park_limit = match (a.park_limit_frames, a.park_limit_bytes) {
        (None, None) => None,
        (f, b) => Some(ParkLimit {
            frames: f.unwrap_or(65_536),
            bytes: b.unwrap_or(64 << 20),
        }),
    };
    let spec = ServiceSpec {
        id: a.id.unwrap_or(0),
        name: a.name.unwrap_or_default(),
        rules,
        forward,
        park_limit,
        drain_ms: a.drain_ms,
        replay_rate: a.replay_rate,
        container: a.container,
        announce: a.announce,
    };
    // Catch what the agent would refuse before sending (same checks).
    api::validate_spec(&spec).map_err(|e| CtlError::usage(e.message))?;
    Ok(spec)
}

fn describe_forward(f: Option<&ForwardSpec>) -> String {
    match f {
        None => "no forward target".into(),
        Some(f) => {
            let mode = match f.mode {
                ForwardModeSpec::AddressChanging => "address-changing",
                ForwardModeSpec::SameIp => "same-ip",
            };
            match f.addr {
                Some(a) => format!("forwards to {a} via {} ({mode})", f.iface),
                None => format!("forwards via {} ({mode})", f.iface),
            }
        }
    }
}

/// A forward link state (`ServiceStatus::forward_link`) in words.
fn describe_link(state: &str) -> &str {
    match state {
        "no-carrier" => "no carrier",
        "missing" => "missing (gone or re-created)",
        other => other,
    }
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

fn print_phase(r: &PhaseResult) {
    if r.unchanged {
        println!("{}: already {} (datapath {})", r.service, r.to, r.datapath);
    } else {
        println!(
            "{}: {} -> {} (datapath {}) in {} us",
            r.service, r.from, r.to, r.datapath, r.latency_us
        );
    }
}

fn stats(client: &Client, json_out: bool) -> Result<(), CtlError> {
    let v = client.call("stats", Value::Null)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let s: Stats = from(v)?;
    println!(
        "migr-agent {} on {} (pins {}), up {} s, park ring backlog {} bytes",
        s.agent.version,
        s.agent.interfaces.join(", "),
        s.agent.pin_dir,
        s.agent.uptime_s,
        s.agent.ring_backlog_bytes
    );
    let nonzero: Vec<String> = s
        .reasons
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    println!(
        "datapath reasons: {}",
        if nonzero.is_empty() {
            "none".into()
        } else {
            nonzero.join(" ")
        }
    );
    for st in &s.services {
        println!();
        print_service(st);
    }
    Ok(())
}

fn print_service(st: &ServiceStatus) {
    println!("service {} ({})", st.spec.id, st.spec.name);
    println!(
        "  state     {}{}{}, datapath {}",
        st.state,
        st.role
            .map(|r| format!(" ({})", r.name()))
            .unwrap_or_default(),
        st.replay_stage
            .as_ref()
            .map(|s| format!(", replay {s}"))
            .unwrap_or_default(),
        st.datapath
    );
    for r in &st.spec.rules {
        let extra = if r.proto == RuleProto::Quic {
            format!(
                " server ids {:?} cid {:?}{}",
                r.server_ids,
                r.cid.map(|c| (c.len, c.offset, c.id_len)),
                if r.grease { " grease" } else { "" }
            )
        } else {
            String::new()
        };
        println!(
            "  match     {} {}{extra}",
            serde_json::to_value(r.proto)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.addr
        );
    }
    println!(
        "  forward   {}{}",
        describe_forward(st.spec.forward.as_ref()),
        st.forward_link
            .as_deref()
            .map(|l| format!(", link {}", describe_link(l)))
            .unwrap_or_default()
    );
    let v: Vec<String> = st
        .verdicts
        .iter()
        .filter(|(_, c)| c.packets > 0)
        .map(|(k, c)| format!("{k}={}", c.packets))
        .collect();
    println!(
        "  verdicts  {}",
        if v.is_empty() {
            "none".into()
        } else {
            v.join(" ")
        }
    );
    let p = &st.parked;
    println!(
        "  parked    {} pending ({} bytes), {} stored, {} overflowed (limit {} frames / {} bytes)",
        p.pending_frames,
        p.pending_bytes,
        p.stored_frames,
        p.overflow_frames,
        p.limit_frames,
        p.limit_bytes
    );
    let r = &st.replay;
    println!(
        "  replayed  {} frames ({} bytes), {} failed, {} replays; last {} frames in {:.1} ms ({:.0} frames/s){}",
        r.replayed_frames,
        r.replayed_bytes,
        r.failed_frames,
        r.replays,
        r.last_frames,
        r.last_duration_us as f64 / 1e3,
        r.last_rate_fps,
        if r.uncertain_frames > 0 {
            format!(", {} uncertain after a kill", r.uncertain_frames)
        } else {
            String::new()
        }
    );
    if r.socket_waits + r.socket_drops > 0 {
        println!(
            "  sockets   the replay waited {} times for the service to read; its sockets dropped {} datagrams (buffer full)",
            r.socket_waits, r.socket_drops
        );
    }
    if let Some(l) = st.last_phase_latency_us {
        println!("  latency   last phase change reached the datapath in {l} us");
    }
    if !st.timeline.is_empty() {
        println!("  timeline");
        let start = st.timeline[0].at_ms;
        for e in &st.timeline {
            println!(
                "    +{:>8.3} s  {:<16} ({})",
                (e.at_ms - start) as f64 / 1e3,
                e.what,
                e.cause
            );
        }
    }
}

fn status(client: &Client) -> Result<(), CtlError> {
    let s: Stats = from(client.call("stats", Value::Null)?)?;
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|st| {
            let c = |k: &str| st.verdicts.get(k).map_or(0, |c| c.packets).to_string();
            vec![
                st.spec.id.to_string(),
                st.spec.name.clone(),
                match st.replay_stage.as_deref() {
                    Some(stage) => format!("{} ({stage})", st.state),
                    None => st.state.clone(),
                },
                st.datapath.clone(),
                c("pass"),
                c("park"),
                c("forward"),
                c("drop"),
                (st.verdicts.get("park_failed").map_or(0, |c| c.packets)
                    + st.verdicts.get("forward_failed").map_or(0, |c| c.packets))
                .to_string(),
                st.parked.pending_frames.to_string(),
                st.parked.overflow_frames.to_string(),
                st.replay.replayed_frames.to_string(),
                st.last_phase_latency_us
                    .map(|l| format!("{l}us"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!(
        "agent {} on {} up {}s, ring backlog {} bytes",
        s.agent.version,
        s.agent.interfaces.join(","),
        s.agent.uptime_s,
        s.agent.ring_backlog_bytes
    );
    print_table(
        &[
            "ID", "NAME", "STATE", "DATAPATH", "PASS", "PARK", "FORWARD", "DROP", "FAILED",
            "PENDING", "OVERFLOW", "REPLAYED", "LATENCY",
        ],
        &rows,
    );
    for st in &s.services {
        if let (Some(link), Some(f)) = (st.forward_link.as_deref(), st.spec.forward.as_ref())
            && link != "up"
        {
            let (problem, fate) = match link {
                "no-carrier" => ("has no carrier", "dropped by the kernel"),
                "down" => ("is down", "dropped by the kernel"),
                _ => (
                    "is missing (gone, or re-created since the service was added)",
                    "counted forward_failed",
                ),
            };
            println!(
                "warning: {}: forward interface {} {problem}: {}",
                st.spec.name,
                f.iface,
                if st.datapath.starts_with("forward") {
                    format!("the frames it forwards now are lost ({fate})")
                } else {
                    "it cannot forward (restored is refused, parked frames stay parked)".into()
                }
            );
        }
    }
    Ok(())
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

// ---------------------------------------------------------------------------
// CRIU config file

fn criu_config(cmd: CriuConfigCommand) -> Result<(), CtlError> {
    let (file, script) = match cmd {
        CriuConfigCommand::Install { file, script } => {
            let script = match script {
                Some(s) => s,
                None => std::env::current_exe()
                    .map_err(|e| CtlError::refused(format!("where this migrctl is: {e}")))?,
            };
            let meta = std::fs::metadata(&script)
                .map_err(|e| CtlError::usage(format!("{}: {e}", script.display())))?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return Err(CtlError::usage(format!(
                    "{}: not an executable file",
                    script.display()
                )));
            }
            let script = script
                .to_str()
                .ok_or_else(|| CtlError::usage("the script's path is not UTF-8"))?
                .to_string();
            (file, Some(script))
        }
        CriuConfigCommand::Remove { file } => (file, None),
    };
    let done = crate::criu_config::apply(&file, script.as_deref()).map_err(CtlError::refused)?;
    println!("{done}");
    Ok(())
}

// ---------------------------------------------------------------------------
// CRIU hook

#[derive(Args, Default)]
pub struct CriuHookArgs {
    /// The service to drive (default: MIGR_SERVICE, or `service` in the config file).
    #[arg(long)]
    service: Option<String>,
    /// Config file (default: MIGR_CRIU_CONFIG, or /etc/migr/criu-hook.conf if it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Fail (exit 1, which makes CRIU abort) when the agent is unreachable or refuses.
    #[arg(long)]
    strict: bool,
}

/// The hook's settings, merged from flags, environment and the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookConfig {
    pub service: Option<String>,
    pub socket: Option<PathBuf>,
    pub strict: bool,
    pub timeout_ms: Option<u64>,
}

/// Parses the `key = value` config file (comments with #).
pub fn parse_hook_config(text: &str) -> Result<HookConfig, String> {
    let mut c = HookConfig::default();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected key = value", n + 1));
        };
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        match k {
            "service" => c.service = Some(v.to_string()),
            "socket" => c.socket = Some(PathBuf::from(v)),
            "strict" => {
                c.strict = match v {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => return Err(format!("line {}: strict must be true or false", n + 1)),
                }
            }
            "timeout_ms" => {
                c.timeout_ms = Some(
                    v.parse()
                        .map_err(|_| format!("line {}: timeout_ms must be a number", n + 1))?,
                )
            }
            other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
        }
    }
    Ok(c)
}

/// The CRIU actions that may change a phase (all others return at once).
pub const HOOKED_ACTIONS: [&str; 5] = [
    "pre-dump",
    "network-lock",
    "network-unlock",
    "pre-restore",
    "post-resume",
];

/// Microseconds since `started` (the hook's own time, for CRIU's log).
fn hook_us(started: Instant) -> u128 {
    started.elapsed().as_micros()
}

fn criu_hook(args: &CriuHookArgs, client: &Client, socket_given: bool) -> i32 {
    let started = Instant::now();
    let env_strict = std::env::var("MIGR_CRIU_STRICT").is_ok_and(|v| v == "1" || v == "true");
    let Ok(action) = std::env::var("CRTOOLS_SCRIPT_ACTION") else {
        eprintln!(
            "migr criu-hook: CRTOOLS_SCRIPT_ACTION is not set: this command is CRIU's --action-script"
        );
        return EXIT_USAGE;
    };
    // Under a container runtime the hook also acts at setup-namespaces: the
    // first restore action at which it can tell the container.
    if !HOOKED_ACTIONS.contains(&action.as_str()) && action != "setup-namespaces" {
        // Not a phase boundary: return at once, without contacting the agent.
        return 0;
    }
    let config_path = args
        .config
        .clone()
        .or_else(|| std::env::var_os("MIGR_CRIU_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let p = PathBuf::from("/etc/migr/criu-hook.conf");
            p.exists().then_some(p)
        });
    let config = match &config_path {
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_hook_config(&t))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("migr criu-hook: {}: {e}", p.display());
                return if args.strict || env_strict {
                    EXIT_REFUSED
                } else {
                    0
                };
            }
        },
        None => HookConfig::default(),
    };
    let strict = args.strict || env_strict || config.strict;
    let service = args
        .service
        .clone()
        .or_else(|| std::env::var("MIGR_SERVICE").ok())
        .or(config.service.clone());
    // Without a named service: the container CRIU works on, from its init's
    // cgroups (runc and podman set CRTOOLS_INIT_PID; it is empty at
    // pre-restore, where setup-namespaces stands in).
    let container_ids = match &service {
        Some(_) if action == "setup-namespaces" => return 0,
        Some(_) => Vec::new(),
        None => match container_of_init() {
            Ok(Some(ids)) => ids,
            Ok(None) => {
                eprintln!(
                    "migr criu-hook: {action}: no service named (--service, MIGR_SERVICE, `service =`) \
                     and no container known at this action (CRTOOLS_INIT_PID empty); nothing to do; hook {} us",
                    hook_us(started)
                );
                return 0;
            }
            Err(e) => {
                eprintln!("migr criu-hook: {action}: {e}");
                return if strict { EXIT_REFUSED } else { 0 };
            }
        },
    };
    let client = match (&config.socket, socket_given) {
        (Some(sock), false) => Client::new(
            sock.clone(),
            Duration::from_millis(config.timeout_ms.unwrap_or(1000)),
        ),
        _ => Client::new(
            client.socket.clone(),
            config
                .timeout_ms
                .map_or(client.timeout, Duration::from_millis),
        ),
    };
    let deadline_ms = client.timeout.as_millis() as u64;
    let mut request = match &service {
        Some(service) => {
            json!({ "service": service_arg(service), "action": action, "deadline_ms": deadline_ms })
        }
        None => {
            json!({ "container_ids": container_ids, "action": action, "deadline_ms": deadline_ms })
        }
    };
    // The restored process: a local replay waits while its sockets are full.
    if let Ok(Some(pid)) = init_pid() {
        request["init_pid"] = json!(pid);
    }
    match client.call("criu", request) {
        Ok(v) => {
            match serde_json::from_value::<PhaseResult>(v) {
                Ok(r) if r.service.is_empty() => eprintln!(
                    "migr criu-hook: {}; hook {} us",
                    r.note.unwrap_or_default(),
                    hook_us(started)
                ),
                Ok(r) if r.unchanged => eprintln!(
                    "migr criu-hook: {action}: {} stays {} ({}); hook {} us",
                    r.service,
                    r.to,
                    r.note.unwrap_or_default(),
                    hook_us(started)
                ),
                Ok(r) => eprintln!(
                    "migr criu-hook: {action}: {} {} -> {} (datapath {}) in {} us; hook {} us",
                    r.service,
                    r.from,
                    r.to,
                    r.datapath,
                    r.latency_us,
                    hook_us(started)
                ),
                Err(_) => eprintln!(
                    "migr criu-hook: {action}: done; hook {} us",
                    hook_us(started)
                ),
            }
            0
        }
        Err(e) => {
            let what = if e.code == EXIT_UNREACHABLE {
                "the agent is unreachable"
            } else {
                "the agent refused"
            };
            if strict {
                eprintln!(
                    "migr criu-hook: {action}: {what}: {}; failing (strict), so CRIU aborts",
                    e.message
                );
                EXIT_REFUSED
            } else {
                eprintln!(
                    "migr criu-hook: {action}: {what}: {}; continuing without migr for this step (not strict)",
                    e.message
                );
                0
            }
        }
    }
}

/// CRIU's `CRTOOLS_INIT_PID`; `None` when CRIU gave none (at pre-restore).
fn init_pid() -> Result<Option<u32>, String> {
    match std::env::var("CRTOOLS_INIT_PID") {
        Ok(p) if !p.trim().is_empty() => p
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("CRTOOLS_INIT_PID {p:?} is not a PID")),
        _ => Ok(None),
    }
}

/// The container ids named by the cgroups of CRIU's `CRTOOLS_INIT_PID`;
/// `None` when CRIU gave no PID (at pre-restore).
fn container_of_init() -> Result<Option<Vec<String>>, String> {
    let Some(pid) = init_pid()? else {
        return Ok(None);
    };
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    Ok(Some(crate::container::ids_in_cgroups(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_config_parses_and_rejects() {
        let c = parse_hook_config(
            "# migr\nservice = echo\nsocket = \"/run/x.sock\"\nstrict = yes\ntimeout_ms = 250\n",
        )
        .unwrap();
        assert_eq!(
            c,
            HookConfig {
                service: Some("echo".into()),
                socket: Some("/run/x.sock".into()),
                strict: true,
                timeout_ms: Some(250),
            }
        );
        assert!(
            parse_hook_config("colour = red")
                .unwrap_err()
                .contains("unknown key")
        );
        assert!(
            parse_hook_config("strict = maybe")
                .unwrap_err()
                .contains("true or false")
        );
        assert!(
            parse_hook_config("service")
                .unwrap_err()
                .contains("key = value")
        );
    }

    #[test]
    fn cid_flags_parse() {
        assert_eq!(
            parse_cid("8,1,2").unwrap(),
            CidSpec {
                len: 8,
                offset: 1,
                id_len: 2
            }
        );
        assert!(parse_cid("8,1").is_err());
        assert!(parse_cid("8,x,2").is_err());
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn add_flags_become_a_spec() {
        let cli = Cli::try_parse_from([
            "migrctl",
            "service",
            "add",
            "--id",
            "4",
            "--name",
            "echo",
            "--udp",
            "10.0.0.2:7000",
            "--quic",
            "10.0.0.2:4433",
            "--server-id",
            "258",
            "--cid",
            "8,1,2",
            "--forward-to",
            "10.0.1.2:7000",
            "--forward-iface",
            "eth1",
            "--next-hop-mac",
            "02:00:00:00:00:01",
        ])
        .unwrap();
        let Command::Service(cmd) = cli.command else {
            panic!("not a service command")
        };
        let ServiceCommand::Add(a) = *cmd else {
            panic!("not add")
        };
        let spec = add_spec(*a).unwrap();
        assert_eq!(spec.rules.len(), 2);
        assert_eq!(spec.rules[1].server_ids, [258]);
        assert_eq!(spec.forward.unwrap().iface, "eth1");
        for bad in [
            vec![
                "migrctl",
                "service",
                "add",
                "--id",
                "4",
                "--name",
                "x",
                "--server-id",
                "1",
            ],
            vec![
                "migrctl",
                "service",
                "add",
                "--id",
                "4",
                "--name",
                "x",
                "--forward-to",
                "10.0.0.1:1",
            ],
            vec!["migrctl", "service", "add", "--id", "0", "--name", "x"],
        ] {
            let cli = Cli::try_parse_from(&bad).unwrap();
            let Command::Service(cmd) = cli.command else {
                panic!()
            };
            let ServiceCommand::Add(a) = *cmd else {
                panic!()
            };
            let e = add_spec(*a).unwrap_err();
            assert_eq!(e.code, EXIT_USAGE, "{bad:?}: {}", e.message);
        }
    }
}
