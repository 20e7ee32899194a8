//! A running node's security: its TLS identity and trust bundle, the signer (the root key,
//! unsealed under the KEK only for the moment it signs), automatic renewal of the node's
//! certificate, and the revocation list every handshake and request is checked against.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use authsec_api::v1;
use authsec_domain::{SecurityState, TrustDomain, SEALED_ROOT_KEY};
use authsec_raft::tls::{self, TlsState};
use authsec_raft::{Raft, Transport};
use authsec_storage::Reader;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::pki::{self, Kek, NodeFiles, PkiError, Root, Sans};

/// Why this node cannot sign certificates.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("node {0} holds no KEK ({1}); ask a node that does")]
    NoKek(u64, PathBuf),
    #[error("the cluster has no root CA key (offline-root mode, or not bootstrapped yet)")]
    NoRoot,
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("offline-root mode: the cluster holds no root key; have the operator sign the node's intermediate with `authsec ca sign-intermediate`")]
    Offline,
    #[error("storage: {0}")]
    Store(#[from] authsec_storage::StoreError),
}

/// A signed chain (leaf first) and the trust bundle, DER.
pub type Signed = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The signing root with its key, the cross-certificates that chain it to the other roots
/// still trusted, and the trust bundle (see [`Security::transport_signer`]).
#[derive(Debug)]
pub struct TransportSigner {
    pub root: Root,
    pub cross: Vec<CertificateDer<'static>>,
    pub bundle: Vec<CertificateDer<'static>>,
}

/// An admin certificate this node signed, and what the log records of it.
pub struct SignedAdmin {
    pub cert: Vec<u8>,
    /// Every root of the trust bundle, the signing one first.
    pub bundle: Vec<Vec<u8>>,
    /// The fingerprint of the root that signed it.
    pub root: String,
    pub not_after_ms: u64,
}

#[derive(Debug)]
pub struct Security {
    pub td: TrustDomain,
    pub node_id: u64,
    /// `None`: the operator chose `--insecure`.
    pub tls: Option<Arc<TlsState>>,
    files: NodeFiles,
    kek_path: PathBuf,
    sans: Sans,
    ttl: Duration,
}

impl Security {
    pub fn load(cfg: &NodeConfig) -> anyhow::Result<Arc<Self>> {
        let td = cfg.td()?;
        let files = NodeFiles::new(&cfg.data_dir);
        let tls = if cfg.insecure {
            tracing::warn!(
                node_id = cfg.node_id,
                "INSECURE: plaintext gRPC with no authentication (--insecure); anyone who reaches this port controls the cluster"
            );
            None
        } else {
            if !files.exists() {
                bail!(
                    "no TLS identity in {}: run `authsec node init` (a new cluster) or `authsec node join` (an existing one) first",
                    files.dir.display()
                );
            }
            let roots = files.load_bundle()?;
            let (chain, key) = files.load_identity()?;
            let want = tls::node_spiffe_id(&td, cfg.node_id);
            let got = tls::svid_id(&chain[0]).context("the node certificate")?;
            if got != want {
                bail!(
                    "{} is for {got}, but this is {want}",
                    files.cert().display()
                );
            }
            Some(TlsState::new(
                td.clone(),
                roots.clone(),
                with_roots(chain, &roots),
                key,
            )?)
        };
        Ok(Arc::new(Self {
            td,
            node_id: cfg.node_id,
            tls,
            files,
            kek_path: cfg.kek_path(),
            sans: cfg.sans()?,
            ttl: cfg.cert_ttl(),
        }))
    }

    /// This node's TLS directory (`<data_dir>/tls`).
    pub fn tls_dir(&self) -> &std::path::Path {
        &self.files.dir
    }

    /// Where this node's KEK is (it may not exist: a joined node holds none).
    pub fn kek_path(&self) -> &std::path::Path {
        &self.kek_path
    }

    pub fn transport(&self) -> Transport {
        match &self.tls {
            Some(t) => Transport::mutual_tls(t.clone()),
            None => Transport::plaintext(),
        }
    }

