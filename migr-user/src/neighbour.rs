//! Resolving a forward target on this node: the interface's index and MAC,
//! and the next hop's MAC from the neighbour table. These may wait for ARP,
//! so the control socket calls them off the engine thread.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Result, bail};
use migr_control::api::{self, ApiError, ForwardSpec};

use crate::{
    engine::ResolvedForward,
    netdev::{if_index, if_mac},
};

pub fn resolve_forward(f: &ForwardSpec) -> Result<ResolvedForward, ApiError> {
    let ifindex = if_index(&f.iface).map_err(|e| ApiError::bad(format!("forward.iface: {e}")))?;
    let src_mac = if_mac(&f.iface).map_err(|e| ApiError::bad(format!("forward.iface: {e:#}")))?;
    let dst_mac = match &f.next_hop_mac {
        Some(m) => api::parse_mac(m).map_err(ApiError::bad)?,
        None => {
            let hop = f
                .next_hop
                .or(f.addr.map(|a| a.ip()))
                .ok_or_else(|| ApiError::bad("give forward.next_hop_mac or forward.next_hop"))?;
            neighbour_mac(hop, &f.iface).map_err(|e| {
                ApiError::bad(format!(
                    "forward: the next hop's MAC is unknown ({e:#}); give next_hop_mac"
                ))
            })?
        }
    };
    Ok(ResolvedForward {
        ifindex,
        src_mac,
        dst_mac,
        tc: false,
    })
}

/// Looks `ip` up in the neighbour table of `iface`; if it is not there,
/// provokes a resolution with one empty UDP datagram (port 9, discard) and
/// waits up to a second.
fn neighbour_mac(ip: IpAddr, iface: &str) -> Result<[u8; 6]> {
    if let Some(mac) = lookup_neighbour(ip, iface) {
        return Ok(mac);
    }
    let probe = match ip {
        IpAddr::V4(_) => UdpSocket::bind("0.0.0.0:0"),
        IpAddr::V6(_) => UdpSocket::bind("[::]:0"),
    }?;
    let _ = probe.send_to(&[], SocketAddr::new(ip, 9));
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = lookup_neighbour(ip, iface) {
            return Ok(mac);
        }
    }
    bail!("no neighbour entry for {ip} on {iface}")
}

fn lookup_neighbour(ip: IpAddr, iface: &str) -> Option<[u8; 6]> {
    match ip {
        IpAddr::V4(v4) => {
            // /proc/net is the reading thread's network namespace.
            let text = std::fs::read_to_string("/proc/net/arp").ok()?;
            parse_proc_arp(&text, v4, iface)
        }
        IpAddr::V6(_) => {
            let out = std::process::Command::new("ip")
                .args(["-6", "neigh", "show", &ip.to_string(), "dev", iface])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut words = text.split_whitespace();
            while let Some(w) = words.next() {
                if w == "lladdr" {
                    return words.next().and_then(|m| api::parse_mac(m).ok());
                }
            }
            None
        }
    }
}

fn parse_proc_arp(text: &str, ip: std::net::Ipv4Addr, iface: &str) -> Option<[u8; 6]> {
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 6 || cols[5] != iface {
            continue;
        }
        if cols[0].parse::<std::net::Ipv4Addr>().ok() != Some(ip) {
            continue;
        }
        let flags = u32::from_str_radix(cols[2].trim_start_matches("0x"), 16).unwrap_or(0);
        if flags & 0x2 == 0 {
            continue; // incomplete
        }
        return api::parse_mac(cols[3]).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_arp_lines_parse() {
        let text = "IP address       HW type     Flags       HW address            Mask     Device\n\
                    10.40.2.2        0x1         0x2         aa:bb:cc:dd:ee:01     *        v-sd\n\
                    10.40.2.3        0x1         0x0         00:00:00:00:00:00     *        v-sd\n\
                    10.40.1.1        0x1         0x2         aa:bb:cc:dd:ee:02     *        v-sc\n";
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(
            parse_proc_arp(text, ip("10.40.2.2"), "v-sd"),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 1])
        );
        assert_eq!(
            parse_proc_arp(text, ip("10.40.2.3"), "v-sd"),
            None,
            "incomplete"
        );
        assert_eq!(
            parse_proc_arp(text, ip("10.40.1.1"), "v-sd"),
            None,
            "other device"
        );
    }
}
