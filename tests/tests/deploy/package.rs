//! The Debian package: built by `cargo xtask package`, unpacked into a
//! scratch root, its files checked, and its systemd unit's ExecStart run
//! (paths mapped into the root) with the installed config in a namespace.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    scratch::{IFACE, Scratch, VethNs, ctl, read, start_agent, stop_agent},
    unit_file::UnitFile,
};

const UNIT: &str = "usr/lib/systemd/system/migr-agent.service";
const CONFIG: &str = "etc/migr/agent.toml";

/// Every file the package must install (besides the unit and the config).
const FILES: &[&str] = &[
    "usr/bin/migr-agent",
    "usr/bin/migrctl",
    "usr/share/migr/criu-migr.conf",
    "usr/share/doc/migr/deploy.md",
    "usr/share/doc/migr/ops/alerts.yml",
    "usr/share/doc/migr/ops/dashboard.json",
    "usr/share/bash-completion/completions/migr-agent",
    "usr/share/bash-completion/completions/migrctl",
    "usr/share/zsh/vendor-completions/_migr-agent",
    "usr/share/zsh/vendor-completions/_migrctl",
    "usr/share/fish/vendor_completions.d/migr-agent.fish",
    "usr/share/fish/vendor_completions.d/migrctl.fish",
    "usr/share/man/man8/migr-agent.8.gz",
    "usr/share/man/man8/migrctl.8.gz",
    "usr/share/man/man8/migr-agent-run.8.gz",
    "usr/share/man/man8/migrctl-service-add.8.gz",
];

