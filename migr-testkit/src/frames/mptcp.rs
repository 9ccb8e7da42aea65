//! MPTCP options (RFC 8684), each as its full bytes (kind 30, length, ...).

fn option(subtype: u8, low_nibble: u8, rest: &[u8]) -> Vec<u8> {
    let len = 3 + rest.len();
    assert!(len <= 40, "MPTCP option longer than the TCP option space");
    let mut v = Vec::with_capacity(len);
    v.push(30);
    v.push(len as u8);
    v.push((subtype << 4) | (low_nibble & 0x0f));
    v.extend_from_slice(rest);
    v
}

/// MP_CAPABLE on a SYN, RFC 8684 (length 4, no key).
pub fn capable_syn(version: u8, flags: u8) -> Vec<u8> {
    option(0, version, &[flags])
}

/// MP_CAPABLE on a SYN, RFC 6824 style (length 12, the sender's key).
pub fn capable_syn_with_key(version: u8, flags: u8, key: u64) -> Vec<u8> {
    let mut rest = [flags].to_vec();
    rest.extend_from_slice(&key.to_be_bytes());
    option(0, version, &rest)
}

/// MP_CAPABLE on a SYN/ACK (length 12).
pub fn capable_synack(version: u8, flags: u8, key: u64) -> Vec<u8> {
    capable_syn_with_key(version, flags, key)
}

/// MP_CAPABLE on the third ACK (length 20).
pub fn capable_ack(version: u8, flags: u8, sender_key: u64, receiver_key: u64) -> Vec<u8> {
    let mut rest = [flags].to_vec();
    rest.extend_from_slice(&sender_key.to_be_bytes());
    rest.extend_from_slice(&receiver_key.to_be_bytes());
    option(0, version, &rest)
}

/// MP_CAPABLE with data (length 22, or 24 with a checksum).
pub fn capable_ack_data(
    version: u8,
    flags: u8,
    sender_key: u64,
    receiver_key: u64,
    data_len: u16,
    checksum: Option<u16>,
) -> Vec<u8> {
    let mut rest = [flags].to_vec();
    rest.extend_from_slice(&sender_key.to_be_bytes());
    rest.extend_from_slice(&receiver_key.to_be_bytes());
    rest.extend_from_slice(&data_len.to_be_bytes());
    if let Some(c) = checksum {
        rest.extend_from_slice(&c.to_be_bytes());
    }
    option(0, version, &rest)
}

/// MP_JOIN on a SYN (length 12).
pub fn join_syn(backup: bool, addr_id: u8, token: u32, nonce: u32) -> Vec<u8> {
    let mut rest = [addr_id].to_vec();
    rest.extend_from_slice(&token.to_be_bytes());
    rest.extend_from_slice(&nonce.to_be_bytes());
    option(1, backup as u8, &rest)
}

/// MP_JOIN on a SYN/ACK (length 16).
pub fn join_synack(backup: bool, addr_id: u8, hmac: u64, nonce: u32) -> Vec<u8> {
    let mut rest = [addr_id].to_vec();
    rest.extend_from_slice(&hmac.to_be_bytes());
    rest.extend_from_slice(&nonce.to_be_bytes());
    option(1, backup as u8, &rest)
}

/// MP_JOIN on the third ACK (length 24).
pub fn join_ack(hmac: &[u8; 20]) -> Vec<u8> {
    let mut rest = [0u8].to_vec();
    rest.extend_from_slice(hmac);
    option(1, 0, &rest)
}

/// The mapping part of a DSS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DssMapping {
    /// Written as 8 bytes with `Dss::dsn_8`, else its low 4 bytes.
    pub dsn: u64,
    pub subflow_seq: u32,
    pub data_len: u16,
    pub checksum: Option<u16>,
}

/// A DSS option. The flag bits are set exactly from these fields, so
/// `data_ack_8` / `dsn_8` without the matching field give a stray flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dss {
    /// Written as 8 bytes with `data_ack_8`, else its low 4 bytes.
    pub data_ack: Option<u64>,
    pub data_ack_8: bool,
    pub mapping: Option<DssMapping>,
    pub dsn_8: bool,
    pub data_fin: bool,
}

