//! Trusted external issuers: identity providers whose tokens a token exchange accepts as the
//! subject (a person delegating to an agent, a CI platform's job token). Each is configured with
//! its exact `iss`, an algorithm allow-list and a JWKS URL, fetched safely: https only, one
//! request with no redirects followed, bounded in size and time, and never to an internal
//! address unless the issuer is marked as internal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jose::{Jws, VerifyKey};

/// A JWKS document larger than this is refused.
const JWKS_BYTES_MAX: usize = 64 * 1024;
const JWKS_KEYS_MAX: usize = 64;
/// How long fetched keys are used before they are fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers a fetch at most this often per issuer.
const REFETCH_MIN: Duration = Duration::from_secs(30);
const SKEW_S: u64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// Where its signing keys are published (https).
    pub jwks_url: String,
    /// Algorithms accepted from it: ES256, EdDSA, RS256.
    pub algorithms: Vec<String>,
    /// The `aud` its tokens must carry; default: this authorization server's issuer URL(s).
    #[serde(default)]
    pub audience: Option<String>,
    /// Roots (PEM) for its JWKS endpoint, for a private PKI; default the Web PKI.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow the JWKS host to resolve to a loopback or private address (a provider inside the
    /// same network, or tests). Off by default: SSRF protection.
    #[serde(default)]
    pub allow_internal: bool,
}

#[derive(Debug, Default)]
struct Cached {
    keys: Vec<(Option<String>, VerifyKey)>,
    fetched: Option<Instant>,
    tried: Option<Instant>,
}

/// What a verified external token says.
#[derive(Debug, Clone)]
pub struct ExternalSubject {
    pub issuer: String,
    pub subject: String,
}

pub struct External {
    issuers: Vec<(TrustedIssuer, Arc<rustls::ClientConfig>)>,
    cache: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Cached>>>>,
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("External")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|(i, _)| &i.issuer)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl External {
    pub fn new(list: &[TrustedIssuer]) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let mut issuers = Vec::new();
        for t in list {
            if t.issuer.is_empty() || t.issuer.len() > 512 {
                anyhow::bail!("trusted issuer: issuer must be 1 to 512 bytes");
            }
            if !t.jwks_url.starts_with("https://") {
                anyhow::bail!("trusted issuer {}: jwks_url must be https", t.issuer);
            }
            if t.algorithms.is_empty()
                || t.algorithms
                    .iter()
                    .any(|a| !["ES256", "EdDSA", "RS256"].contains(&a.as_str()))
            {
                anyhow::bail!(
                    "trusted issuer {}: algorithms must name one or more of ES256, EdDSA, RS256",
                    t.issuer
                );
            }
            let mut roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(p) = &t.ca_file {
                for c in rustls::pki_types::CertificateDer::pem_file_iter(p)
                    .with_context(|| format!("read {}", p.display()))?
                {
                    roots
                        .add(c.with_context(|| format!("parse {}", p.display()))?)
                        .with_context(|| format!("a root in {}", p.display()))?;
                }
            }
            let mut c = rustls::ClientConfig::builder_with_provider(authsec_raft::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            issuers.push((t.clone(), Arc::new(c)));
        }
        Ok(Self {
            issuers,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_trusted(&self, iss: &str) -> bool {
        self.issuers.iter().any(|(t, _)| t.issuer == iss)
    }

    async fn keys(
        &self,
        t: &TrustedIssuer,
        config: &Arc<rustls::ClientConfig>,
        kid: Option<&str>,
    ) -> Result<Vec<VerifyKey>, String> {
        let slot = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(t.issuer.clone())
            .or_default()
            .clone();
        let mut c = slot.lock().await;
        let now = Instant::now();
        let stale = c.fetched.is_none_or(|f| now.duration_since(f) > JWKS_TTL);
        let unknown = kid.is_some_and(|k| !c.keys.iter().any(|(x, _)| x.as_deref() == Some(k)));
        let may_try = c.tried.is_none_or(|f| now.duration_since(f) > REFETCH_MIN);
        if (stale || unknown) && may_try {
            c.tried = Some(now);
            match fetch_jwks(t, config).await {
                Ok(keys) => {
                    c.keys = keys;
                    c.fetched = Some(now);
                }
                Err(e) => {
                    tracing::warn!(issuer = %t.issuer, error = %e, "fetching a trusted issuer's JWKS failed");
                    if c.fetched.is_none() {
                        return Err(format!(
                            "the keys of {} could not be fetched: {e}",
                            t.issuer
                        ));
                    }
                }
            }
        }
        Ok(c.keys
            .iter()
            .filter(|(k, _)| kid.is_none() || k.as_deref() == kid)
            .map(|(_, v)| v.clone())
            .collect())
    }

    /// Verify an external token: exact issuer, allowed algorithm, signature, times, audience.
    pub async fn verify(
        &self,
        jws: &Jws,
        own_issuers: &[String],
    ) -> Result<ExternalSubject, String> {
        let iss = jws.str_claim("iss").unwrap_or("");
        let Some((t, config)) = self.issuers.iter().find(|(t, _)| t.issuer == iss) else {
            return Err(format!("the token's issuer {iss:?} is not trusted"));
        };
        if !t.algorithms.iter().any(|a| a == jws.alg()) {
            return Err(format!(
                "alg {:?} is not allowed for {} (allowed: {})",
                jws.alg(),
                t.issuer,
                t.algorithms.join(", ")
            ));
        }
        let keys = self.keys(t, config, jws.kid()).await?;
        if !keys.iter().any(|k| jws.verify(k)) {
            return Err(format!(
                "the token's signature does not verify with {}'s keys",
                t.issuer
            ));
        }
        let now = crate::issuer::now_ms() / 1000;
        let exp = jws.num_claim("exp").ok_or("the token has no exp")?;
        if exp + SKEW_S <= now {
            return Err("the token expired".into());
        }
        if jws.num_claim("nbf").is_some_and(|n| n > now + SKEW_S)
            || jws.num_claim("iat").is_some_and(|n| n > now + SKEW_S)
        {
            return Err("the token is not valid yet".into());
        }
        let auds = jws.audiences();
        let ok = match &t.audience {
            Some(a) => auds.contains(&a.as_str()),
            None => own_issuers.iter().any(|o| auds.contains(&o.as_str())),
        };
        if !ok {
            return Err(format!(
                "the token's aud must include {}",
                t.audience
                    .clone()
                    .unwrap_or_else(|| own_issuers.join(" or "))
            ));
        }
        let sub = jws
            .str_claim("sub")
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .ok_or("the token needs a sub (1 to 512 bytes)")?;
        Ok(ExternalSubject {
            issuer: t.issuer.clone(),
            subject: sub.to_owned(),
        })
    }
}

async fn fetch_jwks(
    t: &TrustedIssuer,
    config: &Arc<rustls::ClientConfig>,
) -> Result<Vec<(Option<String>, VerifyKey)>, String> {
    let body = crate::https::get(
        &t.jwks_url,
        config.clone(),
        JWKS_BYTES_MAX,
        t.allow_internal,
    )
    .await?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no keys array")?;
    Ok(keys
        .iter()
        .take(JWKS_KEYS_MAX)
        .filter_map(Value::as_object)
        .filter(|k| {
            k.get("use")
                .and_then(Value::as_str)
                .is_none_or(|u| u == "sig")
        })
        .filter_map(|k| {
            let key = VerifyKey::from_jwk(k).ok()?;
            Some((k.get("kid").and_then(Value::as_str).map(str::to_owned), key))
        })
        .collect())
}
