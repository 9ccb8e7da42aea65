//! CRIU's side: installing migr's action script in a CRIU config file, and
//! running as that script (`migrctl criu-hook`): each CRIU action becomes a
//! request to the agent, bounded in time so a slow agent cannot stall CRIU.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Args;
use migr_control::api::PhaseResult;
use serde_json::json;

use super::{
    Client, CriuConfigCommand, CtlError, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, service_arg,
};

// ---------------------------------------------------------------------------
// CRIU config file

pub(super) fn criu_config(cmd: CriuConfigCommand) -> Result<(), CtlError> {
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
pub(super) fn hook_us(started: Instant) -> u128 {
    started.elapsed().as_micros()
}

pub(super) fn criu_hook(args: &CriuHookArgs, client: &Client, socket_given: bool) -> i32 {
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
pub(super) fn init_pid() -> Result<Option<u32>, String> {
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
pub(super) fn container_of_init() -> Result<Option<Vec<String>>, String> {
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
}
