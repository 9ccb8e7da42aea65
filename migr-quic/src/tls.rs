//! TLS plumbing for tests and tools: a self-signed certificate and quinn-proto
//! configs (ring provider) that present and trust it.

use std::sync::Arc;

use quinn_proto::{ClientConfig, ServerConfig, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed certificate and its private key.
pub struct SelfSigned {
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivatePkcs8KeyDer<'static>,
}

impl SelfSigned {
    /// A fresh certificate valid for `names` (DNS names or IP literals).
    pub fn generate(names: &[&str]) -> anyhow::Result<Self> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names)?;
        Ok(Self {
            cert_der: certified.cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()),
        })
    }

    /// quinn-proto server config presenting this certificate.
    pub fn server_config(&self, transport: TransportConfig) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::with_single_cert(
            vec![self.cert_der.clone()],
            PrivateKeyDer::Pkcs8(self.key_der.clone_key()),
        )?;
        config.transport_config(Arc::new(transport));
        // A following client rebinds its port on every server move; quinn-proto
        // must accept that (its default) and validates the new path.
        config.migration(true);
        Ok(config)
    }
}

/// quinn-proto client config trusting exactly `cert_der`.
pub fn client_config(
    cert_der: CertificateDer<'static>,
    transport: TransportConfig,
) -> anyhow::Result<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let mut config = ClientConfig::with_root_certificates(Arc::new(roots))?;
    config.transport_config(Arc::new(transport));
    Ok(config)
}