    /// The root CA with its key, for one signing. The sealed key comes from the replicated
    /// `sealed_secrets` family (or, before the cluster has it, from `tls/root.sealed`).
    pub fn signer(&self, reader: &Reader) -> Result<Root, SignerError> {
        if self.files.node_ca()?.is_some() && reader.sealed(SEALED_ROOT_KEY)?.is_none() {
            return Err(SignerError::Offline);
        }
        let kek = match Kek::load(&self.kek_path) {
            Ok(k) => k,
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(SignerError::NoKek(self.node_id, self.kek_path.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        let sealed = match reader.sealed(SEALED_ROOT_KEY)? {
            Some(s) => s,
            None => match std::fs::read(self.files.sealed_root()) {
                Ok(s) => s,
                Err(_)
                    if reader.security()?.root_cert.is_some()
                        || self.files.node_ca()?.is_some() =>
                {
                    return Err(SignerError::Offline)
                }
                Err(_) => return Err(SignerError::NoRoot),
            },
        };
        let cert = match reader.security()?.root_cert {
            Some(c) => c,
            None => self
                .files
                .load_bundle()?
                .first()
                .map(|c| c.to_vec())
                .ok_or(SignerError::NoRoot)?,
        };
        Ok(Root::unseal(&kek, &self.td, &cert, &sealed)?)
    }

    /// The root that signs node intermediates: the active rotated root (its key sealed in
    /// `sealed_secrets` under `svid_root:<fingerprint>`), else the bootstrap root.
    pub fn svid_signer(&self, reader: &Reader) -> Result<Root, SignerError> {
        let roots = reader.load_roots()?;
        match roots.active() {
            Some(active) => self.rotated_root(reader, &active.cert_der),
            None => self.signer(reader),
        }
    }

    /// A rotated root with its key, unsealed from `sealed_secrets`.
    fn rotated_root(&self, reader: &Reader, cert_der: &[u8]) -> Result<Root, SignerError> {
        let kek = match Kek::load(&self.kek_path) {
            Ok(k) => k,
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(SignerError::NoKek(self.node_id, self.kek_path.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        let fingerprint = authsec_domain::fingerprint(cert_der);
        let sealed = reader
            .sealed(&authsec_domain::command::svid_root_key(&fingerprint))?
            .ok_or(SignerError::NoRoot)?;
        Ok(Root::unseal(&kek, &self.td, cert_der, &sealed)?)
    }

    /// What signs the cluster's transport (node and admin certificates) now: the trust
    /// domain's signing root, the one that signs node intermediates too (the active rotated
    /// root, else the bootstrap root). While other roots are still trusted, each certifies
    /// the signing root (a cross-certificate served in the chain), so a peer or admin that
    /// holds only an older root keeps verifying the new certificates through the rotation.
    pub fn transport_signer(&self, reader: &Reader) -> Result<TransportSigner, SignerError> {
        let roots = reader.load_roots()?;
        let bootstrap = reader.security()?.root_cert;
        let mut bundle: Vec<CertificateDer<'static>> = roots
            .bundle_with(bootstrap.as_deref())
            .into_iter()
            .map(|c| CertificateDer::from(c.to_vec()))
            .collect();
        let Some(active) = roots.active() else {
            let root = self.signer(reader)?;
            if bundle.is_empty() {
                // Bootstrapping: the root is not in the log yet.
                bundle.push(root.cert_der.clone());
            }
            return Ok(TransportSigner {
                root,
                cross: Vec::new(),
                bundle,
            });
        };
        let root = self.rotated_root(reader, &active.cert_der)?;
        let mut cross = Vec::new();
        for other in bundle.iter().filter(|c| **c != root.cert_der) {
            let older = if bootstrap.as_deref() == Some(other.as_ref()) {
                self.signer(reader)
            } else {
                self.rotated_root(reader, other)
            };
            match older.and_then(|o| Ok(o.cross_certify(&root)?)) {
                Ok(c) => cross.push(c),
                // Without it, holders of only that root cannot verify the new certificate;
                // the rotation goes on for everyone else.
                Err(e) => tracing::warn!(
                    root = %authsec_domain::fingerprint(other),
                    error = %e,
                    "no cross-certificate from a trusted root"
                ),
            }
        }
        Ok(TransportSigner {
            root,
            cross,
            bundle,
        })
    }

    /// Trust exactly `bundle` at every handshake from now on, and keep it on disk for the
    /// next start: a prepared root is trusted at once, a retired one no longer.
    pub fn set_trust(&self, bundle: Vec<CertificateDer<'static>>) -> anyhow::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        if self.files.node_ca()?.is_some() {
            // Offline-root mode: the operator's root is the bundle; nothing rotates here.
            return Ok(());
        }
        if tls.set_bundle(bundle.clone())? {
            self.files.write_bundle(&bundle)?;
            tracing::info!(
                node_id = self.node_id,
                roots = ?bundle.iter().map(|c| pki::fingerprint(c)).collect::<Vec<_>>(),
                "transport trust bundle changed"
            );
        }
        Ok(())
    }

    /// Whether this node's transport certificate must be re-issued now: the signing root
    /// changed (a root rotation was activated), so the current leaf is not signed by it.
    pub fn needs_reissue(&self, reader: &Reader) -> bool {
        let Some(tls) = &self.tls else {
            return false;
        };
        // No rotated root is active in offline-root mode (no node can make one), so the
        // common case ends here without touching the node's files.
        let Ok(roots) = reader.load_roots() else {
            return false;
        };
        let Some(active) = roots.active() else {
            return false;
        };
        tls.chain()
            .first()
            .is_some_and(|leaf| !crate::keymgr::signed_by(leaf, &active.cert_der))
            && matches!(self.files.node_ca(), Ok(None))
    }

    /// A new root for rotation, made here (this node must hold the KEK): the certificate and
    /// its key sealed under the KEK.
    pub fn new_root(&self, label: &str) -> Result<(Vec<u8>, Vec<u8>), SignerError> {
        let kek = match Kek::load(&self.kek_path) {
            Ok(k) => k,
            Err(PkiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(SignerError::NoKek(self.node_id, self.kek_path.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        if self.files.node_ca()?.is_some() {
            return Err(SignerError::Offline);
        }
        let root = Root::generate_labelled(&self.td, label)?;
        let sealed = root.seal(&kek, &self.td);
        Ok((root.cert_der.to_vec(), sealed))
    }

    /// Sign a certificate for `node_id` from a CSR; answers the chain and the bundle.
    pub fn sign_for(
        &self,
        reader: &Reader,
        node_id: u64,
        csr_der: &[u8],
        sans: &Sans,
    ) -> Result<Signed, SignerError> {
        let pk = pki::csr_public_key(csr_der)?;
        let s = self.transport_signer(reader)?;
        let leaf = s.root.sign_node(&self.td, node_id, &pk, sans, self.ttl)?;
        let mut chain = vec![leaf.to_vec()];
        chain.extend(s.cross.iter().map(|c| c.to_vec()));
        Ok((chain, s.bundle.iter().map(|c| c.to_vec()).collect()))
    }

    /// Sign an intermediate CA (pathLen 0) for `node_id`'s SVID signing key: `(certificate,
    /// root)`, DER.
    pub fn sign_node_ca(
        &self,
        reader: &Reader,
        node_id: u64,
        subject: &impl rcgen::PublicKeyData,
        ttl: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), SignerError> {
        let root = self.svid_signer(reader)?;
        let cert = root.sign_intermediate(&self.td, node_id, subject, ttl)?;
        Ok((cert.to_vec(), root.cert_der.to_vec()))
    }

    /// Have a member that holds the KEK sign this node's intermediate CA.
    pub async fn sign_node_ca_remotely(
        &self,
        raft: &Raft,
        csr: &[u8],
        ttl: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        self.ask_members(raft, |mut c| {
            let mut req = tonic::Request::new(v1::SignNodeCaRequest {
                csr_der: csr.to_vec(),
                ttl_seconds: ttl.as_secs(),
            });
            req.set_timeout(Duration::from_secs(5));
            async move { c.sign_node_ca(req).await.map(|r| r.into_inner().cert_der) }
        })
        .await
        .map_err(|e| e.context("no member could sign this node's intermediate CA"))
    }

    /// Put one call to the other members in turn (a member without the KEK refuses); the
    /// first answer wins, else the last refusal is the error.
    async fn ask_members<T, F, Fut>(&self, raft: &Raft, call: F) -> anyhow::Result<T>
    where
        F: Fn(v1::node_service_client::NodeServiceClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let members: Vec<(u64, String)> = {
            let m = raft.metrics().borrow().clone();
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect()
        };
        let transport = self.transport();
        let mut last = anyhow::anyhow!("no other member to ask");
        for (peer, addr) in members {
            let ch = transport.channel_to(&addr, tls::Expect::Node(peer))?;
            match call(v1::node_service_client::NodeServiceClient::new(ch)).await {
                Ok(answer) => return Ok(answer),
                Err(s) => last = anyhow::anyhow!("node {peer}: {}", s.message()),
            }
        }
        Err(last)
    }

    /// The certificate chain member `node_id` serves at `addr` now (leaf first).
    pub async fn served_chain(
        &self,
        addr: &str,
        node_id: u64,
    ) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let Some(state) = &self.tls else {
            bail!("an --insecure cluster serves no certificates");
        };
        tls::served_chain(
            state,
            addr,
            tls::Expect::Node(node_id),
            Duration::from_secs(3),
        )
        .await
        .with_context(|| format!("node {node_id} at {addr}"))
    }

    /// Offline-root mode: this node's operator-signed intermediate, if any.
    pub fn offline_node_ca(&self) -> Result<Option<pki::NodeCa>, PkiError> {
        self.files.node_ca()
    }

    /// Sign an admin certificate for a CSR's key under the signing root: the certificate and
    /// the transport bundle (what the admin trusts), DER.
    pub fn sign_admin(
        &self,
        reader: &Reader,
        name: &str,
        csr_der: &[u8],
    ) -> Result<SignedAdmin, SignerError> {
        let pk = pki::csr_public_key(csr_der)?;
        let s = self.transport_signer(reader)?;
        let cert = s.root.sign_admin(&self.td, name, &pk)?;
        let not_after_ms = pki::not_after_ms(&cert)?;
        Ok(SignedAdmin {
            root: pki::fingerprint(&s.root.cert_der),
            not_after_ms,
            cert: cert.to_vec(),
            bundle: s.bundle.iter().map(|c| c.to_vec()).collect(),
        })
    }

    /// Renew this node's certificate: a fresh key, signed here if this node holds the KEK,
    /// else by a member that does. The new certificate serves new handshakes at once and is
    /// on disk for the next start.
    pub async fn renew(&self, reader: &Reader, raft: &Raft) -> anyhow::Result<()> {
        let Some(state) = &self.tls else {
            return Ok(());
        };
        let id = tls::node_spiffe_id(&self.td, self.node_id);
        let (key, csr) = pki::new_key_and_csr(&id)?;
        let signed = match self.files.node_ca()? {
            // Offline-root mode: this node's own intermediate signs its leaf.
            Some(ca) => {
                let leaf = ca.sign_node(&self.td, self.node_id, &key, &self.sans, self.ttl)?;
                let bundle = self.files.load_bundle()?;
                let mut chain = vec![leaf.to_vec(), ca.cert_der.to_vec()];
                chain.extend(bundle.iter().map(|b| b.to_vec()));
                Ok((chain, bundle.iter().map(|b| b.to_vec()).collect()))
            }
            None => self.sign_for(reader, self.node_id, &csr, &self.sans),
        };
        let (chain, bundle) = match signed {
            Ok(x) => x,
            Err(SignerError::NoKek(..)) => self.renew_remotely(raft, &csr).await?,
            Err(e) => return Err(e.into()),
        };
        let chain: Vec<CertificateDer<'static>> =
            chain.into_iter().map(CertificateDer::from).collect();
        let bundle: Vec<CertificateDer<'static>> =
            bundle.into_iter().map(CertificateDer::from).collect();
        if tls::svid_id(&chain[0])? != id {
            bail!("the renewed certificate is not for {id}");
        }
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow::anyhow!("new key: {e}"))?;
        state.replace(bundle.clone(), with_roots(chain.clone(), &bundle), key_der)?;
        self.files.write_signed(&chain, &bundle, &key)?;
        tracing::info!(
            node_id = self.node_id,
            not_after_s = pki::not_after(&chain[0])?.as_secs(),
            "node certificate renewed"
        );
        Ok(())
    }

    async fn renew_remotely(&self, raft: &Raft, csr: &[u8]) -> anyhow::Result<Signed> {
        self.ask_members(raft, |mut c| {
            let mut req = tonic::Request::new(v1::RenewRequest {
                csr_der: csr.to_vec(),
                dns_names: self.sans.dns_strings(),
                ip_addrs: self.sans.ip_strings(),
            });
            req.set_timeout(Duration::from_secs(5));
            async move {
                c.renew(req).await.map(|r| {
                    let r = r.into_inner();
                    (r.cert_chain_der, r.bundle_der)
                })
            }
        })
        .await
        .map_err(|e| e.context("no member could renew this node's certificate"))
    }

    /// Refuse, from now on, what the security projection revokes (nodes and single
    /// certificates). The revocation loop calls it on every change; a node that served a
    /// revocation calls it before answering.
    pub fn enforce(&self, s: &SecurityState) {
        if let Some(tls) = &self.tls {
            tls.set_revoked(s.revoked_nodes.clone());
            tls.set_revoked_certs(s.revoked_certs.clone());
        }
    }

    /// How long until the current certificate is due for renewal.
    pub fn renew_in(&self) -> Option<Duration> {
        let state = self.tls.as_ref()?;
        let chain = state.chain();
        pki::renew_in(chain.first()?).ok()
    }
}

/// The chain a node serves: its leaf, then the roots, so a joining node can pin the root by
/// fingerprint from the handshake itself.
pub fn with_roots(
    mut chain: Vec<CertificateDer<'static>>,
    roots: &[CertificateDer<'static>],
) -> Vec<CertificateDer<'static>> {
    chain.retain(|c| !roots.contains(c));
    chain.extend(roots.iter().cloned());
    chain
}

/// Renew the certificate at half-life, and at once when the signing root changes (a root
/// rotation was activated), forever; retries failures every few seconds.
pub async fn renew_loop(sec: Arc<Security>, reader: Reader, raft: Raft) {
    /// How often the signing root is looked at (one projection read).
    const ROOT_CHECK: Duration = Duration::from_secs(1);
    loop {
        let due = tokio::time::Instant::now()
            + sec
                .renew_in()
                .unwrap_or(Duration::from_secs(60))
                .max(Duration::from_millis(200));
        loop {
            let now = tokio::time::Instant::now();
            if now >= due {
                break;
            }
            tokio::time::sleep((due - now).min(ROOT_CHECK)).await;
            if sec.needs_reissue(&reader) {
                tracing::info!(
                    node_id = sec.node_id,
                    "the signing root changed: re-issuing this node's certificate under it"
                );
                break;
            }
        }
        if let Err(e) = sec.renew(&reader, &raft).await {
            tracing::warn!(
                node_id = sec.node_id,
                error = format!("{e:#}"),
                "certificate renewal failed; retrying"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Keep the TLS revocation lists equal to the replicated ones: the state machine publishes
/// the security projection whenever an applied entry changes it.
pub async fn revocation_loop(sec: Arc<Security>, mut rx: watch::Receiver<SecurityState>) {
    if sec.tls.is_none() {
        return;
    }
    loop {
        let s = rx.borrow_and_update().clone();
        if !s.revoked_nodes.is_empty() || !s.revoked_certs.is_empty() {
            tracing::info!(
                revoked_nodes = ?s.revoked_nodes,
                revoked_certificates = s.revoked_certs.len(),
                "revocations in force"
            );
        }
        sec.enforce(&s);
        if rx.changed().await.is_err() {
            return;
        }
    }
}
