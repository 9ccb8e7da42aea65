//! Telling the link a service's address has moved here: after a same-IP
//! move the destination node announces the service's addresses from its
//! interfaces, a few rounds as QEMU does after a VM migration, so that the
//! router and the hosts of an L2 segment update their neighbour entries at
//! once instead of sending to the old node until those entries expire.
//! IPv4: gratuitous ARP (a broadcast request whose sender and target are
//! the address); IPv6: an unsolicited neighbour advertisement with the
//! override flag to all nodes (RFC 4861, 7.2.6). The frames are built here
//! (pure, tested without root); [`spawn`] sends them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// When each round goes out, from the restore: five rounds, the gaps
/// growing by 50 ms (QEMU's announce: 5 rounds, 50 ms first, +100 ms each).
pub const ROUNDS_MS: [u64; 5] = [0, 50, 150, 300, 500];

const BROADCAST: [u8; 6] = [0xff; 6];
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// A gratuitous ARP request for `ip` at `mac` (42 bytes).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement of `ip` at `mac`, from `ip` to
/// all nodes (ff02::1), override flag set, with the target link-layer
/// address option (86 bytes).
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // type NA, code, checksum
    icmp.extend_from_slice(&[0x20, 0, 0, 0]); // flags: override
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(ip, all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // next header ICMPv6, hop limit 255 (RFC 4861)
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frames that announce `addrs` at `mac`.
pub fn frames(mac: [u8; 6], addrs: &[IpAddr]) -> Vec<Vec<u8>> {
    addrs
        .iter()
        .map(|a| match a {
            IpAddr::V4(v4) => gratuitous_arp(mac, *v4),
            IpAddr::V6(v6) => unsolicited_na(mac, *v6),
        })
        .collect()
}

/// Sends the announcement rounds for `service`'s `addrs` out of every
/// interface in `ifaces`, on a thread of its own (the engine does not wait
/// for the rounds). Each round's outcome is logged.
pub fn spawn(service: String, ifaces: Vec<String>, addrs: Vec<IpAddr>) {
    std::thread::spawn(move || {
        let mut last = 0;
        for (round, at) in ROUNDS_MS.into_iter().enumerate() {
            std::thread::sleep(Duration::from_millis(at - last));
            last = at;
            for iface in &ifaces {
                match send_round(iface, &addrs) {
                    Ok(n) => tracing::info!(service = %service, iface = %iface, round = round + 1,
                        frames = n, "announced the service's addresses"),
                    Err(e) => tracing::warn!(service = %service, iface = %iface, round = round + 1,
                        error = %format!("{e:#}"), "announcing the service's addresses failed"),
                }
            }
        }
    });
}

fn send_round(iface: &str, addrs: &[IpAddr]) -> anyhow::Result<usize> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let mac = crate::netdev::if_mac(iface)?;
    let index = crate::netdev::if_index(iface)?;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a descriptor we just got.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sent = 0;
    for frame in frames(mac, addrs) {
        // SAFETY: a zeroed sockaddr_ll, filled in.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sendto of a buffer we own to a sockaddr_ll of the right size.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n != frame.len() as isize {
            return Err(std::io::Error::last_os_error().into());
        }
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn a_gratuitous_arp_names_the_address_twice() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(10, 60, 20, 2));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[..6], &BROADCAST);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &MAC, "sender hardware address");
        assert_eq!(&f[28..32], &[10, 60, 20, 2], "sender address");
        assert_eq!(&f[38..42], &[10, 60, 20, 2], "target address: the same");
    }

    #[test]
    fn an_unsolicited_na_checks_out() {
        let ip: Ipv6Addr = "fd00:60:20::2".parse().unwrap();
        let f = unsolicited_na(MAC, ip);
        assert_eq!(f.len(), 86);
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255, "hop limit 255 or receivers drop it");
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4] & 0x20, 0x20, "override");
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[24..26], &[2, 1]);
        assert_eq!(&icmp[26..32], &MAC);
        // The checksum over the pseudo-header and the message folds to 0.
        let all: Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(icmpv6_checksum(ip, all, icmp), 0);
    }
}
