//! The TCP+DNS baseline (seed 000, section 4): no steering, no transport
//! migration. The client reaches the service by name; when the server moves
//! to a new IP, the client keeps trying the address it cached until the DNS
//! record's TTL expires, then resolves again and opens a new connection.
//!
//! - The DNS server is dnsmasq (Debian's `dnsmasq-base`), run in the router
//!   namespace on the router's client-side address, answering from a hosts
//!   file only (`--no-resolv`, no `--server`: it forwards nothing anywhere),
//!   every answer with the TTL `--local-ttl`. The orchestration rewrites the
//!   hosts file and sends SIGHUP (dnsmasq rereads it) once the restore
//!   returned.
//! - The client (`migr-testbed dns-client`) sends its own A query over UDP
//!   (the wire format below), caches the answer for its TTL, and echoes 1 kB
//!   requests back to back over TCP, writing the same CSV as the other
//!   clients.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::proc::{Proc, Spawn};
use migr_testkit::netns::NetNs;

/// The service's name.
pub const NAME: &str = "echo.migr.test";
pub const DNS_PORT: u16 = 53;

// ---------------------------------------------------------------- wire format

/// An A query for `name` with recursion desired.
pub fn build_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    q
}

/// Skips a (possibly compressed) name at `pos`; returns the position after it.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize> {
    loop {
        let len = *msg.get(pos).context("truncated name")? as usize;
        if len & 0xc0 == 0xc0 {
            return Ok(pos + 2);
        }
        pos += 1;
        if len == 0 {
            return Ok(pos);
        }
        pos += len;
    }
}

/// The first A record of a response to query `id`: its address and TTL.
pub fn parse_response(id: u16, msg: &[u8]) -> Result<(Ipv4Addr, u32)> {
    if msg.len() < 12 {
        bail!("short DNS response ({} bytes)", msg.len());
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != id {
        bail!("DNS response for another query");
    }
    if msg[2] & 0x80 == 0 {
        bail!("not a DNS response");
    }
    let rcode = msg[3] & 0x0f;
    if rcode != 0 {
        bail!("DNS error, rcode {rcode}");
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    for _ in 0..an {
        pos = skip_name(msg, pos)?;
        let rr = msg.get(pos..pos + 10).context("truncated record")?;
        let (ty, class) = (
            u16::from_be_bytes([rr[0], rr[1]]),
            u16::from_be_bytes([rr[2], rr[3]]),
        );
        let ttl = u32::from_be_bytes([rr[4], rr[5], rr[6], rr[7]]);
        let len = u16::from_be_bytes([rr[8], rr[9]]) as usize;
        pos += 10;
        let data = msg.get(pos..pos + len).context("truncated record data")?;
        if ty == 1 && class == 1 && len == 4 {
            return Ok((Ipv4Addr::new(data[0], data[1], data[2], data[3]), ttl));
        }
        pos += len;
    }
    bail!("no A record in the DNS response")
}

/// One real query over UDP to `server`.
pub fn resolve(server: SocketAddr, name: &str, id: u16) -> Result<(Ipv4Addr, u32)> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let query = build_query(id, name);
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        sock.send_to(&query, server)?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == server => return parse_response(id, &buf[..n]),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("receiving the DNS response"),
        }
    }
    bail!("no answer from the DNS server {server}")
}

// ------------------------------------------------------------------ the cache

/// A stub resolver's cache of one name: the address, valid until its TTL
/// expires (times are the caller's clock, in milliseconds).
#[derive(Clone, Debug, Default)]
pub struct TtlCache {
    entry: Option<(Ipv4Addr, u64)>,
}

impl TtlCache {
    /// Stores an answer received at `now_ms` with `ttl_s`.
    pub fn store(&mut self, addr: Ipv4Addr, ttl_s: u32, now_ms: u64) {
        self.entry = Some((addr, now_ms + u64::from(ttl_s) * 1000));
    }

    /// The cached address while it is valid.
    pub fn get(&self, now_ms: u64) -> Option<Ipv4Addr> {
        self.entry
            .and_then(|(addr, expires)| (now_ms < expires).then_some(addr))
    }

