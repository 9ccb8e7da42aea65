//! Installs CRIU 4.1.1, the first release that works on this project's
//! kernels (bookworm's 3.17 fails `criu check` on 6.18: "Unexpected rt vDSO
//! area bounds"). It is built from Debian's own source tarball (the one
//! Debian trixie ships), whose SHA-256 is verified before anything is built;
//! no CRIU source is kept in the repository.
//!
//! Steps (each skipped when its result is already there):
//! 1. download `criu_4.1.1.orig.tar.xz` with `apt-get source --download-only`
//!    through a temporary trixie `deb-src` entry that copies the URI of the
//!    machine's own Debian source (no host name is written here), removed
//!    again whatever happens;
//! 2. verify the tarball's SHA-256;
//! 3. install the build dependencies with apt;
//! 4. apply one fix of ours to `criu/sockets.c` (below), `make -j2 criu`
//!    with `RUNDIR=/run/migr-criu` (see [`RUNDIR`]; output in
//!    `target/criu/build.log`);
//! 5. install the binary as `/usr/local/sbin/criu`, write a stamp naming the
//!    tarball's checksum and the fix, and run `criu check`.
//!
//! The fix: since Linux 6.16 `getsockopt(SO_PASSCRED)` and `SO_PASSSEC`
//! fail with EOPNOTSUPP on every socket that is not AF_UNIX, AF_NETLINK or
//! AF_BLUETOOTH, and CRIU 4.1.1 treats that as fatal, so it cannot dump a
//! process with any UDP or TCP socket on this kernel ("sockets: Can't get
//! 1:16 opt: Operation not supported", then "Dumping FAILED"). CRIU
//! upstream fixed it after 4.1.1 (its issue 2718). Ours: an EOPNOTSUPP there
//! means the socket has no such option; it is not dumped, and (as the
//! image then lacks the field) not restored.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::run;

pub const VERSION: &str = "4.1.1";
/// SHA-256 of `criu_4.1.1.orig.tar.xz` as Debian ships it.
const ORIG_SHA256: &str = "f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe";
pub const INSTALL_PATH: &str = "/usr/local/sbin/criu";
/// Names what was built: the tarball and our fix (a CRIU 4.1.1 without the fix
/// cannot dump sockets here, so its version alone does not say enough).
const STAMP_PATH: &str = "/usr/local/sbin/.criu-migr-build";
const FIX_ID: &str = "sockopt-pass-eopnotsupp-1 rundir-/run/migr-criu";
/// Where CRIU keeps its kernel-feature cache (`criu.kdat`; the build's
/// RUNDIR, default /run). CRIU keeps the cache only on a tmpfs, and /run is
/// not one on every machine (it is not on this project's): without the cache
/// every `criu dump` and `criu restore` probes the kernel first, about 45 ms
/// here, all of it inside a migration's downtime. The testbed mounts a small
/// tmpfs there when it is missing (migr-testbed/src/environment.rs).
pub const RUNDIR: &str = "/run/migr-criu";
/// The text of criu/sockets.c's `dump_socket_opts` the fix replaces ...
const SOCKETS_ORIGINAL: &str = "\tret |= dump_opt(sk, SOL_SOCKET, SO_PASSCRED, &val);
\tsoe->has_so_passcred = true;
\tsoe->so_passcred = val ? true : false;

