//! Keeps this node's SVID signing keys: makes them, has the intermediate signed (here if this
//! node holds the KEK, else by a member that does, or by the offline root's operator), publishes
//! them through the log, activates them, rotates them on SPIRE's schedule and retires them.
//!
//! It acts only on what the local projections show, one command at a time, so a crash at any
//! point is picked up on the next pass: a key file without a published key is never used; a
//! published key whose private half is gone is retired.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use authsec_domain::codec::{self, Tag};
use authsec_domain::command::Command;
use authsec_domain::keys::{KeyKind, KeyState, NodeKey};
use authsec_domain::{Actor, Principal};
use authsec_raft::Raft;
use authsec_storage::{cf, Reader};
use tokio::sync::watch;

use crate::issuer::{self, SvidIssuer};
use crate::security::SignerError;
use crate::services::Ctx;

/// Every node key in the local projection.
pub fn load_keys(reader: &Reader) -> Result<Vec<NodeKey>, authsec_storage::StoreError> {
    let (keys, _) = reader.scan(cf::PROJ_KEYS, b"", None, usize::MAX, usize::MAX, |k, v| {
        codec::decode::<NodeKey>(Tag::NODE_KEY, v)
            .map(Some)
            .map_err(|e| authsec_storage::StoreError::damaged(cf::PROJ_KEYS, k, e))
    })?;
    Ok(keys)
}

/// The kinds of key every node keeps, in the order they are made: the audit key's
/// certificate is signed by the intermediate, so it comes after it.
const KINDS: [KeyKind; 4] = [
    KeyKind::X509Ca,
    KeyKind::Jwt,
    KeyKind::Token,
    KeyKind::Audit,
];

/// What one pass did.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    /// Wrote a command; look again at once.
    Acted,
    /// Nothing to do until time passes or the state changes.
    Idle,
    /// The cluster is not ready for this node's keys yet (no root, not a member).
    Waiting,
}

