//! A delay line for kernels without netem: a namespace between two hosts
//! whose two interfaces are bridged by this process, frame by frame, through
//! packet sockets, each direction with its own delay. Layer 2 transparent
//! (the hosts see each other's MACs), no addresses in the middle.
//!
//! The latency preset uses it (tests/src/testbed/topology.rs): this
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

use crate::{NetNs, netns::ifindex_of};

const ETH_P_ALL: u16 = 0x0003;
/// linux/if_packet.h.
const PACKET_VNET_HDR: libc::c_int = 15;
const MAX_FRAME: usize = 65_536;

/// Bridges `a` and `b` (interfaces of `ns`) until dropped: frames that
/// arrive on `a` leave on `b` after `a_to_b`, and the other way round.
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Frames that could not be sent (e.g. larger than the MTU).
    pub failed: Arc<AtomicU64>,
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
        let failed = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for (from, to, delay) in [(sa.clone(), sb.clone(), a_to_b), (sb, sa, b_to_a)] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (stop_r, failed_r) = (stop.clone(), failed.clone());
            let to_r = to.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; MAX_FRAME];
                while !stop_r.load(Ordering::Relaxed) {
                    let Some(n) = receive(&from, &mut buf) else {
                        continue;
                    };
                    if delay.is_zero() {
                        if !send(&to_r, &buf[..n]) {
                            failed_r.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }));
            let failed_w = failed.clone();
            threads.push(std::thread::spawn(move || {
                // Frames leave in arrival order, each at its due time.
                while let Ok((due, frame)) = rx.recv() {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if !send(&to, &frame) {
                        failed_w.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Self {
            stop,
            threads,
            failed,
        })
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
