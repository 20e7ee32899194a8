//! The trust bundle in the SPIFFE bundle format, from this node's projections: the root CA
//! certificates as `x509-svid` keys and the nodes' JWT-SVID keys as `jwt-svid` keys, with
//! `spiffe_sequence` from the log (so every node at the same index serves the same bundle).

use std::sync::Arc;

use authsec_api::v1::{self, bundle_service_server::BundleService};
use authsec_api::ApiError;
use authsec_domain::codec::{self, Tag};
use authsec_domain::keys::{KeyKind, KeysMeta};
use authsec_storage::cf;
use base64::Engine;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};
use x509_parser::prelude::FromDer;

use crate::services::Ctx;

/// How often holders should fetch the bundle again: SPIRE's default.
pub const REFRESH_HINT_S: u32 = 300;

/// `(x, y)` of an uncompressed P-256 point (`04 || x || y`), base64url.
fn ec_point(point: &[u8]) -> Result<(String, String), String> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(format!(
            "not an uncompressed P-256 point ({} bytes)",
            point.len()
        ));
    }
    let b = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    Ok((b(&point[1..33]), b(&point[33..])))
}

/// The SPIFFE JWK of an X.509 authority.
pub fn x509_jwk(cert_der: &[u8]) -> Result<Value, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("certificate: {e}"))?;
    let (x, y) = ec_point(&cert.public_key().subject_public_key.data)?;
    Ok(json!({
        "use": "x509-svid",
        "kty": "EC",
        "crv": "P-256",
        "x": x,
        "y": y,
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)],
    }))
}

/// The SPIFFE JWK of a JWT authority (its SubjectPublicKeyInfo).
pub fn jwt_jwk(kid: &str, spki_der: &[u8]) -> Result<Value, String> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| format!("public key {kid}: {e}"))?;
    let (x, y) = ec_point(&spki.subject_public_key.data)?;
    Ok(json!({ "use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": kid, "x": x, "y": y }))
}

/// The bundle as this node's projections hold it.
pub fn current(ctx: &Ctx) -> Result<v1::Bundle, Status> {
    let internal = |e: String| {
        tracing::error!(error = %e, "building the trust bundle failed");
        Status::from(ApiError::Internal(
            "building the trust bundle failed; see the node's log".into(),
        ))
    };
    let meta: KeysMeta = match ctx
        .reader
        .row(cf::PROJ_META, authsec_domain::persist::KEY_KEYS_META)
        .map_err(|e| internal(e.to_string()))?
    {
        Some(v) => codec::decode(Tag::KEYS_META, &v).map_err(|e| internal(e.to_string()))?,
        None => KeysMeta::default(),
    };
    let keys = crate::keymgr::load_keys(&ctx.reader).map_err(|e| internal(e.to_string()))?;
    let mut jwks = Vec::new();
    let roots: Vec<Vec<u8>> = ctx
        .reader
        .bundle_roots()
        .map_err(|e| internal(e.to_string()))?;
    for r in &roots {
        jwks.push(x509_jwk(r).map_err(internal)?);
    }
    for k in keys
        .iter()
        .filter(|k| k.kind == KeyKind::Jwt && k.state.in_bundle())
    {
        jwks.push(jwt_jwk(&k.kid, &k.public).map_err(internal)?);
    }
    let doc = json!({
        "keys": jwks,
        "spiffe_sequence": meta.bundle_sequence,
        "spiffe_refresh_hint": REFRESH_HINT_S,
    });
    Ok(v1::Bundle {
        trust_domain: ctx.sec.td.to_string(),
        sequence: meta.bundle_sequence,
        spiffe_bundle_json: doc.to_string(),
        x509_authorities_der: roots,
        refresh_hint_seconds: REFRESH_HINT_S,
    })
}

#[derive(Debug, Clone)]
pub struct Bundles(pub Arc<Ctx>);

#[tonic::async_trait]
impl BundleService for Bundles {
    async fn get_bundle(
        &self,
        _req: Request<v1::GetBundleRequest>,
    ) -> Result<Response<v1::Bundle>, Status> {
        current(&self.0).map(Response::new)
    }
}

/// `RootService`: rotation of the root that signs node intermediates.
#[derive(Debug, Clone)]
pub struct Roots(pub Arc<Ctx>);

fn store_err(e: authsec_storage::StoreError) -> Status {
    tracing::error!(error = %e, "reading roots failed");
    Status::internal("storage read failed; see the node's log")
}