/// Run until shutdown.
pub async fn run(
    ctx: Arc<Ctx>,
    issuer: Arc<SvidIssuer>,
    raft: Raft,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = ctx.head_rx.clone();
    let mut failures = 0u32;
    loop {
        let wait = match reconcile(&ctx, &issuer, &raft).await {
            Ok(Pass::Acted) => {
                failures = 0;
                continue;
            }
            Ok(Pass::Idle) => {
                failures = 0;
                // Often enough to hit the schedule's points (half and a sixth of the lifetime
                // left) even for short-lived keys.
                (issuer.ca_ttl.min(issuer.jwt_key_ttl) / 24)
                    .clamp(Duration::from_millis(500), Duration::from_secs(10))
            }
            Ok(Pass::Waiting) => Duration::from_millis(500),
            Err(e) => {
                failures += 1;
                tracing::warn!(
                    node_id = issuer.node_id,
                    error = format!("{e:#}"),
                    failures,
                    "keeping the node's signing keys failed; retrying"
                );
                Duration::from_millis(500 * u64::from(failures.min(10)))
            }
        };
        let changed = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            // A change of the log (a key activated or retired elsewhere, this node revoked):
            // look again soon, without running a pass per applied entry under load.
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                true
            }
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if changed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn reconcile(ctx: &Ctx, issuer: &SvidIssuer, raft: &Raft) -> anyhow::Result<Pass> {
    let me = issuer.node_id;
    let security = ctx.reader.security()?;
    if security.revoked_nodes.contains(&me) {
        for kind in KINDS {
            issuer.uninstall(kind);
        }
        return Ok(Pass::Waiting);
    }
    if security.root_cert.is_none() || !ctx.reader.nodes()?.iter().any(|n| n.node_id == me) {
        return Ok(Pass::Waiting);
    }
    // The cluster's transport trusts exactly the roots of the SPIFFE bundle: a prepared root
    // at once (agents holding SVIDs under it call this node, and nodes re-issue their own
    // certificates under it once it is activated), a retired one no longer.
    let roots = ctx.reader.load_roots()?;
    let bootstrap = security.root_cert.clone();
    let bundle = roots
        .bundle_with(bootstrap.as_deref())
        .into_iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.to_vec()))
        .collect();
    ctx.sec.set_trust(bundle)?;
    let signing_root = roots
        .signing_with(bootstrap.as_deref())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let keys: Vec<NodeKey> = load_keys(&ctx.reader)?
        .into_iter()
        .filter(|k| k.node_id == me)
        .collect();
    // Key files no log entry knows (a crash between making a key and publishing it): never
    // used, so removed. Nothing else writes this directory, and no attempt is in flight.
    issuer.sweep(|kid| keys.iter().any(|k| k.kid == kid));
    let now = issuer::now_ms();
    for kind in KINDS {
        let ttl = match kind {
            KeyKind::X509Ca | KeyKind::Audit => issuer.ca_ttl,
            KeyKind::Jwt | KeyKind::Token => issuer.jwt_key_ttl,
        };
        let mine: Vec<&NodeKey> = keys.iter().filter(|k| k.kind == kind).collect();
        let active = mine
            .iter()
            .find(|k| k.state == KeyState::Active && issuer.holds(k) && k.not_after_ms > now);
        match active {
            Some(k) => issuer.install(k)?,
            None => issuer.uninstall(kind),
        }
        // An intermediate of a root that no longer signs is never activated.
        let current_root =
            |k: &NodeKey| kind != KeyKind::X509Ca || signed_by(&k.public, &signing_root);
        let pending = mine
            .iter()
            .filter(|k| {
                k.state == KeyState::Published
                    && issuer.holds(k)
                    && k.not_after_ms > now
                    && current_root(k)
            })
            .max_by_key(|k| k.published_at_ms);
        let (prepare, activate) = match active {
            // An intermediate of a root that no longer signs: replace it at once (the old
            // root stays in the bundle through the overlap, so what it signed still verifies).
            Some(a) if kind == KeyKind::X509Ca && !signed_by(&a.public, &signing_root) => {
                (true, true)
            }
            Some(a) => issuer::schedule(a, ttl, now),
            None => (true, true),
        };
        match pending {
            Some(p) if activate => {
                submit(ctx, Command::ActivateNodeKey { kid: p.kid.clone() }).await?;
                return Ok(Pass::Acted);
            }
            None if prepare => {
                if let Some(key) = prepare_key(ctx, issuer, raft, kind, &mine).await? {
                    tracing::info!(node_id = me, kid = %key.kid, kind = kind.as_str(), "publishing a new signing key");
                    let kid = key.kid.clone();
                    if let Err(e) = submit(ctx, Command::PublishNodeKey { key }).await {
                        // Not published (or not known to be): drop the private half so failed
                        // attempts leave nothing behind. Should the publication have committed
                        // after all, the next pass retires the key it can no longer use.
                        issuer.forget(&kid);
                        return Err(e);
                    }
                    return Ok(Pass::Acted);
                }
            }
            _ => {}
        }
        for k in &mine {
            let expired = k.not_after_ms <= now;
            let retire = match k.state {
                KeyState::Superseded => expired,
                // Never to be used: its private half is gone, or it ran out unused.
                KeyState::Published => expired || !issuer.holds(k) || !current_root(k),
                KeyState::Active | KeyState::Retired => false,
            };
            if retire {
                submit(ctx, Command::RetireNodeKey { kid: k.kid.clone() }).await?;
                return Ok(Pass::Acted);
            }
            if k.state == KeyState::Retired {
                issuer.forget(&k.kid);
            }
        }
    }
    Ok(Pass::Idle)
}

/// Whether `cert` (DER) is signed by the key of `root` (DER).
pub fn signed_by(cert: &[u8], root: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, r))) = (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(root),
    ) else {
        return false;
    };
    c.verify_signature(Some(r.public_key())).is_ok()
}

