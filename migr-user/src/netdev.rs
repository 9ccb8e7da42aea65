//! What the agent asks about a network device, in the current network
//! namespace (ioctls on a socket: unlike /sys, which shows the namespace
//! sysfs was mounted in).

use std::{net::UdpSocket, os::fd::AsRawFd as _};

use anyhow::{Result, bail};

/// A socket to ask through, and an `ifreq` naming `iface`.
fn request(iface: &str) -> std::io::Result<(UdpSocket, libc::ifreq)> {
    let sock = UdpSocket::bind("0.0.0.0:0").or_else(|_| UdpSocket::bind("[::]:0"))?;
    // SAFETY: zeroed ifreq is a valid initial value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    Ok((sock, req))
}

/// SIOCETHTOOL with `data` (an ethtool command struct, `cmd` set) for `iface`.
fn ethtool<T>(sock: &UdpSocket, mut req: libc::ifreq, data: &mut T) -> bool {
    req.ifr_ifru.ifru_data = (data as *mut T).cast();
    // SAFETY: SIOCETHTOOL with ifr_data pointing to a live command struct
    // whose layout is the kernel's for its `cmd`.
    unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) == 0 }
}

/// Whether `iface` is up (IFF_UP) and has a carrier. The carrier comes from
/// ETHTOOL_GLINK (the driver's own view, at once), else from IFF_RUNNING
/// (the operational state, which the kernel may update up to a second late).
pub fn if_link(iface: &str) -> Option<(bool, bool)> {
    const ETHTOOL_GLINK: u32 = 0x0a;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let (sock, mut req) = request(iface).ok()?;
    let named = req;
    // SAFETY: SIOCGIFFLAGS with a valid ifreq on a valid socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return None;
    }
    // SAFETY: the kernel filled ifru_flags.
    let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
    let up = flags & libc::IFF_UP != 0;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GLINK,
        data: 0,
    };
    let carrier = if ethtool(&sock, named, &mut value) {
        value.data != 0
    } else {
        flags & libc::IFF_RUNNING != 0
    };
    Some((up, up && carrier))
}

/// The index of `iface` in the current network namespace.
pub fn if_index(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface)?;
    // SAFETY: a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface {iface:?} in this network namespace");
    }
    Ok(idx)
}

/// The MAC address of `iface` (SIOCGIFHWADDR).
pub fn if_mac(iface: &str) -> Result<[u8; 6]> {
    let (sock, mut req) = request(iface)?;
    // SAFETY: SIOCGIFHWADDR with a valid ifreq on a valid socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        bail!(
            "reading the MAC of {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the kernel filled ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// The driver's name and bus address of `iface` (ETHTOOL_GDRVINFO).
pub fn driver_info(iface: &str) -> Option<(String, String)> {
    const ETHTOOL_GDRVINFO: u32 = 0x03;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    let (sock, req) = request(iface).ok()?;
    // SAFETY: all-zero bytes are a valid DrvInfo.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    if !ethtool(&sock, req, &mut info) {
        return None;
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Some((text(&info.driver), text(&info.bus_info)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_device_answers() {
        assert_eq!(if_link("lo").map(|(up, _)| up), Some(true));
        assert_eq!(if_mac("lo").unwrap(), [0; 6]);
        assert!(if_link("no-such-device-x").is_none());
        assert!(if_mac("no-such-device-x").is_err());
    }
}