impl Roots {
    fn list(&self) -> Result<Vec<v1::TrustRoot>, Status> {
        let bootstrap = self.0.reader.security().map_err(store_err)?.root_cert;
        let meta = self.0.reader.load_roots().map_err(store_err)?;
        let signing = meta.signing_with(bootstrap.as_deref()).map(<[u8]>::to_vec);
        let in_bundle: Vec<Vec<u8>> = meta
            .bundle_with(bootstrap.as_deref())
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let mut out = Vec::new();
        let mut push = |cert: &[u8], state: &str| {
            out.push(v1::TrustRoot {
                fingerprint: authsec_domain::fingerprint(cert),
                cert_der: cert.to_vec(),
                state: state.into(),
                signing: signing.as_deref() == Some(cert),
                in_bundle: in_bundle.iter().any(|b| b == cert),
            })
        };
        if let Some(b) = &bootstrap {
            push(b, "bootstrap");
        }
        for r in &meta.roots {
            push(&r.cert_der, r.state.as_str());
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl v1::root_service_server::RootService for Roots {
    async fn list_roots(
        &self,
        _req: Request<v1::ListRootsRequest>,
    ) -> Result<Response<v1::ListRootsResponse>, Status> {
        Ok(Response::new(v1::ListRootsResponse {
            roots: self.list()?,
        }))
    }

    async fn prepare_root(
        &self,
        req: Request<v1::PrepareRootRequest>,
    ) -> Result<Response<v1::PrepareRootResponse>, Status> {
        let actor = self.0.actor(&req);
        let label = format!("{}", crate::issuer::now_ms() / 1000);
        let (cert_der, sealed) = self
            .0
            .sec
            .new_root(&label)
            .map_err(crate::join::signer_status)?;
        let fingerprint = authsec_domain::fingerprint(&cert_der);
        let (receipt, _) = self
            .0
            .write(
                actor,
                authsec_domain::command::Command::PrepareRoot {
                    cert_der,
                    sealed_key: authsec_domain::Sealed(sealed),
                },
            )
            .await?;
        tracing::warn!(%fingerprint, "a new root is prepared: in every bundle now; activate it once holders have fetched it");
        let root = self
            .list()?
            .into_iter()
            .find(|r| r.fingerprint == fingerprint);
        Ok(Response::new(v1::PrepareRootResponse {
            receipt: Some(receipt),
            root,
        }))
    }

    async fn activate_root(
        &self,
        req: Request<v1::ActivateRootRequest>,
    ) -> Result<Response<v1::RootWriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let meta = self.0.reader.load_roots().map_err(store_err)?;
        if let Some(p) = meta.roots.iter().find(|x| x.fingerprint == r.fingerprint) {
            let age_s = crate::issuer::now_ms().saturating_sub(p.changed_at_ms) / 1000;
            if p.state == authsec_domain::roots::RootState::Prepared
                && age_s < u64::from(REFRESH_HINT_S)
                && !r.force
            {
                return Err(Status::failed_precondition(format!(
                    "{} was prepared {age_s} s ago; holders fetch the bundle every {REFRESH_HINT_S} s, so some may not trust it yet. Wait {} s more, or pass force",
                    r.fingerprint,
                    u64::from(REFRESH_HINT_S) - age_s
                )));
            }
        }
        let (receipt, _) = self
            .0
            .write(
                actor,
                authsec_domain::command::Command::ActivateRoot {
                    fingerprint: r.fingerprint,
                },
            )
            .await?;
        Ok(Response::new(v1::RootWriteResponse {
            receipt: Some(receipt),
        }))
    }

    async fn retire_root(
        &self,
        req: Request<v1::RetireRootRequest>,
    ) -> Result<Response<v1::RootWriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let peer = req
            .extensions()
            .get::<authsec_raft::tls::PeerInfo>()
            .and_then(|p| p.leaf.clone());
        let r = req.into_inner();
        if !r.force {
            let root = self
                .list()?
                .into_iter()
                .find(|x| x.fingerprint == r.fingerprint);
            if let Some(root) = root {
                self.may_retire(&peer, &root.cert_der).await?;
            }
        }
        let (receipt, _) = self
            .0
            .write(
                actor,
                authsec_domain::command::Command::RetireRoot {
                    fingerprint: r.fingerprint,
                },
            )
            .await?;
        Ok(Response::new(v1::RootWriteResponse {
            receipt: Some(receipt),
        }))
    }
}

impl Roots {
    /// Retiring a root takes it out of the SPIFFE bundle and out of the cluster's transport
    /// trust, so refuse (without `force`) while anything still depends on it, and name all of
    /// it at once: the caller's own certificate (it would lock itself out: refused alone, as
    /// only the caller can mend it), other admins' live certificates, a member serving a
    /// certificate under it (or one that cannot be asked), and intermediates it signed that
    /// are still in use (their SVIDs would stop verifying for holders that refetch the
    /// bundle). Members re-issue within seconds of an activation; admins with `authsec admin
    /// rotate`; intermediates expire within `[issuer] ca_ttl_s`.
    async fn may_retire(
        &self,
        caller: &Option<rustls::pki_types::CertificateDer<'static>>,
        root: &[u8],
    ) -> Result<(), Status> {
        let fingerprint = authsec_domain::fingerprint(root);
        if let Some(leaf) = caller {
            if crate::keymgr::signed_by(leaf, root) {
                return Err(Status::failed_precondition(format!(
                    "your own admin certificate is signed by {fingerprint}: retiring it would lock you out. Re-issue your credential under the signing root first (`authsec admin rotate`), or pass force"
                )));
            }
        }
        let mut behind = Vec::new();
        let security = self.0.reader.security().map_err(store_err)?;
        let admins = self.0.reader.load_admins().map_err(store_err)?;
        let now = crate::issuer::now_ms();
        for (name, cert) in admins.live(&security.revoked_certs, now) {
            if cert.root == fingerprint {
                behind.push(format!(
                    "admin {name:?} holds a certificate it signed ({}; `authsec admin rotate` as {name} replaces it)",
                    cert.fingerprint
                ));
            }
        }
        let members: Vec<(u64, String)> = {
            let m = self.0.writer.raft().metrics().borrow().clone();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect()
        };
        for (id, addr) in members {
            match self.0.sec.served_chain(&addr, id).await {
                Ok(chain)
                    if chain
                        .first()
                        .is_some_and(|l| crate::keymgr::signed_by(l, root)) =>
                {
                    behind.push(format!("node {id} serves a certificate it signed"))
                }
                Ok(_) => {}
                Err(e) => behind.push(format!("node {id} could not be checked ({e:#})")),
            }
        }
        let intermediates = crate::keymgr::load_keys(&self.0.reader)
            .map_err(store_err)?
            .into_iter()
            .filter(|k| {
                k.kind == authsec_domain::keys::KeyKind::X509Ca
                    && k.state.in_bundle()
                    && k.not_after_ms > now
                    && crate::keymgr::signed_by(&k.public, root)
            })
            .map(|k| k.kid)
            .collect::<Vec<_>>();
        if !intermediates.is_empty() {
            behind.push(format!(
                "it anchors intermediates in use ({}), whose SVIDs would stop verifying until they expire",
                intermediates.join(", ")
            ));
        }
        if !behind.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{fingerprint} is still in use: {}. Members re-issue their certificates within seconds of an activation, admins with `authsec admin rotate`, and intermediates expire within `[issuer] ca_ttl_s`; wait, or pass force (a forced retirement cuts off whatever still depends on it)",
                behind.join("; ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_becomes_a_spiffe_x509_jwk() {
        let td = authsec_domain::TrustDomain::parse("example.org").expect("valid");
        let root = crate::pki::Root::generate(&td).expect("root");
        let jwk = x509_jwk(&root.cert_der).expect("jwk");
        assert_eq!(jwk["use"], "x509-svid");
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["x"].as_str().map(str::len), Some(43));
        let der = base64::engine::general_purpose::STANDARD
            .decode(jwk["x5c"][0].as_str().expect("x5c"))
            .expect("base64");
        assert_eq!(der, root.cert_der.to_vec());
        assert!(x509_jwk(b"not a certificate").is_err());
    }

    #[test]
    fn a_jwt_key_becomes_a_spiffe_jwt_jwk() {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::generate().expect("key");
        let jwk = jwt_jwk("n1-abc", &key.subject_public_key_info()).expect("jwk");
        assert_eq!(jwk["use"], "jwt-svid");
        assert_eq!(jwk["kid"], "n1-abc");
        assert_eq!(jwk["y"].as_str().map(str::len), Some(43));
        assert!(jwt_jwk("bad", &[1, 2, 3]).is_err());
    }
}