async fn submit(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    let actor = Actor {
        principal: Principal::Named(
            authsec_raft::tls::node_spiffe_id(&ctx.sec.td, ctx.node_id).to_string(),
        ),
        via_node: ctx.node_id,
    };
    let what = command.name();
    ctx.write(actor, command)
        .await
        .map_err(|s| anyhow::anyhow!("{what}: {}", s.message()))?;
    Ok(())
}

/// A new key of `kind`, its private half on disk, ready to publish; `None` if this node cannot
/// make one by itself (offline-root mode, whose operator signs the intermediate).
async fn prepare_key(
    ctx: &Ctx,
    issuer: &SvidIssuer,
    raft: &Raft,
    kind: KeyKind,
    mine: &[&NodeKey],
) -> anyhow::Result<Option<NodeKey>> {
    let node_id = issuer.node_id;
    let key = |kid: String, public: Vec<u8>, not_after_ms: u64| NodeKey {
        kid,
        node_id,
        kind,
        public,
        not_after_ms,
        state: KeyState::Published,
        published_at_ms: 0,
        changed_at_ms: 0,
    };
    match kind {
        KeyKind::Audit => {
            let node = authsec_raft::tls::node_spiffe_id(&ctx.sec.td, node_id);
            Ok(issuer
                .new_audit_key(&node, issuer.ca_ttl)?
                .map(|(kid, chain, not_after)| key(kid, chain, not_after)))
        }
        KeyKind::Jwt | KeyKind::Token => {
            let (kid, kp) = issuer.new_key(kind)?;
            let not_after = issuer::now_ms() + issuer.jwt_key_ttl.as_millis() as u64;
            Ok(Some(key(kid, issuer::spki(&kp), not_after)))
        }
        KeyKind::X509Ca => {
            if let Some(ca) = ctx.sec.offline_node_ca()? {
                // Offline root: the operator-signed intermediate is this node's SVID issuer.
                let (kid, pem) = ca.svid_kid_and_key(node_id)?;
                if mine.iter().any(|k| k.kid == kid) {
                    tracing::warn!(
                        node_id,
                        kid = %kid,
                        "offline-root mode: the intermediate is due for rotation; have the operator sign a new one (authsec ca sign-intermediate)"
                    );
                    return Ok(None);
                }
                issuer.store_key_pem(&kid, &pem)?;
                issuer.store_cert(&kid, &ca.cert_der)?;
                let not_after = crate::pki::not_after(&ca.cert_der)?.as_millis() as u64;
                return Ok(Some(key(kid, ca.cert_der.to_vec(), not_after)));
            }
            let (kid, kp) = issuer.new_key(kind)?;
            let signed = async {
                let cert = match ctx
                    .sec
                    .sign_node_ca(&ctx.reader, node_id, &kp, issuer.ca_ttl)
                {
                    Ok((cert, _root)) => cert,
                    Err(SignerError::NoKek(..)) => {
                        let csr = rcgen::CertificateParams::default()
                            .serialize_request(&kp)
                            .context("CSR for the intermediate")?;
                        ctx.sec
                            .sign_node_ca_remotely(raft, csr.der(), issuer.ca_ttl)
                            .await?
                    }
                    Err(e) => return Err(e.into()),
                };
                let der = rustls::pki_types::CertificateDer::from(cert.clone());
                if !crate::pki::certifies(&der, &kp)? {
                    anyhow::bail!("the signed intermediate is not for this node's new key");
                }
                issuer.store_cert(&kid, &cert)?;
                let not_after = crate::pki::not_after(&der)?.as_millis() as u64;
                Ok((cert, not_after))
            };
            match signed.await {
                Ok((cert, not_after)) => Ok(Some(key(kid, cert, not_after))),
                Err(e) => {
                    issuer.forget(&kid); // no orphan key files from failed attempts
                    Err(e)
                }
            }
        }
    }
}
