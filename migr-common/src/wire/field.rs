//! Where the fields the datapath reads or rewrites sit, as byte offsets from
//! the start of their header (RFC 791, 8200, 768, 9293; IEEE 802.3). One
//! definition for the parsers, the rewrite and the test frame builder, so a
//! bare `+ 16` never has to be trusted. The field's width is in its comment.

/// Ethernet II.
pub mod ethernet {
    /// 6 bytes.
    pub const DST: usize = 0;
    /// 6 bytes.
    pub const SRC: usize = 6;
    /// 2 bytes.
    pub const ETHER_TYPE: usize = 12;
}

/// IPv4 (the fixed 20-byte part).
pub mod ipv4 {
    /// 2 bytes.
    pub const CHECKSUM: usize = 10;
    /// 4 bytes.
    pub const DST: usize = 16;
}

/// IPv6 (the fixed 40-byte header).
pub mod ipv6 {
    /// 16 bytes.
    pub const SRC: usize = 8;
    /// 16 bytes.
    pub const DST: usize = 24;
}

/// UDP.
pub mod udp {
    /// 2 bytes.
    pub const DST_PORT: usize = 2;
    /// 2 bytes; 0 means "no checksum" over IPv4.
    pub const CHECKSUM: usize = 6;
}

/// TCP (the fixed 20-byte part).
pub mod tcp {
    /// 2 bytes.
    pub const DST_PORT: usize = 2;
    /// 2 bytes.
    pub const CHECKSUM: usize = 16;
}
