//! The UDP echo service of the agent tests: `migr_testkit::agent_harness::echo_main`
//! (configured through `MIGR_ECHO_*`, see there).

fn main() {
    migr_testkit::agent_harness::echo_main();
}
