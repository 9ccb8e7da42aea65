//! Routable QUIC connection IDs, QUIC-LB style.
//!
//! A service's server id (1 to 4 bytes, big-endian) sits at a fixed byte offset
//! inside every connection ID the service issues. The XDP classifier reads it
//! from the DCID of incoming packets; the quinn-proto CID generator writes it.
//! Both use this one type, so they cannot disagree.

use crate::PacketBytes;

/// Longest connection ID QUIC v1 allows (RFC 9000, 17.2).
pub const MAX_CID_LEN: usize = 20;
/// Longest server id we embed.
pub const MAX_SERVER_ID_LEN: usize = 4;

/// Where a service's server id lives inside its connection IDs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CidConfig {
    /// Length of the CIDs the service issues (the DCID length of short-header packets).
    pub cid_len: u8,
    /// Byte offset of the server id inside the CID.
    pub server_id_offset: u8,
    /// Server id length in bytes, 1..=4.
    pub server_id_len: u8,
    pub _reserved: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidConfigError {
    /// `cid_len` must be 1..=20.
    CidLength,
    /// `server_id_len` must be 1..=4.
    ServerIdLength,
    /// The server id does not fit inside the CID at that offset.
    ServerIdOutOfCid,
    /// The id needs more bytes than `server_id_len`.
    ServerIdTooLarge,
    /// The buffer handed in is shorter than `cid_len`.
    BufferTooShort,
}

impl core::fmt::Display for CidConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let msg = match self {
            Self::CidLength => "CID length must be 1..=20",
            Self::ServerIdLength => "server id length must be 1..=4 bytes",
            Self::ServerIdOutOfCid => "server id offset + length exceeds the CID length",
            Self::ServerIdTooLarge => "server id does not fit in the configured length",
            Self::BufferTooShort => "buffer shorter than the CID length",
        };
        f.write_str(msg)
    }
}

impl CidConfig {
    pub const fn new(
        cid_len: u8,
        server_id_offset: u8,
        server_id_len: u8,
    ) -> Result<Self, CidConfigError> {
        let cfg = Self {
            cid_len,
            server_id_offset,
            server_id_len,
            _reserved: 0,
        };
        match cfg.validate() {
            Ok(()) => Ok(cfg),
            Err(e) => Err(e),
        }
    }

    pub const fn validate(&self) -> Result<(), CidConfigError> {
        if self.cid_len == 0 || self.cid_len as usize > MAX_CID_LEN {
            return Err(CidConfigError::CidLength);
        }
        if self.server_id_len == 0 || self.server_id_len as usize > MAX_SERVER_ID_LEN {
            return Err(CidConfigError::ServerIdLength);
        }
        if self.server_id_offset as usize + self.server_id_len as usize > self.cid_len as usize {
            return Err(CidConfigError::ServerIdOutOfCid);
        }
        Ok(())
    }

    /// Largest server id that fits in `server_id_len` bytes.
    pub const fn max_server_id(&self) -> u32 {
        if self.server_id_len as usize >= MAX_SERVER_ID_LEN {
            u32::MAX
        } else {
            (1u32 << (8 * self.server_id_len as u32)) - 1
        }
    }

    /// Reads the server id from a CID held in a byte slice.
    pub fn server_id(&self, cid: &[u8]) -> Option<u32> {
        self.server_id_in(cid, 0)
    }

    /// Reads the server id from a CID that starts at `cid_offset` in `frame`.
    /// Bounded loop of at most 4 iterations, so it is verifier friendly.
    #[inline(always)]
    pub fn server_id_in<F: PacketBytes + ?Sized>(
        &self,
        frame: &F,
        cid_offset: usize,
    ) -> Option<u32> {
        if self.validate().is_err() {
            return None;
        }
        let start = cid_offset + self.server_id_offset as usize;
        let mut id: u32 = 0;
        let mut i = 0;
        while i < MAX_SERVER_ID_LEN {
            if i >= self.server_id_len as usize {
                break;
            }
            let byte = frame.u8_at(start + i)?;
            id = (id << 8) | byte as u32;
            i += 1;
        }
        Some(id)
    }

    /// Writes `server_id` into `cid` (which must be at least `cid_len` long).
    pub fn write_server_id(&self, cid: &mut [u8], server_id: u32) -> Result<(), CidConfigError> {
        self.validate()?;
        if server_id > self.max_server_id() {
            return Err(CidConfigError::ServerIdTooLarge);
        }
        if cid.len() < self.cid_len as usize {
            return Err(CidConfigError::BufferTooShort);
        }
        let len = self.server_id_len as usize;
        let bytes = server_id.to_be_bytes();
        let off = self.server_id_offset as usize;
        cid[off..off + len].copy_from_slice(&bytes[MAX_SERVER_ID_LEN - len..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_configs() {
        assert_eq!(CidConfig::new(0, 0, 1), Err(CidConfigError::CidLength));
        assert_eq!(CidConfig::new(21, 0, 1), Err(CidConfigError::CidLength));
        assert_eq!(CidConfig::new(8, 0, 0), Err(CidConfigError::ServerIdLength));
        assert_eq!(CidConfig::new(8, 0, 5), Err(CidConfigError::ServerIdLength));
        assert_eq!(
            CidConfig::new(8, 6, 3),
            Err(CidConfigError::ServerIdOutOfCid)
        );
        assert!(CidConfig::new(8, 5, 3).is_ok());
        assert!(CidConfig::new(20, 16, 4).is_ok());
    }

    #[test]
    fn write_then_read_round_trips_for_every_length() {
        for len in 1..=4u8 {
            let cfg = CidConfig::new(12, 3, len).unwrap();
            let id = cfg.max_server_id() / 3 + 1;
            let mut cid = [0xAAu8; 12];
            cfg.write_server_id(&mut cid, id).unwrap();
            assert_eq!(cfg.server_id(&cid), Some(id));
            // bytes outside the id are untouched
            assert_eq!(cid[..3], [0xAA; 3]);
            assert!(cid[3 + len as usize..].iter().all(|b| *b == 0xAA));
        }
    }

    #[test]
    fn refuses_ids_that_do_not_fit_and_short_buffers() {
        let cfg = CidConfig::new(8, 1, 2).unwrap();
        let mut cid = [0u8; 8];
        assert_eq!(
            cfg.write_server_id(&mut cid, 0x1_0000),
            Err(CidConfigError::ServerIdTooLarge)
        );
        let mut short = [0u8; 4];
        assert_eq!(
            cfg.write_server_id(&mut short, 1),
            Err(CidConfigError::BufferTooShort)
        );
        assert_eq!(cfg.server_id(&[0u8; 2]), None);
    }

    #[test]
    fn reads_from_a_frame_offset() {
        let cfg = CidConfig::new(8, 2, 3).unwrap();
        let frame = [0u8, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0];
        // the CID starts at byte 3; the id at 3 + 2
        assert_eq!(cfg.server_id_in(&frame[..], 3), Some(0x12_3456));
        assert_eq!(cfg.server_id_in(&frame[..7], 3), None);
    }
}
