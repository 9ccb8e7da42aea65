//! `cargo xtask package`: the Debian package `migr` (docs/deploy.md) with
//! cargo-deb, from the release build of migr-agent and migrctl. The layout
//! (binaries, unit, config, CRIU snippet, docs) is `[package.metadata.deb]`
//! in migr-user/Cargo.toml; this task makes the files the binaries write
//! about themselves (shell completions, manual pages) first, so that they
//! always match the binaries packaged with them.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{artifacts, run};

const BINARIES: [&str; 2] = ["migr-agent", "migrctl"];
pub const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn cargo_deb_installed() -> bool {
    run::stdout(run::cargo().args(["deb", "--version"]))
        .is_some_and(|out| out.contains(CARGO_DEB_VERSION))
}

/// Setup commands: install cargo-deb.
pub fn install_cargo_deb() -> Vec<Command> {
    let mut cmd = run::cargo();
    cmd.args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]);
    vec![cmd]
}

/// Builds the package and returns the path of the `.deb`.
pub fn package() -> Result<PathBuf> {
    if !cargo_deb_installed() {
        bail!("cargo-deb {CARGO_DEB_VERSION} is not installed; run `cargo xtask setup`");
    }
    let build = artifacts::build(&["build", "--release", "--package", "migr-user", "--bins"])
        .context("building migr-agent and migrctl (release)")?;
    let agent = build.executable("bin", "migr-agent")?;
    let profile_dir = agent.parent().context("the release directory")?;
    // cargo-deb reads these as `target/release/package/...` (its name for
    // the release directory, wherever the target directory is).
    let generated = profile_dir.join("package");
    std::fs::create_dir_all(&generated)?;
    for bin in BINARIES {
        let program = build.executable("bin", bin)?;
        for (shell, file) in [
            ("bash", format!("{bin}.bash")),
            ("zsh", format!("_{bin}")),
            ("fish", format!("{bin}.fish")),
        ] {
            let text = output_of(Command::new(&program).args(["completions", shell]))?;
            std::fs::write(generated.join(file), text)?;
        }
    }
    // One page per command and subcommand, gzipped as Debian installs them.
    let man = generated.join("man");
    let _ = std::fs::remove_dir_all(&man);
    for bin in BINARIES {
        let program = build.executable("bin", bin)?;
        let listed = output_of(Command::new(&program).arg("manpage").arg("--dir").arg(&man))?;
        for page in String::from_utf8_lossy(&listed).lines() {
            let page = PathBuf::from(page);
            let gz = page.with_extension("8.gz");
            std::fs::write(&gz, gzip(&std::fs::read(&page)?)?)?;
            std::fs::remove_file(&page)?;
        }
    }
    let out_dir = profile_dir
        .parent()
        .context("the target directory")?
        .join("debian");
    let printed = output_of(run::cargo().args([
        "deb",
        "--package",
        "migr-user",
        "--no-build",
        "--output",
        out_dir.to_str().context("a UTF-8 target directory")?,
    ]))
    .context("cargo-deb (`cargo xtask setup` installs it)")?;
    let deb = String::from_utf8_lossy(&printed)
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo-deb printed no .deb path")?;
    if !deb.is_file() {
        bail!("cargo-deb named {} but it is not there", deb.display());
    }
    Ok(deb)
}

/// Runs `cmd` and returns its stdout; fails with its stderr.
fn output_of(cmd: &mut Command) -> Result<Vec<u8>> {
    let line = run::render(cmd);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// gzip -9n: manual pages are installed compressed, and without a time
/// stamp so that the same sources make the same package.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the gzip writer panicked"))??;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}
