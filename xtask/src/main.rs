//! Project tasks: `cargo xtask <command>`.
mod artifacts;
mod bench;
mod build;
mod criu;
mod demo;
mod fuzz;
mod package;
mod report;
mod run;
mod setup;
mod test;
mod testbed;
mod vm;

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
    /// The whole suite: setup, fmt, clippy, unit tests, fuzzing, privileged and VM tests, benchmarks.
    Test {
        /// Extra arguments for the privileged test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// The Debian package `migr` (agent, migrctl, systemd unit, config, CRIU
    /// snippet, completions, manual pages) in target/debian/; prints its path.
    Package,
    /// The live-migration demo: one QUIC migration with real CRIU, steering on and off (docs/testbed.md).
    Demo,
    /// The cargo-fuzz targets of tests/fuzz (parsers vs. reference, QUIC frames, control API).
    Fuzz {
        /// Seconds per target (0: only replay the seed corpus).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// The testbed's experiments: live migrations with real CRIU, results in results/NAME.json.
    Testbed {
        /// The scenario to run, or several, comma-separated, run interleaved (`--list` shows them).
        #[arg(long)]
        scenario: Option<String>,
        /// Runs of the scenario (default: the scenario's own, 10).
        #[arg(long)]
        runs: Option<usize>,
        /// List the scenarios.
        #[arg(long)]
        list: bool,
        /// Every scenario.
        #[arg(long)]
        all: bool,
        /// What the CRIU hook adds to the downtime: steering on and off in
        /// interleaved pairs (--runs pairs, default 10); results/hook-cost.json.
        #[arg(long)]
        hook_cost: bool,
        /// Run inside a Debian guest with this kernel (QEMU; results/vm-SERIES/): for the
        /// scenarios this host's kernel cannot run (`--scenario techniques`).
        #[arg(long, value_enum)]
        vm: Option<vm::KernelArg>,
        /// With --vm 6.12: the check `cargo xtask test` runs there (one hybrid migration,
        /// judged: nothing lost, parked only from the final dump, every lazy page in).
        #[arg(long, requires = "vm")]
        check: bool,
    },
    /// Plots (SVG) and a Markdown summary of results/*.json: results/README.md, results/plots/.
    Report {
        /// The results directory (default: results/ of the workspace).
        #[arg(long)]
        results: Option<std::path::PathBuf>,
    },
    /// Benchmarks: XDP cost per packet, map scale, veth throughput (needs root).
    Bench {
        /// A shorter run (under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON results (default: target/bench.json).
        #[arg(long)]
        json: Option<String>,
        /// Run only this group (xdp, breakdown, map-scale, veth, control, replay, and agent
        /// for the last two); may be repeated.
        #[arg(long)]
        only: Vec<String>,
        /// In the xdp and breakdown groups, only the cases whose name contains this.
        #[arg(long)]
        case: Option<String>,
    },
    /// Prints the Markdown table of a bench run's JSON (README.md's "Benchmark results"),
    /// every case but the breakdown's stages.
    BenchTable {
        /// The JSON a run wrote (default: target/bench.json).
        #[arg(long)]
        json: Option<String>,
    },
    /// The privileged tests under Debian's LTS kernels (6.1, 6.12) in QEMU (docs/vm-tests.md).
    VmTest {
        /// Which kernel(s) to boot.
        #[arg(long, value_enum, default_value = "all")]
        kernel: vm::KernelArg,
        /// How QEMU runs the guest: auto probes KVM with a short boot and falls back to TCG.
        #[arg(long, value_enum, default_value = "auto")]
        accel: vm::AccelArg,
        /// Seconds before a guest is killed (per kernel).
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Test binaries of migr-tests to run (default: foundation,datapath,traffic).
        #[arg(long, value_delimiter = ',')]
        tests: Vec<String>,
        /// Extra arguments for every test binary in the guest (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Setup => setup::setup(),
        Command::BuildEbpf => build::build_ebpf().map(|path| println!("{}", path.display())),
        Command::Test { filter } => test::test(&filter),
        Command::Package => package::package().map(|deb| println!("{}", deb.display())),
        Command::Demo => demo::demo(),
        Command::Report { results } => report::report(results),
        Command::Fuzz { seconds, targets } => {
            fuzz::fuzz(seconds, (!targets.is_empty()).then_some(&targets[..])).map(|_| ())
        }
        Command::Testbed {
            scenario,
            runs,
            list,
            all,
            hook_cost,
            vm,
            check,
        } => testbed::testbed(&testbed::Options {
            scenario,
            runs,
            list,
            all,
            hook_cost,
            vm,
            check,
        }),
        Command::Bench {
            quick,
            json,
            only,
            case,
        } => bench::bench(quick, json.as_deref(), &only, case.as_deref()),
        Command::BenchTable { json } => bench::print_table(json.as_deref()),
        Command::VmTest {
            kernel,
            accel,
            timeout,
            tests,
            filter,
        } => vm::vm_test(&vm::Options::new(kernel, accel, timeout, filter).with_tests(tests))
            .map(|_| ()),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
