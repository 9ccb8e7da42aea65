//! Which container CRIU is dumping or restoring, from the cgroups of its
//! init (`/proc/$CRTOOLS_INIT_PID/cgroup`): under runc and podman CRIU runs
//! over RPC and its action script learns nothing else about the container.
//! Runtimes name a container's cgroup after its id: `/<id>` or
//! `…/runc-<id>.scope` (runc), `…/libpod-<id>.scope` (podman),
//! `…/docker-<id>.scope`, `…/cri-containerd-<id>.scope`, `…/crio-<id>.scope`.
//! A service registered for a container (`--container ID`) is found when one
//! of those names carries its id, or, for an id of 12 hex digits or more (a
//! short id, as podman and docker print them), begins with it.

/// Prefixes and the suffix runtimes put around a container id in a cgroup's
/// last path component.
const PREFIXES: [&str; 6] = [
    "libpod-",
    "runc-",
    "docker-",
    "cri-containerd-",
    "crio-",
    "containerd-",
];
const SUFFIX: &str = ".scope";
/// The shortest id prefix accepted as a short id.
const SHORT_ID: usize = 12;

/// The candidate container ids the cgroup file names: every component of
/// every path, without a runtime's prefix and `.scope` (every component,
/// not only the last: podman puts the container's processes in a child
/// group, `…/libpod-<id>.scope/container`).
pub fn ids_in_cgroups(cgroup_text: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for line in cgroup_text.lines() {
        // hierarchy-ID:controllers:path
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for part in path.split('/').filter(|c| !c.is_empty()) {
            let part = part.strip_suffix(SUFFIX).unwrap_or(part);
            let id = PREFIXES
                .iter()
                .find_map(|p| part.strip_prefix(p))
                .unwrap_or(part);
            if !id.is_empty() && !ids.iter().any(|i| i == id) {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

/// Whether `key` (a service's `container`) names one of `ids`.
pub fn names(key: &str, ids: &[String]) -> bool {
    let short = key.len() >= SHORT_ID && key.bytes().all(|b| b.is_ascii_hexdigit());
    ids.iter()
        .any(|id| id == key || (short && id.len() > key.len() && id.starts_with(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODMAN_ID: &str = "4f1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938271605f4e3d2c1b0a99";

    #[test]
    fn runtimes_cgroup_names_give_the_container_id() {
        // runc with cgroupfs (v1, hybrid): the id is the path's last component.
        let runc = "12:freezer:/web1\n11:memory:/web1\n0::/web1\n";
        assert_eq!(ids_in_cgroups(runc), vec!["web1".to_string()]);
        // podman under systemd, cgroup v2: the processes sit in a child group.
        let podman = format!("0::/machine.slice/libpod-{PODMAN_ID}.scope/container\n");
        assert_eq!(
            ids_in_cgroups(&podman),
            vec!["machine.slice", PODMAN_ID, "container"]
        );
        let docker = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(ids_in_cgroups(docker), vec!["system.slice", "abc"]);
        assert_eq!(ids_in_cgroups("garbage\n::\n0::/\n"), Vec::<String>::new());
    }

    #[test]
    fn a_key_names_its_container_by_id_or_short_id_only() {
        let ids = vec![PODMAN_ID.to_string(), "web1".to_string()];
        assert!(names("web1", &ids));
        assert!(names(PODMAN_ID, &ids));
        assert!(names(&PODMAN_ID[..12], &ids), "a short id");
        assert!(!names(&PODMAN_ID[..8], &ids), "too short to be an id");
        assert!(!names("web", &ids), "a name is not a prefix match");
        assert!(!names("web2", &ids));
        assert!(!names("", &ids));
    }
}
