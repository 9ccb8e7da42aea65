//! `cargo xtask demo`: the live-migration demo on the testbed
//! (docs/testbed.md). After `cargo xtask setup` (CRIU 4.1.1 and the tools)
//! it builds migr-agent, migrctl, migr-echo and migr-testbed, and runs
//! `migr-testbed demo`: the six-namespace topology, one back-to-back QUIC
//! migration of `migr-echo server` with real CRIU (P-Explicit client, cold
//! dump and restore into a new IP) with migr, then the same as users have it
//! without migr (no datapath, a client with QUIC's own loss recovery), a
//! short summary of each, and everything torn down again.

use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::{run, setup, testbed};

pub fn demo() -> Result<()> {
    let started = Instant::now();
    setup::setup()?;
    println!("[demo] building migr-agent, migrctl, migr-echo and migr-testbed (release)");
    testbed::build().context("building the demo's programs")?;
    run::status(std::process::Command::new(testbed::testbed_bin()).arg("demo"))
        .context("the demo failed (it removed what it had created)")?;
    println!(
        "[demo] finished in {:.0} s (setup and build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
