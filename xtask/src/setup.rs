//! `cargo xtask setup`: install what the project needs on a fresh Debian machine.
//! Every step checks first and skips itself when its work is already done.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, Result};

use crate::{
    criu,
    run::{self, render},
};

/// Debian packages the build and the tests need.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",  // bpf-linker links against libLLVM 22
    "iproute2",     // ip netns / ip link for the tests and the demo
    "util-linux",   // nsenter
    "ethtool",      // tests turn off veth checksum offload (see migr-testkit/src/netns.rs)
    "nftables",     // the testbed removes the tables CRIU's network lock leaves (nft)
    "iptables",     // CRIU's TCP connection lock (--tcp-established)
    "dnsmasq-base", // the TCP+DNS baseline's name server (testbed scenarios tcp-dns-*)
    "runc",         // real containers on the testbed (--runtime runc, docs/containers.md)
    "podman",       // real containers on the testbed (--runtime podman, docs/containers.md)
    "dpkg-dev",     // dpkg-shlibdeps: the Debian package's Depends (cargo xtask package)
    "systemd",      // systemd-analyze verify: the package test reads the unit as systemd does
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

struct Step {
    name: &'static str,
    /// Is the work already done?
    done: fn() -> bool,
    /// Commands that do it.
    commands: fn() -> Vec<Command>,
    /// What to try when a command fails.
    hint: &'static str,
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            name: "apt packages",
            done: || missing_apt_packages().is_empty(),
            commands: || {
                let mut update = Command::new("apt-get");
                update.args(["update", "-q"]);
                let mut install = Command::new("apt-get");
                install
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(missing_apt_packages());
                vec![update, install]
            },
            hint: "run it as root on Debian (bookworm) with its package sources reachable",
        },
        Step {
            name: "rust nightly toolchain",
            done: || {
                run::stdout(Command::new("rustup").args(["toolchain", "list"]))
                    .is_some_and(|out| out.lines().any(|l| l.starts_with("nightly")))
            },
            commands: || {
                let mut cmd = Command::new("rustup");
                cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
                vec![cmd]
            },
            hint: "install rustup first (the Rust toolchain installer)",
        },
        Step {
            name: "rust-src for nightly",
            done: || {
                run::stdout(Command::new("rustup").args([
                    "+nightly",
                    "component",
                    "list",
                    "--installed",
                ]))
                .is_some_and(|out| out.lines().any(|l| l.starts_with("rust-src")))
            },
            commands: || {
                let mut cmd = Command::new("rustup");
                cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
                vec![cmd]
            },
            hint: "check that rustup can reach its component server",
        },
        Step {
            name: "bpf-linker (LLVM 22)",
            done: || {
                run::stdout(Command::new("bpf-linker").arg("--version"))
                    .is_some_and(|out| out.contains(BPF_LINKER_VERSION))
            },
            commands: || {
                let mut cmd = run::cargo();
                let path = std::env::var("PATH").unwrap_or_default();
                // Without LLVM 22 first in PATH, the build picks another
                // llvm-config and fails to link libLLVM.
                cmd.env("PATH", format!("{LLVM_BIN}:{path}")).args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ]);
                vec![cmd]
            },
            hint: "make sure llvm-22-dev is installed (the apt step) and ~/.cargo/bin is in PATH",
        },
        Step {
            name: "cargo-fuzz",
            done: crate::fuzz::cargo_fuzz_installed,
            commands: crate::fuzz::install_cargo_fuzz,
            hint: "cargo install needs the package registry; ~/.cargo/bin must be in PATH",
        },
        Step {
            name: "cargo-deb",
            done: crate::package::cargo_deb_installed,
            commands: crate::package::install_cargo_deb,
            hint: "cargo install needs the package registry; ~/.cargo/bin must be in PATH",
        },
        // The VM tests (`cargo xtask vm-test`, docs/vm-tests.md).
        Step {
            name: "apt bookworm-backports",
            done: has_backports_source,
            commands: || {
                // The entry is a copy of the machine's own bookworm entry with another suite,
                // so no mirror's host name is written here.
                let (path, entry) = backports_entry().unwrap_or(("", String::new()));
                let mut write = Command::new("sh");
                write.args(["-c", r#"test -n "$1" && printf '%s' "$1" > "$2""#, "sh"]);
                write.args([entry.as_str(), path]);
                let mut update = Command::new("apt-get");
                update.args(["update", "-q"]);
                vec![write, update]
            },
            hint: "no bookworm entry found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list to copy",
        },
        Step {
            name: "qemu-system-x86 backports",
            done: || run::stdout(Command::new("qemu-system-x86_64").arg("--version")).is_some(),
            // bookworm's qemu-system-x86 (7.2) would remove the image's backports qemu-utils.
            commands: || apt_install(&["-t", "bookworm-backports", "qemu-system-x86"]),
            hint: "the apt suite bookworm-backports must be reachable (previous step)",
        },
        Step {
            name: "busybox-static",
            done: || dpkg_installed("busybox-static"),
            commands: || apt_install(&["busybox-static"]),
            hint: "run it as root on Debian (bookworm) with its package sources reachable",
        },
    ]
}

