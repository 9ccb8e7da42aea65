//! Back-pressure for a local replay: how full the service's UDP sockets are.
//!
//! A replay turns what arrived over hundreds of milliseconds into a burst of
//! microseconds, and a replayed frame costs a receive buffer a whole page
//! (live frames are page-sized skbs), so a socket with Linux's default
//! 208 KiB buffer overflows at about 50 frames while the service, just
//! restored, is still warming up. Its kernel then drops the datagrams (UDP
//! `RcvbufErrors`), after migr counted them replayed, and the client's
//! transport declares them lost. A token bucket cannot know how fast the
//! service reads; its sockets' receive queues can: `/proc/PID/net/udp` (and
//! `udp6`) of any process in the service's network namespace lists every
//! socket's `rx_queue` (bytes charged to its receive buffer) and `drops`.
//!
//! Parsing and the policy are pure; [`SocketWatch::read`] is the only I/O.

use std::io;

/// Charged to a receive buffer per replayed frame, rounded up: a page and
/// the skb around it, whatever the datagram's size. Measured on Linux 6.18
/// (tests/tests/agent.rs, `a_replay_waits_for_a_full_socket_and_loses_nothing`):
/// 25 replayed 20-byte datagrams queued 106,000 bytes, 4,240 each.
pub const REPLAYED_FRAME_CHARGE: u64 = 4_608;

/// The replay only fills a service's socket up to this many bytes: half of
/// Linux's default receive buffer (`net.core.rmem_default`, 208 KiB), so a
/// socket nobody enlarged never overflows and one fresh datagram from a
/// client still fits beside the replayed ones.
pub const REPLAY_FILL_LIMIT: u64 = 104 * 1024;

/// The service's sockets, summed over every socket bound to one of its ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketsState {
    /// Sockets found.
    pub sockets: usize,
    /// Bytes charged to the fullest socket's receive buffer.
    pub fullest_rx_queue: u64,
    /// Datagrams the sockets dropped since they were created.
    pub drops: u64,
}

impl SocketsState {
    /// Frames that may be replayed now without taking the fullest socket
    /// past [`REPLAY_FILL_LIMIT`]; 0 means wait until the service read.
    pub fn frames_that_fit(&self) -> usize {
        (REPLAY_FILL_LIMIT.saturating_sub(self.fullest_rx_queue) / REPLAYED_FRAME_CHARGE) as usize
    }

    fn add(&mut self, other: SocketsState) {
        self.sockets += other.sockets;
        self.fullest_rx_queue = self.fullest_rx_queue.max(other.fullest_rx_queue);
        self.drops += other.drops;
    }
}

/// The sockets of `/proc/net/udp` or `/proc/net/udp6` text whose local port
/// is one of `ports`. Lines that do not parse are skipped.
pub fn parse_proc_net_udp(text: &str, ports: &[u16]) -> SocketsState {
    let mut state = SocketsState::default();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let (Some(local), Some(queues), Some(drops)) =
            (fields.get(1), fields.get(4), fields.get(12))
        else {
            continue;
        };
        let Some(port) = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if !ports.contains(&port) {
            continue;
        }
        let (Some(rx), Ok(drops)) = (
            queues
                .split_once(':')
                .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok()),
            drops.parse::<u64>(),
        ) else {
            continue;
        };
        state.add(SocketsState {
            sockets: 1,
            fullest_rx_queue: rx,
            drops,
        });
    }
    state
}

/// Watches the UDP sockets bound to the service's ports in the network
/// namespace of a process (CRIU's restored init, `CRTOOLS_INIT_PID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketWatch {
    pub pid: u32,
    pub ports: Vec<u16>,
    /// The sockets' drops counted so far (at the start: before the replay).
    pub drops_seen: u64,
}

impl SocketWatch {
    /// Starts watching; fails when the process is gone or none of its
    /// namespace's UDP sockets is bound to one of `ports`.
    pub fn start(pid: u32, ports: Vec<u16>) -> io::Result<Self> {
        let mut watch = Self {
            pid,
            ports,
            drops_seen: 0,
        };
        let state = watch.read()?;
        if state.sockets == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no UDP socket on port(s) {:?} in the network namespace of PID {pid}",
                    watch.ports
                ),
            ));
        }
        watch.drops_seen = state.drops;
        Ok(watch)
    }

    pub fn read(&self) -> io::Result<SocketsState> {
        let mut state = SocketsState::default();
        for table in ["udp", "udp6"] {
            let path = format!("/proc/{}/net/{table}", self.pid);
            match std::fs::read_to_string(&path) {
                Ok(text) => state.add(parse_proc_net_udp(&text, &self.ports)),
                // A kernel without IPv6 has no udp6 table.
                Err(e) if table == "udp6" && e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  105: 00000000:115C 00000000:0000 07 00000000:00012000 00:00000000 00000000     0        0 4711 2 0000000000000000 3
  106: 020C3C0A:115C 00000000:0000 07 00000000:00001200 00:00000000 00000000     0        0 4712 2 0000000000000000 1
  107: 00000000:0035 00000000:0000 07 00000000:00090000 00:00000000 00000000     0        0 4713 2 0000000000000000 9
  108: garbage
";

    #[test]
    fn only_the_service_ports_count() {
        let s = parse_proc_net_udp(UDP, &[4444]);
        assert_eq!(s.sockets, 2);
        assert_eq!(s.fullest_rx_queue, 0x12000);
        assert_eq!(s.drops, 4);
        assert_eq!(parse_proc_net_udp(UDP, &[53]).fullest_rx_queue, 0x90000);
        assert_eq!(parse_proc_net_udp(UDP, &[1]), SocketsState::default());
        assert_eq!(parse_proc_net_udp("", &[4444]), SocketsState::default());
    }

    #[test]
    fn the_replay_fills_up_to_its_limit() {
        let empty = SocketsState {
            sockets: 1,
            ..Default::default()
        };
        assert_eq!(
            empty.frames_that_fit(),
            (REPLAY_FILL_LIMIT / REPLAYED_FRAME_CHARGE) as usize
        );
        let full = SocketsState {
            fullest_rx_queue: REPLAY_FILL_LIMIT - 1,
            ..empty
        };
        assert_eq!(full.frames_that_fit(), 0);
        let over = SocketsState {
            fullest_rx_queue: 10 * REPLAY_FILL_LIMIT,
            ..empty
        };
        assert_eq!(over.frames_that_fit(), 0);
    }

    #[test]
    fn a_vanished_process_is_an_error() {
        assert!(SocketWatch::start(u32::MAX, vec![4444]).is_err());
    }
}
