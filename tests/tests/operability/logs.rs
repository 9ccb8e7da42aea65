//! The datapath's opt-in debug logs (`migr-agent run --datapath-log`).

use std::time::Duration;

use migr_testkit::agent_harness::*;

/// With `--datapath-log debug` the program's verdicts on a service's frames
/// reach the agent's log (passed while it serves, parked while it is
/// frozen); with the default, off, none does.
#[test]
fn datapath_verdicts_reach_the_agent_log_only_when_asked() {
    let on = Topology::new(false, &["--datapath-log", "debug"]);
    on.src_agent
        .add_udp_service(5, "logged", &format!("{SRC_IP}:{PORT}"));
    let client = UdpClient::new(&on.client, &format!("{SRC_IP}:{PORT}"));
    client.send(3);
    wait_for(Duration::from_secs(5), "a logged pass verdict", || {
        on.src_agent.log_text().contains("service 5: pass (")
    });
    on.src_agent.phase("logged", "freeze");
    client.send(2);
    wait_for(Duration::from_secs(5), "a logged park verdict", || {
        on.src_agent.log_text().contains("service 5: park (")
    });
    let log = on.src_agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("datapath") && l.contains("service 5: pass (")),
        "under the target `datapath`:\n{log}"
    );

    let off = Topology::new(false, &[]);
    off.src_agent
        .add_udp_service(5, "quiet", &format!("{SRC_IP}:{PORT}"));
    let client = UdpClient::new(&off.client, &format!("{SRC_IP}:{PORT}"));
    client.send(3);
    wait_for(Duration::from_secs(5), "three passed frames", || {
        verdict(&off.src_agent.service("quiet"), "pass") >= 3
    });
    // The agent's loop drains logs every turn; give it a few.
    std::thread::sleep(Duration::from_millis(200));
    let log = off.src_agent.log_text();
    assert!(
        !log.contains("service 5:"),
        "logs are off by default:\n{log}"
    );
}
