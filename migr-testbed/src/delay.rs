//! A delay line for kernels without netem: a namespace between two hosts
//! whose two interfaces are bridged by this process, frame by frame, through
//! packet sockets, each direction with its own delay. Layer 2 transparent
//! (the hosts see each other's MACs), no addresses in the middle.
//!
//! The latency preset uses it (migr-testbed/src/topology.rs): this
//! project's kernel has no netem and no fq, so `tc` cannot delay packets.
//!
//! Both sockets carry a virtio-net header (PACKET_VNET_HDR) in front of each
//! frame, which this process hands on untouched: a frame whose checksum its
//! sender left to offload, or a TSO/GRO super-frame, leaves as it came, the
//! way a veth passes it. Without it such frames would leave with a partial
//! checksum that no one completes, or not at all (larger than the MTU).

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use migr_testkit::{NetNs, netns::ifindex_of};

const ETH_P_ALL: u16 = 0x0003;
/// linux/if_packet.h.
const PACKET_VNET_HDR: libc::c_int = 15;
const MAX_FRAME: usize = 65_536;

/// Bridges `a` and `b` (interfaces of `ns`) until dropped: frames that
/// arrive on `a` leave on `b` after `a_to_b`, and the other way round.
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    sockets: [Arc<Socket>; 2],
    counts: Arc<Counts>,
}

/// What a delay line did to the frames it carried, so that a run can show
/// its delay held (the dump's image transfer loads it most).
#[derive(Default)]
struct Counts {
    /// Frames that could not be sent (e.g. larger than the MTU).
    failed: AtomicU64,
    /// Frames sent, and how late after their due time: the largest lateness
    /// and how many left more than [`LATE`] after it.
    sent: AtomicU64,
    max_late_us: AtomicU64,
    late: AtomicU64,
}

/// A frame that leaves this much after its due time counts as late.
const LATE: Duration = Duration::from_millis(1);

/// A delay line's account (see [`DelayLine::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayStats {
    pub sent: u64,
    pub failed: u64,
    /// Frames the kernel dropped before the delay line read them (its
    /// packet sockets' receive buffers were full: PACKET_STATISTICS).
    pub dropped: u64,
    pub late: u64,
    pub max_late_us: u64,
}

impl DelayStats {
    pub fn combined(self, o: Self) -> Self {
        Self {
            sent: self.sent + o.sent,
            failed: self.failed + o.failed,
            dropped: self.dropped + o.dropped,
            late: self.late + o.late,
            max_late_us: self.max_late_us.max(o.max_late_us),
        }
    }
}

struct Socket {
    fd: OwnedFd,
    ifindex: i32,
}

fn packet_socket(ns: &NetNs, dev: &str) -> Result<Socket> {
    let ifindex = ifindex_of(ns, dev)? as i32;
    let fd = ns.run(|| {
        // SAFETY: socket(2) with constant arguments.
        unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                (ETH_P_ALL).to_be() as i32,
            )
        }
    })?;
    if fd < 0 {
        bail!("packet socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just got and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_ll, filled in.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = ifindex;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        bail!(
            "binding a packet socket to {dev}: {}",
            std::io::Error::last_os_error()
        );
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    let big: libc::c_int = 8 << 20;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with an int on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc != 0 {
        bail!(
            "PACKET_VNET_HDR on {dev}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: setsockopt with values of the right types.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
    }
    Ok(Socket { fd, ifindex })
}

fn send(sock: &Socket, frame: &[u8]) -> bool {
    // SAFETY: send(2) of a buffer we own on a bound packet socket.
    let n = unsafe { libc::send(sock.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    n == frame.len() as isize
}

/// Receives one frame that arrived on the socket's interface (not one this
/// process sent out of it); None on timeout.
fn receive(sock: &Socket, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: recvfrom into our buffer and a zeroed sockaddr_ll.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as u32;
    let n = unsafe {
        libc::recvfrom(
            sock.fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    };
    if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING || from.sll_ifindex != sock.ifindex {
        return None;
    }
    Some(n as usize)
}

impl DelayLine {
    pub fn start(ns: &NetNs, a: &str, b: &str, a_to_b: Duration, b_to_a: Duration) -> Result<Self> {
        let sa = Arc::new(packet_socket(ns, a).with_context(|| format!("delay line {a}"))?);
        let sb = Arc::new(packet_socket(ns, b).with_context(|| format!("delay line {b}"))?);
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let sockets = [sa.clone(), sb.clone()];
        let mut threads = Vec::new();
        for (from, to, delay) in [(sa.clone(), sb.clone(), a_to_b), (sb, sa, b_to_a)] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (stop_r, counts_r) = (stop.clone(), counts.clone());
            let to_r = to.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; MAX_FRAME];
                while !stop_r.load(Ordering::Relaxed) {
                    let Some(n) = receive(&from, &mut buf) else {
                        continue;
                    };
                    if delay.is_zero() {
                        counts_r.sent(send(&to_r, &buf[..n]), Duration::ZERO);
                    } else if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }));
            let counts_w = counts.clone();
            threads.push(std::thread::spawn(move || {
                // Frames leave in arrival order, each at its due time.
                while let Ok((due, frame)) = rx.recv() {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let late = Instant::now().saturating_duration_since(due);
                    counts_w.sent(send(&to, &frame), late);
                }
            }));
        }
        Ok(Self {
            stop,
            threads,
            sockets,
            counts,
        })
    }

    /// The account so far. Reading the kernel's drop counters resets them:
    /// each call reports the drops since the previous one.
    pub fn stats(&self) -> DelayStats {
        let c = &self.counts;
        DelayStats {
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: self.sockets.iter().map(|s| kernel_drops(s)).sum(),
            late: c.late.load(Ordering::Relaxed),
            max_late_us: c.max_late_us.load(Ordering::Relaxed),
        }
    }
}

impl Counts {
    fn sent(&self, ok: bool, late: Duration) {
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        if late > LATE {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
        self.max_late_us
            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Frames the kernel dropped on `sock` since the last call
/// (PACKET_STATISTICS, which resets on read). A failed call counts as
/// `u64::MAX`: an unknown drop count must not read as none.
fn kernel_drops(sock: &Socket) -> u64 {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt into a tpacket_stats of the right size.
    let rc = unsafe {
        libc::getsockopt(
            sock.fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        u64::from(st.tp_drops)
    } else {
        u64::MAX
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
