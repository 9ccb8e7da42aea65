//! Installs CRIU 4.1.1, the first release that works on this project's
//! kernels (bookworm's 3.17 fails `criu check` on 6.18: "Unexpected rt vDSO
//! area bounds"). It is built from Debian's own source tarball, whose
//! checksum is verified; no CRIU source is kept in the repository.
//! See shared/notes/criu.md for the facts this follows.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run;

pub const VERSION: &str = "4.1.1";
/// SHA-256 of `criu_4.1.1.orig.tar.xz` as Debian ships it.
const ORIG_SHA256: &str = "f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe";
pub const INSTALL_PATH: &str = "/usr/local/sbin/criu";
const SOURCE_LIST: &str = "/etc/apt/sources.list.d/migr-criu-src.sources";
const BUILD_DEPS: &[&str] = &[
    "build-essential",
    "pkg-config",
    "libprotobuf-dev",
    "libprotobuf-c-dev",
    "protobuf-c-compiler",
    "protobuf-compiler",
    "python3-protobuf",
    "libbsd-dev",
    "libnftables-dev",
    "libcap-dev",
    "libnl-3-dev",
    "libnet1-dev",
    "libaio-dev",
    "libgnutls28-dev",
    "uuid-dev",
    "nftables",
    "iptables",
    "xz-utils",
];

/// Is a working CRIU of the right version installed?
pub fn installed() -> bool {
    run::stdout(Command::new(INSTALL_PATH).arg("--version"))
        .is_some_and(|v| v.contains(&format!("Version: {VERSION}")))
}

/// Downloads, verifies, builds and installs CRIU.
pub fn install() -> Result<()> {
    let work = run::workspace_root().join("target/criu");
    std::fs::create_dir_all(&work)?;
    let tarball = work.join(format!("criu_{VERSION}.orig.tar.xz"));
    if !tarball.exists() || sha256(&tarball)? != ORIG_SHA256 {
        download(&work)?;
    }
    let digest = sha256(&tarball)?;
    if digest != ORIG_SHA256 {
        bail!(
            "{} has SHA-256 {digest}, expected {ORIG_SHA256}; refusing to build it",
            tarball.display()
        );
    }
    let mut deps = Command::new("apt-get");
    deps.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(BUILD_DEPS);
    run::status(&mut deps)?;
    run::status(
        Command::new("tar")
            .current_dir(&work)
            .arg("xf")
            .arg(&tarball),
    )?;
    let source = work.join(format!("criu-{VERSION}"));
    run::status(
        Command::new("make")
            .current_dir(&source)
            .args(["-j2", "criu"]),
    )?;
    run::status(
        Command::new("install")
            .args(["-m", "0755"])
            .arg(source.join("criu/criu"))
            .arg(INSTALL_PATH),
    )?;
    let check = run::stdout(Command::new(INSTALL_PATH).arg("check").stderr(std::process::Stdio::piped()));
    if check.is_none() {
        bail!("`{INSTALL_PATH} check` fails on this kernel; see shared/notes/criu.md");
    }
    Ok(())
}

/// Fetches the orig tarball with apt from a temporary trixie deb-src entry,
/// which is removed again whatever happens.
fn download(work: &Path) -> Result<()> {
    let uri = debian_uri()?;
    std::fs::write(
        SOURCE_LIST,
        format!(
            "Types: deb-src\nURIs: {uri}\nSuites: trixie\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .with_context(|| format!("writing {SOURCE_LIST}"))?;
    let result = (|| {
        run::status(Command::new("apt-get").args(["update", "-q"]))?;
        // The .dsc and debian tarball may be missing from the mirror; the orig
        // tarball is all we need, so apt's exit code is not the verdict.
        let _ = Command::new("apt-get")
            .current_dir(work)
            .args(["source", "--download-only", &format!("criu={VERSION}-1")])
            .status();
        Ok(())
    })();
    let _ = std::fs::remove_file(SOURCE_LIST);
    let _ = Command::new("apt-get").args(["update", "-q"]).status();
    result
}

/// The main Debian archive URI of this machine's own sources (never a host name of ours).
fn debian_uri() -> Result<String> {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .context("reading /etc/apt/sources.list.d/debian.sources")?;
    sources
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .find(|u| u.ends_with("/debian"))
        .map(str::to_string)
        .context("no main Debian archive URI in debian.sources")
}

fn sha256(path: &Path) -> Result<String> {
    let out = run::stdout(Command::new("sha256sum").arg(path))
        .with_context(|| format!("sha256sum {}", path.display()))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_string())
}