/// Is some apt source for bookworm-backports configured?
fn has_backports_source() -> bool {
    let mut files = vec![std::path::PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list")),
        );
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .any(|l| l.split_whitespace().any(|w| w == "bookworm-backports"))
        })
    })
}

/// A source entry for bookworm-backports, copied from the machine's bookworm entry, and the
/// file it goes to.
fn backports_entry() -> Option<(&'static str, String)> {
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        for stanza in text.split("\n\n") {
            let is_bookworm = stanza.lines().any(|l| {
                l.strip_prefix("Suites:")
                    .is_some_and(|s| s.split_whitespace().any(|w| w == "bookworm"))
            });
            if is_bookworm {
                let lines: Vec<String> = stanza
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(|l| match l.starts_with("Suites:") {
                        true => "Suites: bookworm-backports".to_string(),
                        false => l.to_string(),
                    })
                    .collect();
                let path = "/etc/apt/sources.list.d/migr-bookworm-backports.sources";
                return Some((path, lines.join("\n") + "\n"));
            }
        }
    }
    // One-line style: `deb [options] URI bookworm main ...`.
    let text = std::fs::read_to_string("/etc/apt/sources.list").ok()?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("deb ") && l.split_whitespace().any(|w| w == "bookworm"))?;
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| {
            if w == "bookworm" {
                "bookworm-backports"
            } else {
                w
            }
        })
        .collect();
    let path = "/etc/apt/sources.list.d/migr-bookworm-backports.list";
    Some((path, words.join(" ") + "\n"))
}

fn apt_install(args: &[&str]) -> Vec<Command> {
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(args);
    vec![update, install]
}

fn dpkg_installed(pkg: &str) -> bool {
    run::stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn missing_apt_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !run::stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

/// A step done by a function; prints the same lines as the others. Returns
/// whether it did something.
fn function_step(
    name: &str,
    done: fn() -> bool,
    install: fn() -> Result<()>,
    hint: &str,
) -> Result<bool> {
    if done() {
        println!("[setup] {name:<26} already done");
        return Ok(false);
    }
    let t = Instant::now();
    println!("[setup] {name:<26} installing ...");
    install().with_context(|| format!("setup step '{name}' failed; {hint}"))?;
    if !done() {
        anyhow::bail!("setup step '{name}' ran but its check still fails; {hint}");
    }
    println!(
        "[setup] {name:<26} installed in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(true)
}

pub fn setup() -> Result<()> {
    let started = Instant::now();
    let mut did_something = false;
    for step in steps() {
        if (step.done)() {
            println!("[setup] {:<26} already done", step.name);
            continue;
        }
        let t = Instant::now();
        println!("[setup] {:<26} installing ...", step.name);
        for mut cmd in (step.commands)() {
            let line = render(&cmd);
            run::status(&mut cmd).with_context(|| {
                format!(
                    "setup step '{}' failed at `{line}`; {}",
                    step.name, step.hint
                )
            })?;
        }
        if !(step.done)() {
            anyhow::bail!(
                "setup step '{}' ran but its check still fails; {}",
                step.name,
                step.hint
            );
        }
        did_something = true;
        println!(
            "[setup] {:<26} installed in {:.1}s",
            step.name,
            t.elapsed().as_secs_f64()
        );
    }
    // CRIU for the live-migration testbed (docs/testbed.md): a function, not
    // a list of commands (download, verify, build, check).
    did_something |= function_step(
        &format!("criu {}", criu::VERSION),
        criu::installed,
        criu::install,
        "see shared/notes/criu.md; the build log is in target/criu/",
    )?;
    if did_something {
        println!("[setup] done in {:.1}s", started.elapsed().as_secs_f64());
    } else {
        println!(
            "[setup] nothing to do: every step was already done ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
