//! The files a package installs beside the binaries, made from their clap
//! definitions so that they never disagree with the binaries: shell
//! completions (`completions SHELL`) and manual pages (`manpage`).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// The completion script of `cmd` for `shell`.
pub fn completions(
    mut cmd: clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn Write,
) -> Result<()> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}

/// The manual page of `cmd` (section 8: both binaries are for the
/// administrator): its options, and its subcommands with what each does.
pub fn manpage(cmd: clap::Command, out: &mut dyn Write) -> Result<()> {
    clap_mangen::Man::new(cmd)
        .section("8")
        .render(out)
        .context("writing the manual page")
}

/// Writes the manual page of `cmd` and one of each of its subcommands, at
/// every depth, into `dir` (`migr-agent.8`, `migr-agent-run.8`, ...): a
/// subcommand's options are on its own page. Returns the files written.
pub fn manpages(mut cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    // Building names each subcommand as the pages want it (display name
    // `migr-agent-run`, usage `migr-agent run`).
    cmd.build();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let path = dir.join(format!("{name}.8"));
    let mut page = Vec::new();
    manpage(cmd.clone(), &mut page)?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
