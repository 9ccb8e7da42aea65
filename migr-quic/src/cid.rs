//! Routable connection IDs: every CID the server issues carries the service's
//! server id where migr's XDP classifier looks for it (`migr_common::cid`).

use std::time::Duration;

use migr_common::cid::{CidConfig, CidConfigError};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, EndpointConfig, InvalidCid};
use ring::rand::{SecureRandom, SystemRandom};

/// A quinn-proto CID generator that embeds `server_id` at the offset and length
/// of a [`CidConfig`]; all other bytes are random.
#[derive(Clone, Debug)]
pub struct RoutableCidGenerator {
    config: CidConfig,
    server_id: u32,
    lifetime: Option<Duration>,
    rng: SystemRandom,
}

impl RoutableCidGenerator {
    /// Fails when the configuration is invalid or `server_id` does not fit in it.
    pub fn new(config: CidConfig, server_id: u32) -> Result<Self, CidConfigError> {
        // Writing once up front validates both the config and the id.
        let mut probe = [0u8; migr_common::cid::MAX_CID_LEN];
        config.write_server_id(&mut probe, server_id)?;
        Ok(Self {
            config,
            server_id,
            lifetime: None,
            rng: SystemRandom::new(),
        })
    }

    /// Retire issued CIDs after `lifetime` (quinn-proto then issues fresh ones).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    pub fn config(&self) -> CidConfig {
        self.config
    }

    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// An `EndpointConfig` whose endpoints issue only routable CIDs.
    pub fn endpoint_config(&self) -> EndpointConfig {
        let template = self.clone();
        let mut config = EndpointConfig::default();
        config.cid_generator(move || Box::new(template.clone()));
        config
    }
}

impl ConnectionIdGenerator for RoutableCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let len = usize::from(self.config.cid_len);
        let mut bytes = [0u8; migr_common::cid::MAX_CID_LEN];
        if self.rng.fill(&mut bytes[..len]).is_err() {
            // The system RNG failing is not recoverable in a sane way; zeros
            // still route correctly, they just lose unlinkability.
            bytes[..len].fill(0);
        }
        // Cannot fail: validated in `new`, and the buffer is MAX_CID_LEN long.
        let _ = self.config.write_server_id(&mut bytes, self.server_id);
        ConnectionId::new(&bytes[..len])
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() == usize::from(self.config.cid_len)
            && self.config.server_id(cid) == Some(self.server_id)
        {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        usize::from(self.config.cid_len)
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_cid_carries_the_server_id() {
        let config = CidConfig::new(12, 3, 2).unwrap();
        let mut generator = RoutableCidGenerator::new(config, 0xbeef).unwrap();
        for _ in 0..100 {
            let cid = generator.generate_cid();
            assert_eq!(cid.len(), 12);
            assert_eq!(config.server_id(&cid), Some(0xbeef));
            assert!(generator.validate(&cid).is_ok());
        }
    }

    #[test]
    fn rejects_foreign_cids_and_bad_configs() {
        let config = CidConfig::new(8, 0, 1).unwrap();
        let generator = RoutableCidGenerator::new(config, 7).unwrap();
        assert!(generator.validate(&ConnectionId::new(&[8; 8])).is_err());
        assert!(generator.validate(&ConnectionId::new(&[7; 4])).is_err());
        assert_eq!(
            RoutableCidGenerator::new(config, 256).unwrap_err(),
            CidConfigError::ServerIdTooLarge
        );
    }
}
