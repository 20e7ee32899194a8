//! Keys made on this host: the agent's own and every workload's. A private key never leaves
//! the host: only a CSR (its public half) goes to a node.

use rcgen::{CertificateParams, KeyPair};

/// A P-256 key held as PKCS#8 DER; zeroed when dropped, never printed.
pub struct PrivateKey(Vec<u8>);

impl PrivateKey {
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.0
    }

    pub fn from_pkcs8(der: Vec<u8>) -> Self {
        Self(der)
    }

    pub fn rustls(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls::pki_types::PrivateKeyDer::Pkcs8(self.0.clone().into())
    }
}

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            *b = 0;
        }
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A fresh ECDSA P-256 key and a CSR for it. The CSR names no identity: the node builds the
/// certificate from the entry alone.
pub fn key_and_csr() -> anyhow::Result<(PrivateKey, Vec<u8>)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((PrivateKey(key.serialize_der()), csr.der().as_ref().to_vec()))
}
