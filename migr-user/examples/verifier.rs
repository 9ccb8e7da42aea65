//! The load check of `cargo xtask vm-test` (and a debugging aid): probes what the running
//! kernel has of what the datapath needs, loads the datapath exactly as the agent does
//! ([`Datapath::load`]), and prints, per program, the verifier's instruction count.
//!
//! Output, one fact a line (xtask/src/vm/console.rs reads it):
//! - `feature | <name> | <since> | yes|MISSING|unknown (...)` for each probed feature;
//! - `<program>: loaded; verified instructions <n|unknown>, translated size <n> bytes`;
//! - on failure `load failed: <message>` (the outermost message: what the kernel lacks, from
//!   `migr_user::features::explain`), then `cause: ...` lines, then the verifier log's last
//!   `--log-lines` (default 30) lines as `log | ...`.
//!
//! `--breakdown` loads the bench's cut-short copies of the classifier too
//! (`BREAKDOWN_PROGRAMS`) and prints theirs.
//!
//! Exits 0 when every program loaded, 1 when loading failed.
use std::process::ExitCode;

use migr_user::{
    datapath::{
        BREAKDOWN_PROGRAMS, Datapath, FULL_PROGRAM, MAIN_PROGRAM, PASS_PROGRAM, TC_PROGRAM,
    },
    features::{self, KernelFeatures, Presence},
};

fn main() -> ExitCode {
    let log_lines: usize = std::env::args()
        .skip_while(|a| a != "--log-lines")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let kernel = KernelFeatures::probe();
    println!("kernel: {}", kernel.release);
    for (feature, presence) in &kernel.features {
        let state = match presence {
            Presence::Present => "yes".to_string(),
            Presence::Missing => "MISSING".to_string(),
            Presence::Unknown(why) => format!("unknown ({why})"),
        };
        println!(
            "feature | {} | {}.{} | {state}",
            feature.name, feature.since.0, feature.since.1
        );
    }
    // `--breakdown`: the bench's cut-short copies of the classifier too.
    let breakdown = std::env::args().any(|a| a == "--breakdown");
    match Datapath::load().and_then(|mut datapath| {
        if breakdown {
            for (name, _) in BREAKDOWN_PROGRAMS {
                datapath.load_program(name)?;
            }
        }
        Ok(datapath)
    }) {
        Ok(datapath) => {
            let extra = BREAKDOWN_PROGRAMS
                .iter()
                .map(|(name, _)| *name)
                .filter(|_| breakdown);
            for name in [MAIN_PROGRAM, FULL_PROGRAM, PASS_PROGRAM, TC_PROGRAM]
                .into_iter()
                .chain(extra)
            {
                let info = datapath.program_info(name);
                match info {
                    Ok(info) => println!(
                        "{name}: loaded; verified instructions {}, translated size {} bytes",
                        info.verified_instruction_count()
                            .map_or("unknown".to_string(), |n| n.to_string()),
                        info.size_translated().unwrap_or(0)
                    ),
                    Err(err) => println!("{name}: loaded; no program info ({err:#})"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("load failed: {err}");
            for cause in err.chain().skip(1) {
                // The verifier's output is the tail below, not part of a one-line cause.
                let first = cause.to_string();
                let first = first.lines().next().unwrap_or_default();
                println!("cause: {first}");
            }
            if let Some(log) = features::verifier_log(&err) {
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                for line in &lines[lines.len().saturating_sub(log_lines)..] {
                    println!("log | {line}");
                }
            }
            ExitCode::FAILURE
        }
    }
}