\tret |= dump_opt(sk, SOL_SOCKET, SO_PASSSEC, &val);
\tsoe->has_so_passsec = true;
\tsoe->so_passsec = val ? true : false;
";
/// ... and what replaces it (written for migr).
const SOCKETS_FIXED: &str = "\t/* migr: since Linux 6.16 only unix, netlink and bluetooth sockets
\t * have SO_PASSCRED and SO_PASSSEC; the others answer EOPNOTSUPP. */
\t{
\t\tsocklen_t pass_len = sizeof(val);

\t\tif (getsockopt(sk, SOL_SOCKET, SO_PASSCRED, &val, &pass_len) == 0) {
\t\t\tsoe->has_so_passcred = true;
\t\t\tsoe->so_passcred = val ? true : false;
\t\t} else if (errno != EOPNOTSUPP) {
\t\t\tpr_perror(\"Can't get SO_PASSCRED\");
\t\t\tret = -1;
\t\t}
\t\tpass_len = sizeof(val);
\t\tif (getsockopt(sk, SOL_SOCKET, SO_PASSSEC, &val, &pass_len) == 0) {
\t\t\tsoe->has_so_passsec = true;
\t\t\tsoe->so_passsec = val ? true : false;
\t\t} else if (errno != EOPNOTSUPP) {
\t\t\tpr_perror(\"Can't get SO_PASSSEC\");
\t\t\tret = -1;
\t\t}
\t}
";
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

/// Is CRIU of the right version, built with our fix, installed where the
/// project expects it?
pub fn installed() -> bool {
    run::stdout(Command::new(INSTALL_PATH).arg("--version"))
        .is_some_and(|v| v.contains(&format!("Version: {VERSION}")))
        && std::fs::read_to_string(STAMP_PATH).is_ok_and(|s| s.trim() == stamp())
}

fn stamp() -> String {
    format!("criu {VERSION} orig.tar.xz sha256 {ORIG_SHA256} fix {FIX_ID}")
}

/// Applies our fix to the unpacked source (fails if the text is not there).
fn apply_fix(source: &Path) -> Result<()> {
    let path = source.join("criu/sockets.c");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if text.matches(SOCKETS_ORIGINAL).count() != 1 {
        bail!(
            "{}: the SO_PASSCRED/SO_PASSSEC dump code is not where the fix expects it",
            path.display()
        );
    }
    std::fs::write(&path, text.replace(SOCKETS_ORIGINAL, SOCKETS_FIXED))?;
    Ok(())
}

/// `criu check`'s verdict: Ok with its last line ("Looks good.") or the
/// reason it fails.
pub fn check() -> Result<String> {
    let out = Command::new(INSTALL_PATH)
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{INSTALL_PATH} check`"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let looks_good = text.lines().any(|l| l.trim() == "Looks good.");
    if !out.status.success() || !looks_good {
        bail!(
            "`{INSTALL_PATH} check` fails on this kernel ({}):\n{}",
            out.status,
            text.trim()
        );
    }
    Ok("Looks good.".to_string())
}

fn work_dir() -> PathBuf {
    run::workspace_root().join("target/criu")
}

/// Downloads, verifies, builds and installs CRIU, then runs `criu check`.
pub fn install() -> Result<()> {
    let work = work_dir();
    std::fs::create_dir_all(&work)?;
    let tarball = work.join(format!("criu_{VERSION}.orig.tar.xz"));
    if !tarball.exists() || sha256(&tarball)? != ORIG_SHA256 {
        let _ = std::fs::remove_file(&tarball);
        download(&work)?;
    }
    if !tarball.exists() {
        bail!(
            "apt-get source did not fetch {}; is the Debian archive reachable?",
            tarball.display()
        );
    }
    let digest = sha256(&tarball)?;
    if digest != ORIG_SHA256 {
        bail!(
            "{} has SHA-256 {digest}, expected {ORIG_SHA256}; refusing to build it",
            tarball.display()
        );
    }
    println!("[setup]   criu tarball SHA-256 verified ({ORIG_SHA256})");
    let missing: Vec<&str> = BUILD_DEPS
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        let mut deps = Command::new("apt-get");
        deps.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing);
        quiet(&mut deps, &work.join("apt.log"))?;
        println!("[setup]   criu build dependencies installed");
    }
    let source = work.join(format!("criu-{VERSION}"));
    let _ = std::fs::remove_dir_all(&source);
    run::status(
        Command::new("tar")
            .current_dir(&work)
            .arg("xf")
            .arg(&tarball),
    )?;
    apply_fix(&source)?;
    println!("[setup]   criu/sockets.c: SO_PASSCRED/SO_PASSSEC fix for Linux 6.16+ applied");
    quiet(
        Command::new("make").current_dir(&source).args([
            "-j2",
            &format!("RUNDIR={RUNDIR}"),
            "criu",
        ]),
        &work.join("build.log"),
    )?;
    println!("[setup]   criu built");
    run::status(
        Command::new("install")
            .args(["-D", "-m", "0755"])
            .arg(source.join("criu/criu"))
            .arg(INSTALL_PATH),
    )?;
    std::fs::write(STAMP_PATH, stamp() + "\n").with_context(|| format!("writing {STAMP_PATH}"))?;
    let verdict = check()?;
    println!("[setup]   {INSTALL_PATH} check: {verdict}");
    Ok(())
}

/// Runs `cmd` with its output in `log`; on failure says where the log is
/// and shows its end.
fn quiet(cmd: &mut Command, log: &Path) -> Result<()> {
    let line = run::render(cmd);
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`{line}` failed ({status}); full output in {}:\n{}",
            log.display(),
            tail.join("\n")
        );
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
        quiet(
            Command::new("apt-get").args(["update", "-q"]),
            &work.join("apt-update.log"),
        )?;
        // The .dsc and the debian tarball may be missing from the mirror; the
        // orig tarball is all we need, so apt's exit code is not the verdict
        // (the checksum is).
        let _ = Command::new("apt-get")
            .current_dir(work)
            .args(["source", "--download-only", &format!("criu={VERSION}-1")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        Ok(())
    })();
    let _ = std::fs::remove_file(SOURCE_LIST);
    let _ = Command::new("apt-get")
        .args(["update", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    result
}

/// The main Debian archive URI of this machine's own sources.
fn debian_uri() -> Result<String> {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|u| u.trim_end_matches('/').ends_with("/debian"))
        .map(str::to_string);
    if let Some(uri) = deb822 {
        return Ok(uri);
    }
    // One-line style: `deb [options] URI suite components`.
    std::fs::read_to_string("/etc/apt/sources.list")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim_start().starts_with("deb "))
        .flat_map(str::split_whitespace)
        .find(|w| w.contains("://") && w.trim_end_matches('/').ends_with("/debian"))
        .map(str::to_string)
        .context("no main Debian archive URI in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list")
}

fn dpkg_installed(pkg: &str) -> bool {
    run::stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn sha256(path: &Path) -> Result<String> {
    let out = run::stdout(Command::new("sha256sum").arg(path))
        .with_context(|| format!("sha256sum {}", path.display()))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}
