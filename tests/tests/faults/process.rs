//! The agent process: its open-file limit, its bpffs, an engine panic.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use migr_common::maps::{ReplaySlot, map_names};
use migr_testkit::agent_harness::*;
use serde_json::{Value, json};

use crate::helpers::*;

/// Under a supervisor's low soft limit of open files (64), the agent raises
/// it to the hard limit and so takes a hundred services, each of which holds
/// two files.
#[test]
fn a_low_open_file_limit_is_raised_so_a_hundred_services_fit() {
    const N: u16 = 100;
    let mut t = Topology::build(false, &[], false);
    t.src_agent.nofile = Some(64);
    t.src_agent.start(&t.src);
    let mut api = Api::connect(&t.src_agent.socket);
    let adds: Vec<Value> = (0..N)
        .map(|i| {
            request(
                "service.add",
                json!({
                    "id": 300 + i,
                    "name": format!("f{i}"),
                    "rules": [{"proto": "udp", "addr": format!("{SRC_IP}:{}", 8100 + i)}],
                }),
            )
        })
        .collect();
    for r in api.pipeline(&adds) {
        assert_eq!(r["ok"], true, "{r}");
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", t.src_agent.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    println!("soft limit 64 raised to 4096; {N} services added");
}

/// `ip netns exec` gives the agent a mount namespace of its own with a fresh
/// /sys: a bpffs it mounted there would vanish with it, and the pinned
/// datapath and parked frames with it. The agent refuses and says how to run
/// instead; under `nsenter --net` (the harness's way) it serves.
#[test]
fn an_agent_in_a_private_mount_namespace_refuses_a_bpffs_that_dies_with_it() {
    let t = Topology::build(false, &[], false);
    let mut args = t.src_agent.args.clone();
    args.insert(0, bins().agent.to_str().unwrap().to_string());
    let mut child = Command::new("ip")
        .args(["netns", "exec", t.src.name()])
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent served under `ip netns exec` instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("nsenter --net"),
        "the refusal says what to do: {err}"
    );
    assert!(!t.src_agent.pin_dir.exists(), "nothing was pinned");
    println!(
        "ip netns exec: refused ({status}): {}",
        err.lines().last().unwrap_or("")
    );
}

/// The engine thread panics (a test hook makes it panic on `stats`): the
/// agent must exit with a failure status, so that its supervisor restarts
/// it, rather than live on answering every request with an error. The
/// pinned datapath goes on parking meanwhile, and the restarted agent has
/// the service and its parked frames.
#[test]
fn an_engine_panic_ends_the_agent_with_a_failure_status() {
    let mut t = Topology::build(false, &[], false);
    t.src_agent
        .env
        .push(("MIGR_TEST_ENGINE_PANIC".into(), "1".into()));
    t.src_agent.start(&t.src);
    let addr = format!("{SRC_IP}:7500");
    let echo = start_echo_on(
        &t.src,
        std::slice::from_ref(&addr),
        "panic",
        &t.scratch(),
        &[],
    );
    t.src_agent
        .ok(&["service", "add", "--id", "3", "--name", "p", "--udp", &addr]);
    t.src_agent.phase("p", "freeze");
    let stats = t.src_agent.ctl(&["stats"]);
    assert!(
        !stats.status.success(),
        "stats answered although the engine panicked"
    );
    let mut status = None;
    wait_for(Duration::from_secs(10), "the agent to exit", || {
        let p = t.src_agent.proc.as_mut().expect("started");
        status = p.child.try_wait().expect("wait for the agent");
        status.is_some()
    });
    let status = status.expect("exited");
    assert_eq!(status.code(), Some(1), "{status}");
    let log = t.src_agent.log_text();
    assert!(log.contains("the engine thread panicked"), "{log}");
    t.src_agent.proc = None;
    let client = UdpClient::new(&t.client, &addr);
    client.send(5);
    t.src_agent.env.clear();
    t.src_agent.start(&t.src);
    let s = t.src_agent.service("p");
    assert_eq!(s["state"], "frozen", "{s}");
    t.src_agent.phase("p", "abort");
    let answers = client.wait_answers(5, Duration::from_secs(5));
    assert_eq!(
        answers.len(),
        5,
        "parked while no agent ran, replayed after: {answers:?}"
    );
    println!(
        "engine panic: agent exited with {status}; 5 of 5 frames parked meanwhile were replayed"
    );
    t.procs.push(echo);
}

