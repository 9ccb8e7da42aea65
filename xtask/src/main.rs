//! Project tasks: `cargo xtask <command>`.
mod build;
mod demo;
mod run;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "migr's project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the project needs (idempotent: skips what is there).
    Setup,
    /// Build the XDP object (bpfel-unknown-none, with BTF) and print its path.
    BuildEbpf,
    /// The whole test suite: setup, fmt, clippy, unit and privileged tests.
    Test {
        /// Extra arguments for the privileged test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// A short live demo on a veth pair in two network namespaces.
    Demo,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Setup => setup::setup(),
        Command::BuildEbpf => build::build_ebpf().map(|path| println!("{}", path.display())),
        Command::Test { filter } => test::test(&filter),
        Command::Demo => demo::demo(),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