    /// When the entry expires (None: nothing cached).
    pub fn expires_ms(&self) -> Option<u64> {
        self.entry.map(|(_, e)| e)
    }
}

// ----------------------------------------------------------------- the client

/// Back-to-back TCP echo requests to `name` (resolved via `dns`), until
/// `count` requests or `stop` exists. A broken connection is retried at the
/// cached address until the record expires, then the name is resolved again.
pub fn client(
    dns: SocketAddr,
    name: &str,
    port: u16,
    count: usize,
    size: usize,
    csv: &Path,
    stop: Option<&Path>,
) -> Result<()> {
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut cache = TtlCache::default();
    let mut queries = 0u16;
    let mut reconnects = 0usize;
    // For the summary: when the answer in use was received, when the
    // connection first broke (and that answer's age then), when the client
    // was connected again.
    let resolved_ms = std::cell::Cell::new(0u64);
    let (mut break_ms, mut age_ms, mut reconnect_ms) = (None, None, None);
    let mut out = super::stats::RequestCsv::create(csv, started)?;
    let stopped = || stop.is_some_and(Path::exists);
    // The address, from the cache or a fresh query.
    let mut lookup = |cache: &mut TtlCache| -> Result<Ipv4Addr> {
        if let Some(a) = cache.get(now_ms()) {
            return Ok(a);
        }
        queries = queries.wrapping_add(1);
        let (addr, ttl) = resolve(dns, name, queries)?;
        cache.store(addr, ttl, now_ms());
        resolved_ms.set(now_ms());
        eprintln!(
            "resolved {name} {addr} ttl={ttl} at_ms={}",
            started.elapsed().as_millis()
        );
        Ok(addr)
    };
    let connect = |addr: Ipv4Addr| -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(
            &SocketAddrV4::new(addr, port).into(),
            Duration::from_millis(200),
        )?;
        s.set_nodelay(true)?;
        // A client's own timeout: with the server gone and CRIU's network
        // lock dropping its packets, TCP alone would take minutes to give up.
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        Ok(s)
    };
    let mut conn: Option<(TcpStream, Ipv4Addr)> = None;
    let mut echo = vec![0u8; size];
    let mut sent = 0;
    let mut result = Ok(());
    'requests: for index in 0..count {
        if stopped() {
            break;
        }
        sent += 1;
        let request: Vec<u8> = (0..size).map(|i| (i + index) as u8).collect();
        let t_sent = Instant::now();
        loop {
            if conn.is_none() {
                let addr = lookup(&mut cache)?;
                match connect(addr) {
                    Ok(s) => {
                        eprintln!(
                            "connected {addr}:{port} at_ms={}",
                            started.elapsed().as_millis()
                        );
                        conn = Some((s, addr));
                        if break_ms.is_some() && reconnect_ms.is_none() {
                            reconnect_ms = Some(now_ms());
                        }
                    }
                    Err(_) => {
                        if stopped() {
                            result = Err(anyhow::anyhow!("request {index}: stopped, no server"));
                            break 'requests;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
            let (s, addr) = conn.as_mut().expect("connected");
            let addr = *addr;
            match s.write_all(&request).and_then(|()| s.read_exact(&mut echo)) {
                Ok(()) => {
                    let received = Instant::now();
                    if echo != request {
                        result = Err(anyhow::anyhow!("request {index}: the echo differs"));
                        break 'requests;
                    }
                    out.row(index, t_sent, received, format_args!("{addr}:{port}"))?;
                    break;
                }
                Err(e) => {
                    eprintln!(
                        "request {index} to {addr}: {e} at_ms={}; reconnecting",
                        started.elapsed().as_millis()
                    );
                    reconnects += 1;
                    if break_ms.is_none() {
                        break_ms = Some(now_ms());
                        age_ms = Some(now_ms() - resolved_ms.get());
                    }
                    conn = None;
                }
            }
        }
    }
    let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    eprintln!(
        "summary requests={sent} dns_queries={queries} reconnects={reconnects} \
         broke_at_ms={} record_age_at_break_ms={} reconnected_at_ms={}",
        opt(break_ms),
        opt(age_ms),
        opt(reconnect_ms)
    );
    result
}

pub fn main_client(args: &[String]) -> Result<()> {
    let arg = |name: &str| -> Result<Option<&str>> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(Some(
                args.get(i + 1)
                    .with_context(|| format!("{name} needs a value"))?,
            )),
            None => Ok(None),
        }
    };
    let dns = arg("--dns")?.context("--dns ADDR:PORT")?.parse()?;
    let name = arg("--name")?.unwrap_or(NAME);
    let port = arg("--port")?.context("--port PORT")?.parse()?;
    let count = arg("--count")?.unwrap_or("1000").parse()?;
    let size = arg("--size")?.unwrap_or("1024").parse()?;
    let csv = arg("--csv")?.context("--csv PATH")?;
    let stop = arg("--stop-file")?.map(Path::new);
    client(dns, name, port, count, size, Path::new(csv), stop)
}