impl Dss {
    /// Every field present, 8-byte numbers, a checksum: the longest form (28).
    pub fn full() -> Self {
        Self {
            data_ack: Some(0x0102_0304_0506_0708),
            data_ack_8: true,
            mapping: Some(DssMapping {
                dsn: 0x1112_1314_1516_1718,
                subflow_seq: 0x2122_2324,
                data_len: 1000,
                checksum: Some(0xabcd),
            }),
            dsn_8: true,
            data_fin: true,
        }
    }
}

pub fn dss(d: &Dss) -> Vec<u8> {
    let flags = (d.data_ack.is_some() as u8)
        | (d.data_ack_8 as u8) << 1
        | (d.mapping.is_some() as u8) << 2
        | (d.dsn_8 as u8) << 3
        | (d.data_fin as u8) << 4;
    let mut rest = [flags].to_vec();
    if let Some(a) = d.data_ack {
        if d.data_ack_8 {
            rest.extend_from_slice(&a.to_be_bytes());
        } else {
            rest.extend_from_slice(&(a as u32).to_be_bytes());
        }
    }
    if let Some(m) = d.mapping {
        if d.dsn_8 {
            rest.extend_from_slice(&m.dsn.to_be_bytes());
        } else {
            rest.extend_from_slice(&(m.dsn as u32).to_be_bytes());
        }
        rest.extend_from_slice(&m.subflow_seq.to_be_bytes());
        rest.extend_from_slice(&m.data_len.to_be_bytes());
        if let Some(c) = m.checksum {
            rest.extend_from_slice(&c.to_be_bytes());
        }
    }
    option(2, 0, &rest)
}

/// ADD_ADDR: `addr` is 4 (IPv4) or 16 (IPv6) bytes; no `hmac` means an
/// echo (E bit set).
pub fn add_addr(addr_id: u8, addr: &[u8], port: Option<u16>, hmac: Option<u64>) -> Vec<u8> {
    assert!(addr.len() == 4 || addr.len() == 16, "4 or 16 address bytes");
    let mut rest = [addr_id].to_vec();
    rest.extend_from_slice(addr);
    if let Some(p) = port {
        rest.extend_from_slice(&p.to_be_bytes());
    }
    if let Some(h) = hmac {
        rest.extend_from_slice(&h.to_be_bytes());
    }
    option(3, hmac.is_none() as u8, &rest)
}

/// REMOVE_ADDR with these address ids (length 3 + n).
pub fn remove_addr(ids: &[u8]) -> Vec<u8> {
    option(4, 0, ids)
}

/// MP_PRIO: length 3, or 4 with an address id (RFC 6824).
pub fn prio(backup: bool, addr_id: Option<u8>) -> Vec<u8> {
    match addr_id {
        Some(id) => option(5, backup as u8, &[id]),
        None => option(5, backup as u8, &[]),
    }
}

/// MP_FAIL (length 12).
pub fn fail(dsn: u64) -> Vec<u8> {
    let mut rest = [0u8].to_vec();
    rest.extend_from_slice(&dsn.to_be_bytes());
    option(6, 0, &rest)
}

/// MP_FASTCLOSE (length 12).
pub fn fastclose(receiver_key: u64) -> Vec<u8> {
    let mut rest = [0u8].to_vec();
    rest.extend_from_slice(&receiver_key.to_be_bytes());
    option(7, 0, &rest)
}

/// MP_TCPRST (length 4); `flags` are U/V/W/T (low nibble).
pub fn tcprst(flags: u8, reason: u8) -> Vec<u8> {
    option(8, flags, &[reason])
}

/// Any subtype with arbitrary bytes after the subtype byte.
pub fn raw(subtype: u8, low_nibble: u8, rest: &[u8]) -> Vec<u8> {
    option(subtype, low_nibble, rest)
}