#[test]
fn debian_package_installs_and_its_unit_starts_the_agent() {
    let net = VethNs::new("deb");
    let mut scratch = Scratch::new("deb");
    let deb = build_package();
    let root = scratch.dir.join("root");
    let control = scratch.dir.join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    // The control data: name, the config as a conffile, maintainer scripts that parse.
    let fields = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .args(["Package", "Depends"]));
    assert!(fields.contains("Package: migr"), "{fields}");
    assert!(
        fields.contains("libc6"),
        "the binaries' libraries are depended on: {fields}"
    );
    let conffiles = read(&control.join("conffiles"));
    assert!(
        conffiles.lines().any(|l| l == "/etc/migr/agent.toml"),
        "conffiles: {conffiles:?}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    // Installed, not started (the agent needs its interface first); an
    // upgrade restarts a running agent; a removal stops it.
    let postinst = read(&control.join("postinst"));
    assert!(
        postinst.contains("try-restart migr-agent.service"),
        "{postinst}"
    );
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    assert!(read(&control.join("prerm")).contains("stop migr-agent.service"));

    for file in FILES.iter().chain([&UNIT, &CONFIG]) {
        let path = root.join(file);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    for bin in ["usr/bin/migr-agent", "usr/bin/migrctl"] {
        let mode = std::fs::metadata(root.join(bin))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o755, 0o755, "{bin} is executable");
    }
    for bin in ["migr-agent", "migrctl"] {
        let bash = root.join("usr/share/bash-completion/completions").join(bin);
        run(Command::new("bash").arg("-n").arg(&bash));
        let registered = read(&bash)
            .lines()
            .any(|l| l.trim().starts_with("complete ") && l.trim().ends_with(&format!(" {bin}")));
        assert!(
            registered,
            "{} registers a completion for {bin}",
            bash.display()
        );
        let man = run(Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$1\" | head -c 400")
            .arg("sh")
            .arg(root.join(format!("usr/share/man/man8/{bin}.8.gz"))));
        assert!(man.contains(&format!(".TH {bin} 8")), "{man}");
    }
    // A subcommand's options are on its own page.
    let run_page = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man8/migr-agent-run.8.gz")));
    for option in [r"\-\-config", r"\-\-lease\-ms", r"\-\-iface"] {
        assert!(
            run_page.contains(option),
            "migr-agent-run(8) lacks {option}"
        );
    }
    // The CRIU snippet: inactive where it is, and its one setting is the
    // installed migrctl as the action script.
    let snippet = read(&root.join("usr/share/migr/criu-migr.conf"));
    let settings: Vec<&str> = snippet
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(settings, ["action-script /usr/bin/migrctl"]);
    // ... the line `migrctl criu-config install` writes, the way the
    // snippet tells an operator to turn it on.
    let criu_conf = scratch.dir.join("runc.conf");
    let installed_ctl = root.join("usr/bin/migrctl");
    run(Command::new(&installed_ctl)
        .args(["criu-config", "install", "--file"])
        .arg(&criu_conf)
        .arg("--script")
        .arg(&installed_ctl));
    let written = read(&criu_conf);
    let action = written
        .lines()
        .find(|l| l.starts_with("action-script "))
        .unwrap_or_else(|| panic!("no action-script line in {written:?}"));
    assert_eq!(
        action.replace(root.to_str().unwrap(), ""),
        settings[0],
        "the snippet's line is the one migrctl installs"
    );

    // The unit.
    let unit = UnitFile::parse(&read(&root.join(UNIT))).unwrap();
    for (section, key, value) in [
        ("Service", "Restart", "on-failure"),
        ("Service", "RuntimeDirectory", "migr"),
        ("Service", "RuntimeDirectoryPreserve", "yes"),
        ("Service", "User", "root"),
        ("Unit", "RequiresMountsFor", "/sys/fs/bpf"),
        ("Install", "WantedBy", "multi-user.target"),
    ] {
        assert_eq!(unit.get(section, key), Some(value), "{section}.{key}");
    }
    let exec_start = unit.get("Service", "ExecStart").expect("ExecStart");
    assert!(
        exec_start.contains("--config /etc/migr/agent.toml"),
        "{exec_start}"
    );
    verify_with_systemd(&read(&root.join(UNIT)), exec_start, &root, &scratch.dir);

    // The installed config as shipped: every key commented out; the agent
    // asks for an interface and nothing else.
    let config = root.join(CONFIG);
    let installed_agent = root.join("usr/bin/migr-agent");
    let out = Command::new(&installed_agent)
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no interface"),
        "{stderr}"
    );

    // As an operator would: set the interface (and, for the scratch root,
    // the paths that would be /run/migr and /sys/fs/bpf/migr).
    let socket = scratch.dir.join("agent.sock");
    let pins = scratch.pin_dir("deb");
    let state = scratch.dir.join("run-migr");
    let mut text = read(&config);
    text.push_str(&format!(
        "\niface = [\"{IFACE}\"]\nsocket = \"{}\"\npin-dir = \"{}\"\nstate-dir = \"{}\"\n",
        socket.display(),
        pins.display(),
        state.display()
    ));
    std::fs::write(&config, text).unwrap();

    let argv = map_into_root(exec_start, &root);
    let (program, args) = argv.split_first().expect("a command");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!(
        "ExecStart in the scratch root: {} {}",
        program,
        args.join(" ")
    );
    let log = scratch.dir.join("agent.log");
    let agent = start_agent(
        &net.ns,
        Path::new(program),
        &args,
        &installed_ctl,
        &socket,
        &log,
    );
    let link = net.ns.exec(&["ip", "link", "show", IFACE]).unwrap();
    assert!(
        link.contains("xdp"),
        "the XDP program is attached to {IFACE}: {link}"
    );
    // Ready by its own checks (attached, maps pinned, ring drained).
    let health = ctl(&installed_ctl, &socket, &["health"]);
    assert!(
        health.status.success(),
        "migrctl health: {}{}\n{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr),
        read(&log)
    );
    stop_agent(agent, &log);
    let link = net.ns.exec(&["ip", "link", "show", IFACE]).unwrap();
    assert!(!link.contains("xdp"), "detached on stop: {link}");
}

/// systemd's own reading of the unit (`systemd-analyze verify`), on a copy
/// whose ExecStart names the scratch root's files (verify checks that the
/// program exists). systemd says what it ignores on stderr, and exits 0
/// even then: any word there fails the test.
fn verify_with_systemd(unit: &str, exec_start: &str, root: &Path, scratch: &Path) {
    let mapped = map_into_root(exec_start, root).join(" ");
    let copy = scratch.join("migr-agent.service");
    std::fs::write(&copy, unit.replace(exec_start, &mapped)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian's systemd package; `cargo xtask setup` installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// `cargo xtask package`; the path it prints last.
fn build_package() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["run", "-q", "--package", "xtask", "--", "package"])
        .output()
        .expect("run cargo xtask package");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo xtask package failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = PathBuf::from(stdout.lines().last().expect("a path").trim());
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "{stdout}"
    );
    deb
}

/// The unit's command line with every absolute path that the package
/// installs replaced by its place in `root` (quotes are not used there).
fn map_into_root(exec_start: &str, root: &Path) -> Vec<String> {
    exec_start
        .split_whitespace()
        .map(|word| {
            let inside = root.join(word.trim_start_matches('/'));
            match word.starts_with('/') && inside.exists() {
                true => inside.to_string_lossy().into_owned(),
                false => word.to_string(),
            }
        })
        .collect()
}

/// Runs `cmd`, insists on success, returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