// ----------------------------------------------------------------- the server

/// dnsmasq in a namespace, answering `NAME` from a hosts file; killed by PID
/// on drop.
pub struct DnsServer {
    proc: Proc,
    hosts: PathBuf,
    pub listen: SocketAddr,
}

impl DnsServer {
    pub fn start(ns: &NetNs, listen: Ipv4Addr, ttl_s: u32, addr: &str, dir: &Path) -> Result<Self> {
        let hosts = dir.join("dns-hosts");
        std::fs::write(&hosts, format!("{addr} {NAME}\n"))?;
        let log = dir.join("dnsmasq.log");
        let mut cmd = Command::new("dnsmasq");
        cmd.args(["--keep-in-foreground", "--conf-file=/dev/null"])
            .args([
                "--no-resolv",
                "--no-poll",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .arg(format!("--listen-address={listen}"))
            .arg(format!("--port={DNS_PORT}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--local-ttl={ttl_s}"))
            .args(["--user=root", "--pid-file", "--log-queries"])
            .arg(format!("--log-facility={}", log.display()));
        let proc = Proc::spawn(
            "dnsmasq",
            &mut cmd,
            Spawn {
                netns: Some(ns.name()),
                setsid: false,
                stdout: None,
                stderr: Some(&dir.join("dnsmasq.err")),
            },
        )?;
        let server = Self {
            proc,
            hosts,
            listen: SocketAddrV4::new(listen, DNS_PORT).into(),
        };
        Ok(server)
    }

    /// Points `NAME` at `addr` (dnsmasq rereads the hosts file on SIGHUP).
    pub fn update(&self, addr: &str) -> Result<()> {
        std::fs::write(&self.hosts, format!("{addr} {NAME}\n"))?;
        self.proc.signal(libc::SIGHUP);
        Ok(())
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_serves_until_the_ttl_expires() {
        let mut c = TtlCache::default();
        assert_eq!(c.get(0), None);
        let a = Ipv4Addr::new(10, 60, 11, 2);
        c.store(a, 5, 1_000);
        assert_eq!(c.get(1_000), Some(a));
        assert_eq!(c.get(5_999), Some(a));
        assert_eq!(c.get(6_000), None);
        assert_eq!(c.expires_ms(), Some(6_000));
        let b = Ipv4Addr::new(10, 60, 12, 2);
        c.store(b, 0, 7_000);
        assert_eq!(c.get(7_000), None, "TTL 0: not cached");
    }

    #[test]
    fn query_and_response_round_trip() {
        let q = build_query(0x1234, NAME);
        assert_eq!(&q[..2], &[0x12, 0x34]);
        // A response: the question, then an answer with a compressed name.
        let mut r = q.clone();
        r[2] = 0x85;
        r[3] = 0x80;
        r[7] = 1; // AN=1
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 60, 12, 2]);
        assert_eq!(
            parse_response(0x1234, &r).unwrap(),
            (Ipv4Addr::new(10, 60, 12, 2), 5)
        );
        assert!(parse_response(0x1235, &r).is_err());
        r[3] = 0x83; // NXDOMAIN
        assert!(parse_response(0x1234, &r).is_err());
    }
}
