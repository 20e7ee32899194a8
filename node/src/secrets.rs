//! Client secrets: 256 random bits in a URL-safe alphabet, shown once, stored only as
//! HMAC-SHA-256 under the cluster's client-secret key (sealed under the KEK in the replicated
//! `sealed_secrets` family), and compared in constant time. No slow KDF: the secret is random,
//! so a keyed hash is enough, and the token endpoint pays microseconds, not milliseconds.

use std::fmt;

use authsec_domain::identity::{ClientSecret, SecretHash, SEALED_CLIENT_SECRET_KEY};
use authsec_domain::TrustDomain;
use authsec_storage::Reader;
use aws_lc_rs::hmac;
use base64::Engine;

use crate::pki::{Kek, PkiError};

/// Prefix of every generated secret, so secret scanners can recognize a leaked one.
pub const SECRET_PREFIX: &str = "as_cs_";

/// A freshly generated client secret. `Debug` never shows it.
pub struct NewSecret(String);

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewSecret(<redacted>)")
    }
}

impl NewSecret {
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        Self(format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        ))
    }

    /// The secret itself, for the one answer that shows it.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

fn aad(td: &TrustDomain) -> Vec<u8> {
    format!("authsec client secret key v1|{td}").into_bytes()
}

/// A new client-secret key, sealed under `kek`, for `Command::InstallClientSecretKey`.
pub fn new_sealed_key(kek: &Kek, td: &TrustDomain) -> Vec<u8> {
    let mut k = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
    let sealed = kek.seal(&aad(td), &k);
    k = [0; 32];
    let _ = k;
    sealed
}

/// The cluster's client-secret key, unsealed.
pub struct SecretKey(hmac::Key);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("the cluster has no client-secret key yet (it is installed when the cluster is bootstrapped with a KEK)")]
    NotInstalled,
    #[error("this node holds no KEK ({0}) and no client-secret key from its join; send the request to a node that does")]
    NoKek(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] authsec_storage::StoreError),
}

/// The raw key bytes; zeroed when dropped.
pub struct RawKey(pub Vec<u8>);

impl Drop for RawKey {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawKey(<redacted>)")
    }
}

/// Where a node without the KEK keeps the key it received when it joined (0600, hex), beside
/// its own TLS key.
pub fn local_key_path(tls_dir: &std::path::Path) -> std::path::PathBuf {
    tls_dir.join("client-secret.key")
}

/// Keep the key a join handed over; nothing to do for an empty one.
pub fn store_local_key(tls_dir: &std::path::Path, key: &[u8]) -> Result<(), PkiError> {
    if key.is_empty() {
        return Ok(());
    }
    if key.len() != 32 {
        return Err(PkiError::Invalid(format!(
            "the client-secret key from the cluster is {} bytes, not 32",
            key.len()
        )));
    }
    crate::pki::write_file(
        &local_key_path(tls_dir),
        format!("{}\n", hex::encode(key)).as_bytes(),
        0o600,
    )
}

impl SecretKey {
    /// The cluster's key unsealed with this node's KEK: what a joining node is handed.
    pub fn raw(
        reader: &Reader,
        kek_path: &std::path::Path,
        td: &TrustDomain,
    ) -> Result<RawKey, SecretKeyError> {
        let sealed = reader
            .sealed(SEALED_CLIENT_SECRET_KEY)?
            .ok_or(SecretKeyError::NotInstalled)?;
        let kek = match Kek::load(kek_path) {
            Ok(k) => k,
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretKeyError::NoKek(kek_path.display().to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(RawKey(kek.open(&aad(td), &sealed)?))
    }

    /// The key: unsealed with this node's KEK, or, on a node without one, the copy it was
    /// handed when it joined (`<tls_dir>/client-secret.key`).
    pub fn load(
        reader: &Reader,
        kek_path: &std::path::Path,
        td: &TrustDomain,
        tls_dir: &std::path::Path,
    ) -> Result<Self, SecretKeyError> {
        let raw = match Self::raw(reader, kek_path, td) {
            Ok(k) => k,
            Err(SecretKeyError::NoKek(kek)) => {
                let path = local_key_path(tls_dir);
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(SecretKeyError::NoKek(kek))
                    }
                    Err(e) => {
                        return Err(
                            PkiError::Invalid(format!("read {}: {e}", path.display())).into()
                        )
                    }
                };
                RawKey(
                    hex::decode(text.trim())
                        .ok()
                        .filter(|k| k.len() == 32)
                        .ok_or_else(|| {
                            PkiError::Invalid(format!(
                                "{} is not a 32-byte hex key",
                                path.display()
                            ))
                        })?,
                )
            }
            Err(e) => return Err(e),
        };
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &raw.0)))
    }

    /// A key of its own for another use (`label` names it), so one cluster key serves
    /// several purposes without any two sharing a key.
    pub fn derive(&self, label: &str) -> hmac::Key {
        hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(&self.0, label.as_bytes()).as_ref(),
        )
    }

    /// A key from raw bytes (tests).
    #[cfg(test)]
    pub fn from_raw(raw: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, raw))
    }

    pub fn hash(&self, secret: &str) -> SecretHash {
        let tag = hmac::sign(&self.0, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        SecretHash(out)
    }

    /// The token endpoint's check (issue 7 calls it; tested here now).
    /// Does `presented` match the client's current secret, or its previous one while the
    /// rotation overlap lasts? Constant time in the secret's content.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn verify(&self, presented: &str, stored: &ClientSecret, now_ms: u64) -> bool {
        let current = hmac::verify(&self.0, presented.as_bytes(), &stored.current.0).is_ok();
        let previous = stored.previous.is_some_and(|(h, until)| {
            now_ms < until && hmac::verify(&self.0, presented.as_bytes(), &h.0).is_ok()
        });
        current | previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_url_safe_and_256_bits() {
        let s = NewSecret::generate();
        let body = s.reveal().strip_prefix(SECRET_PREFIX).expect("prefix");
        assert_eq!(body.len(), 43, "32 bytes in unpadded base64url");
        assert!(body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(s.reveal(), NewSecret::generate().reveal());
        assert!(!format!("{s:?}").contains(body));
    }

    #[test]
    fn rotation_overlap_is_honoured() {
        let key = SecretKey(hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]));
        let (old, new) = (NewSecret::generate(), NewSecret::generate());
        let stored = ClientSecret {
            current: key.hash(new.reveal()),
            created_at_ms: 1000,
            previous: Some((key.hash(old.reveal()), 2000)),
        };
        assert!(key.verify(new.reveal(), &stored, 1500));
        assert!(key.verify(old.reveal(), &stored, 1999));
        assert!(
            !key.verify(old.reveal(), &stored, 2000),
            "the overlap ended"
        );
        assert!(!key.verify("as_cs_wrong", &stored, 1500));
    }
}