/// Maps pinned by an agent of another map layout, or from before layouts
/// were versioned, are refused: the agent exits, says which layouts meet
/// and what to do, and leaves the old maps alone (they may hold parked
/// frames). After `migr-agent cleanup` it starts.
#[test]
fn an_agent_refuses_maps_pinned_under_another_layout() {
    use migr_common::layout::MAP_LAYOUT_VERSION;
    use migr_user::pin_layout::maps_dir;

    let mut t = Topology::new(false, &[]);
    t.src_agent
        .add_udp_service(3, "kept", &format!("{SRC_IP}:{PORT}"));
    t.src_agent.terminate();
    let ours = maps_dir(&t.src_agent.pin_dir);
    assert!(ours.join("SERVICES").exists(), "the maps stay pinned");
    let newer = MAP_LAYOUT_VERSION + 1;
    let other = t.src_agent.pin_dir.join(format!("maps-v{newer}"));
    std::fs::rename(&ours, &other).unwrap();

    let (status, log) = t.src_agent.start_refused(&t.src);
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("map layout {newer}")), "{log}");
    assert!(
        log.contains(&format!("uses map layout {MAP_LAYOUT_VERSION}")),
        "{log}"
    );
    assert!(log.contains("migr-agent cleanup --pin-dir"), "{log}");
    assert!(
        other.join("SERVICES").exists(),
        "the other maps are left alone"
    );
    assert!(!ours.exists(), "nothing pinned beside them");

    // Maps pinned straight in the pin directory: a build before versions.
    for entry in std::fs::read_dir(&other).unwrap() {
        let entry = entry.unwrap();
        std::fs::rename(entry.path(), t.src_agent.pin_dir.join(entry.file_name())).unwrap();
    }
    std::fs::remove_dir(&other).unwrap();
    let (status, log) = t.src_agent.start_refused(&t.src);
    assert!(!status.success(), "{log}");
    assert!(log.contains("before map layouts were versioned"), "{log}");

    let cleanup = Command::new(&bins().agent)
        .args(["cleanup", "--pin-dir"])
        .arg(&t.src_agent.pin_dir)
        .arg("--state-dir")
        .arg(&t.src_agent.state_dir)
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(!t.src_agent.pin_dir.exists());
    t.src_agent.start(&t.src);
    assert!(ours.join("SERVICES").exists());
    println!(
        "maps of layout {newer} and unversioned maps refused; started after cleanup. {}",
        log.lines()
            .find(|l| l.contains("cannot read them"))
            .unwrap_or("")
    );
}

/// A package upgrade of the same map layout, as its maintainer script does
/// it: the old executable (a copy here, at another path) is stopped with
/// SIGTERM while a frozen service has frames parked, frames keep coming
/// while no agent runs, and the new executable starts on the same pins and
/// state. Every parked frame is replayed once, in order, after the abort.
#[test]
fn an_upgrade_in_place_keeps_every_parked_frame() {
    const PARKED: usize = 300;
    const WHILE_DOWN: usize = 40;
    let mut t = Topology::build(false, &["--keep-attached"], false);
    let old = t.scratch().join("migr-agent-old");
    std::fs::copy(&bins().agent, &old).unwrap();
    t.src_agent.program = Some(old.clone());
    t.src_agent.start(&t.src);
    let echo = start_echo(&t.src, SRC_IP, "src", &t.scratch());
    t.src_agent
        .add_udp_service(9, "kept", &format!("{SRC_IP}:{PORT}"));
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    client.send(3);
    assert_eq!(client.wait_answers(3, Duration::from_secs(5)).len(), 3);
    t.src_agent.phase("kept", "freeze");
    send_paced(&client, PARKED);
    wait_for(Duration::from_secs(10), "the parked frames stored", || {
        num(&t.src_agent.service("kept"), &["parked", "stored_frames"]) == PARKED as u64
    });
    t.src_agent.terminate();
    send_paced(&client, WHILE_DOWN);
    t.src_agent.program = None;
    t.src_agent.start(&t.src);
    assert!(
        !t.src_agent.log_text().is_empty() && t.src_agent.service("kept")["state"] == "frozen",
        "the new agent has the service, frozen"
    );
    t.src_agent.phase("kept", "abort");
    let total = 3 + PARKED + WHILE_DOWN;
    let answers = client.wait_answers(total, Duration::from_secs(20));
    let (at_src, _) = check_answers(&answers, total as u64);
    assert_eq!(at_src.len(), total);
    let s = t.src_agent.service("kept");
    assert_eq!(
        num(&s, &["replay", "replayed_frames"]),
        (PARKED + WHILE_DOWN) as u64,
        "{s}"
    );
    println!(
        "upgrade in place: {PARKED} frames parked before the old agent stopped, {WHILE_DOWN} while none ran; \
         all {total} requests answered once, in order, by the new one"
    );
    t.procs.push(echo);
}

