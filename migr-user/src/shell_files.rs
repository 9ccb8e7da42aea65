//! The files a package installs beside the binaries, made from their clap
//! definitions so that they never disagree with the binaries: shell
//! completions (`completions SHELL`) and manual pages (`manpage`).

use std::io::Write;

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
/// administrator): its options, and its subcommands with what each does
/// (their own options are in `CMD SUBCOMMAND --help`).
pub fn manpage(cmd: clap::Command, out: &mut dyn Write) -> Result<()> {
    clap_mangen::Man::new(cmd)
        .section("8")
        .render(out)
        .context("writing the manual page")?;
    Ok(())
}
