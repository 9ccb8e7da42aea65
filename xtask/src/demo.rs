//! `cargo xtask demo`: the live-migration demo on the testbed
//! (docs/testbed.md). It runs `cargo xtask setup` (CRIU 4.1.1 and the tools),
//! builds migr-agent, migrctl, migr-echo and migr-testbed, and runs
//! `migr-testbed demo`: the six-namespace topology, a QUIC and a plain UDP
//! service, each in a podman container, moved by podman's checkpoint and
//! restore (runc and CRIU, cold, same IP) between two nodes with their own
//! podman storage, with clients that know nothing of migr, once with
//! migr and once as users have it without (no datapath), a short summary of
//! each, and everything torn down again.

use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::{run, setup, testbed};

pub fn demo() -> Result<()> {
    let started = Instant::now();
    setup::setup()?;
    println!("[demo] building migr-agent, migrctl, migr-echo and migr-testbed (release)");
    let programs = testbed::build().context("building the demo's programs")?;
    run::status(std::process::Command::new(&programs.testbed).arg("demo"))
        .context("the demo failed (it removed what it had created)")?;
    println!(
        "[demo] finished in {:.0} s (setup and build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
