use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A network namespace that is deleted, with every process in it, on drop.
pub struct NetNs {
    name: String,
    children: Vec<Child>,
}

impl NetNs {
    pub fn new(tag: &str) -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("migr-t{}-{id}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self {
            name,
            children: Vec::new(),
        };
        // Quiet namespaces: no IPv6 autoconf or router solicitations to count.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "{args:?} in {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a process inside the namespace; it is killed when the namespace is dropped.
    pub fn spawn(&mut self, cmd: &mut Command) -> Result<u32> {
        let mut wrapped = Command::new("nsenter");
        wrapped
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        let child = wrapped
            .spawn()
            .with_context(|| format!("spawning {:?} in {}", cmd.get_program(), self.name))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Runs `f` on the current thread inside the namespace, then returns the
    /// thread to the namespace it was in. Sockets created in `f` stay in this
    /// namespace; XDP attach and interface lookups in `f` happen here.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let original = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        setns(&target)?;
        struct Restore(File);
        impl Drop for Restore {
            fn drop(&mut self) {
                // If this fails the thread is stranded in a test namespace; say so loudly.
                if let Err(e) = setns(&self.0) {
                    eprintln!("failed to return thread to its namespace: {e:#}");
                }
            }
        }
        let _restore = Restore(original);
        Ok(f())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything else still running in the namespace (started by a test helper).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) on a PID inside our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

fn setns(ns: &File) -> Result<()> {
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates a veth pair `a_if` (in `a`, address `a_addr`) <-> `b_if` (in `b`,
/// address `b_addr`), both up. Addresses are CIDR strings, e.g. "10.201.0.1/24".
pub fn veth_pair(
    a: &NetNs,
    a_if: &str,
    a_addr: &str,
    b: &NetNs,
    b_if: &str,
    b_addr: &str,
) -> Result<()> {
    run(Command::new("ip").args([
        "link",
        "add",
        "name",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))?;
    for (ns, dev, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Makes `dev` send fully checksummed packets, as frames from a real NIC
/// carry them: the tests that model a remote client use it. A veth offloads
/// checksums by default, so locally sent packets carry only a partial
/// (pseudo-header) checksum; migr handles those too (completed before a
/// replay, updated as partial on the TC forward path), and
/// `tests/tests/delivery.rs` and the testbed run with the defaults.
pub fn full_checksums(ns: &NetNs, dev: &str) -> Result<()> {
    ns.exec(&["ethtool", "-K", dev, "tx", "off"])
        .map(|_| ())
        .context("ethtool (run `cargo xtask setup`)")
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &NetNs, dev: &str) -> Result<[u8; 6]> {
    let text = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")])?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("unexpected MAC {text:?} for {dev}");
    }
    for (slot, part) in mac.iter_mut().zip(parts) {
        *slot = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// Is a namespace of this name present?
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// The index of `dev` in `ns`.
pub fn ifindex_of(ns: &NetNs, dev: &str) -> Result<u32> {
    let text = ns.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])?;
    Ok(text.trim().parse()?)
}

/// UDP datagrams the kernel of a namespace dropped outside any XDP program
/// (`/proc/net/snmp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpDrops {
    /// Sent, then refused by the device (`SndbufErrors`): a veth whose peer
    /// runs XDP queues at most 256 frames for it, and drops the rest while
    /// that side's CPU is busy elsewhere.
    pub sndbuf: u64,
    /// Received into a full socket buffer (`RcvbufErrors`).
    pub rcvbuf: u64,
}

/// The UDP drop counters of `ns`.
pub fn udp_drops(ns: &NetNs) -> Result<UdpDrops> {
    parse_udp_drops(&ns.exec(&["cat", "/proc/net/snmp"])?)
}

fn parse_udp_drops(snmp: &str) -> Result<UdpDrops> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let field = |name: &str| -> Result<u64> {
        let at = names
            .split_whitespace()
            .position(|n| n == name)
            .with_context(|| format!("no {name} in {names:?}"))?;
        let value = values
            .split_whitespace()
            .nth(at)
            .with_context(|| format!("no value for {name} in {values:?}"))?;
        Ok(value.parse()?)
    };
    Ok(UdpDrops {
        sndbuf: field("SndbufErrors")?,
        rcvbuf: field("RcvbufErrors")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_drops_are_read_by_column_name() {
        let snmp = "Ip: Forwarding\nIp: 1\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
            Udp: 10 0 3 12 2 253 0\n\
            UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            UdpLite: 0 0 0 0 7 7\n";
        assert_eq!(
            parse_udp_drops(snmp).unwrap(),
            UdpDrops {
                sndbuf: 253,
                rcvbuf: 2
            }
        );
        assert!(parse_udp_drops("Ip: Forwarding\nIp: 1\n").is_err());
        assert!(parse_udp_drops("Udp: InDatagrams\nUdp: 1\n").is_err());
    }
}