/// An agent that finds `REPLAY_SLOTS` pinned with 64 slots (as agents
/// before the 256-slot batches pinned it) replays through it in batches of
/// 64: every one of 300 parked frames arrives once, in order, none fails.
#[test]
fn replay_slots_pinned_by_an_older_agent_size_the_batches() {
    const PARKED: usize = 300;
    let mut t = Topology::build(false, &["--replay-rate", "0"], false);
    let maps = migr_user::pin_layout::maps_dir(&t.src_agent.pin_dir);
    std::fs::create_dir_all(&maps).unwrap();
    pin_array(
        &maps.join(map_names::REPLAY_SLOTS),
        size_of::<ReplaySlot>() as u32,
        64,
        BPF_F_MMAPABLE,
    );
    t.src_agent.start(&t.src);
    let echo = start_echo(&t.src, SRC_IP, "src", &t.scratch());
    t.src_agent
        .add_udp_service(9, "old-slots", &format!("{SRC_IP}:{PORT}"));
    let client = UdpClient::new(&t.client, &format!("{SRC_IP}:{PORT}"));
    t.src_agent.phase("old-slots", "freeze");
    send_paced(&client, PARKED);
    wait_for(Duration::from_secs(10), "the parked frames stored", || {
        num(
            &t.src_agent.service("old-slots"),
            &["parked", "stored_frames"],
        ) == PARKED as u64
    });
    t.src_agent.phase("old-slots", "abort");
    let answers = client.wait_answers(PARKED, Duration::from_secs(20));
    let (at_src, _) = check_answers(&answers, PARKED as u64);
    assert_eq!(at_src.len(), PARKED);
    let s = t.src_agent.service("old-slots");
    assert_eq!(
        (
            num(&s, &["replay", "replayed_frames"]),
            num(&s, &["replay", "failed_frames"]),
            num(&s, &["replay", "retries"]),
        ),
        (PARKED as u64, 0, 0),
        "{s}"
    );
    t.procs.push(echo);
}

const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Creates an array map of `entries` values of `value_size` bytes and pins
/// it at `path` (what an older agent left there).
fn pin_array(path: &std::path::Path, value_size: u32, entries: u32, flags: u32) {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    /// `union bpf_attr` for BPF_MAP_CREATE: the fields used, then zeros.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        rest: [u32; 27],
    }
    /// `union bpf_attr` for BPF_OBJ_PIN.
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        rest: [u64; 6],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: entries,
        map_flags: flags,
        rest: [0; 27],
    };
    // SAFETY: the attribute has the kernel's layout for BPF_MAP_CREATE.
    let fd = unsafe { migr_user::bpf_sys::bpf(BPF_MAP_CREATE, &create) }
        .expect("BPF_MAP_CREATE of the old REPLAY_SLOTS") as u32;
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let pin = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd,
        file_flags: 0,
        rest: [0; 6],
    };
    // SAFETY: as above for BPF_OBJ_PIN; `path` outlives the call.
    unsafe { migr_user::bpf_sys::bpf(BPF_OBJ_PIN, &pin) }.expect("BPF_OBJ_PIN");
    // SAFETY: our descriptor; the pin holds the map.
    unsafe { libc::close(fd as i32) };
}
