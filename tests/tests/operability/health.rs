//! `/healthz`, `/readyz` and `migrctl health` on a real agent.

use migr_testkit::{NetNs, agent_harness::*};

/// GET `path` from the agent's metrics listener in `ns`.
fn get(ns: &NetNs, addr: &str, path: &str) -> (String, String) {
    http_get(ns, addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// An agent that runs is alive and ready, and says why; once its interface
/// is deleted under it, it is still alive but not ready, the failed check
/// names the interface, and `migrctl health` exits 1.
#[test]
fn readiness_follows_the_attachment_and_liveness_the_engine() {
    const METRICS: &str = "127.0.0.1:9466";
    let t = Topology::new(false, &["--metrics", METRICS]);
    let (status, body) = get(&t.src, METRICS, "/healthz");
    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
    assert_eq!(body, "ok\n");
    let (status, body) = get(&t.src, METRICS, "/readyz");
    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
    for check in ["attached", "maps_pinned", "ring_drained", "services"] {
        assert!(body.contains(&format!("[+]{check} ok")), "{check}: {body}");
    }
    assert!(body.contains("xdp on v-sc"), "{body}");
    let said = t.src_agent.ok(&["health"]);
    assert!(said.contains("attached") && said.contains("ok"), "{said}");
    let (status, _) = get(&t.src, METRICS, "/nothing");
    assert_eq!(status, "HTTP/1.0 404 Not Found");

    // The interface goes away: the kernel detaches the program.
    t.src.ip(&["link", "del", "v-sc"]).unwrap();
    let (status, body) = get(&t.src, METRICS, "/readyz");
    assert_eq!(status, "HTTP/1.0 503 Service Unavailable", "{body}");
    assert!(
        body.contains("[-]attached failed: xdp on v-sc: detached"),
        "{body}"
    );
    assert!(body.ends_with("not ready\n"), "{body}");
    let (status, _) = get(&t.src, METRICS, "/healthz");
    assert_eq!(status, "HTTP/1.0 200 OK", "alive all the same");
    let out = t.src_agent.ctl(&["health"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("FAILED"), "{said}");
    println!("readyz after the interface was deleted:\n{body}");
}
