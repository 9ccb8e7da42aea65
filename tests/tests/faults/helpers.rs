//! What the fault suites share: requests on the raw socket, raw frames, memory and map readings.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use migr_testkit::{NetNs, agent_harness::*, netns::ifindex_of};
use serde_json::{Value, json};

/// Sends `n` requests in chunks of 50, so as not to outrun the veth's ring.
pub fn send_paced(client: &UdpClient, n: usize) {
    let mut left = n;
    while left > 0 {
        let k = left.min(50);
        client.send(k);
        left -= k;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Brings the destination's end of the link up again, with the route the
/// link's going down removed.
pub fn link_up(dst: &NetNs) {
    dst.ip(&["link", "set", "v-ds", "up"]).unwrap();
    dst.ip(&["route", "replace", "default", "via", "10.41.2.1"])
        .unwrap();
}

pub fn reasons(agent: &Agent) -> Value {
    agent.json(&["stats"])["reasons"].clone()
}

pub fn reason(agent: &Agent, name: &str) -> u64 {
    let reasons = reasons(agent);
    reasons[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no reason {name} in the stats: {reasons}"))
}

/// One connection to an agent's control socket, speaking the raw protocol
/// (several requests in flight, as an orchestrator may send them).
pub struct Api {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Api {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect to the agent");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Self { stream, reader }
    }

    /// Writes every request, then reads one response per request, in order.
    pub fn pipeline(&mut self, requests: &[Value]) -> Vec<Value> {
        let mut out = Vec::new();
        for r in requests {
            out.extend_from_slice(r.to_string().as_bytes());
            out.push(b'\n');
        }
        self.stream.write_all(&out).unwrap();
        (0..requests.len())
            .map(|_| {
                let mut line = String::new();
                self.reader.read_line(&mut line).expect("a response line");
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
            })
            .collect()
    }

    pub fn call(&mut self, request: Value) -> Value {
        self.pipeline(&[request]).remove(0)
    }
}

pub fn request(op: &str, args: Value) -> Value {
    json!({"v": 1, "op": op, "args": args})
}

/// Sends raw bytes on a fresh connection; returns the response line (parsed)
/// and whether the agent closed the connection after it.
pub fn raw_bytes(socket: &Path, bytes: &[u8]) -> (Value, bool) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent may answer and close before it has read everything.
    let _ = s.write_all(bytes);
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while !text.ends_with(b"\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer to {} bytes: {e}", bytes.len()),
        }
    }
    let v: Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&text)));
    let _ = s.shutdown(std::net::Shutdown::Write);
    let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
    (v, closed)
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Entries of a pinned hash map of u32 keys and values.
pub fn pinned_u32_entries(pin_dir: &Path, map: &str) -> usize {
    let data = aya::maps::MapData::from_pin(migr_user::pin_layout::maps_dir(pin_dir).join(map))
        .expect("the pinned map");
    let map = aya::maps::Map::from_map_data(data).unwrap();
    let hash = aya::maps::HashMap::<_, u32, u32>::try_from(map).unwrap();
    hash.keys().filter(Result::is_ok).count()
}

/// User plus system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may contain spaces): state is 3rd, utime 14th, stime 15th.
    let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// A raw (AF_PACKET) socket on one interface of a namespace: whole frames,
/// as a NIC would receive them.
pub struct PacketSocket {
    fd: libc::c_int,
    addr: libc::sockaddr_ll,
}

impl PacketSocket {
    pub fn new(ns: &NetNs, dev: &str) -> Self {
        let ifindex = ifindex_of(ns, dev).unwrap();
        let fd = ns
            .run(|| {
                // SAFETY: plain socket(2).
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) }
            })
            .unwrap();
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: zeroed sockaddr_ll is valid; the fields are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        Self { fd, addr }
    }

    /// Sends one frame; false if the kernel refused it (e.g. a full queue).
    pub fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: sendto with a valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        n == frame.len() as isize
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str, mode: u32) -> Self {
        let path = std::env::temp_dir().join(format!("migr-t{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fields of a service status that only the control plane may change.
pub fn control_state(svc: &Value) -> Value {
    json!({
        "spec": svc["spec"],
        "state": svc["state"],
        "role": svc["role"],
        "datapath": svc["datapath"],
        "timeline": svc["timeline"],
    })
}

/// Services `a` (id 1) and `b` (id 2) on UDP ports `port` and `port + 1` of
/// the source, both served by one echo process named `tag`. Returns the
/// process and the two addresses.
pub fn two_udp_services(t: &Topology, port: u16, tag: &str) -> (Proc, String, String) {
    let (a_addr, b_addr) = (format!("{SRC_IP}:{port}"), format!("{SRC_IP}:{}", port + 1));
    let echo = start_echo_on(
        &t.src,
        &[a_addr.clone(), b_addr.clone()],
        tag,
        &t.scratch(),
        &[],
    );
    for (id, name, addr) in [("1", "a", &a_addr), ("2", "b", &b_addr)] {
        t.src_agent
            .ok(&["service", "add", "--id", id, "--name", name, "--udp", addr]);
    }
    (echo, a_addr, b_addr)
}
