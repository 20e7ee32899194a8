//! `authsec node init` and `authsec node join`: giving a node its identity.
//!
//! - `init` without `--pki-from` creates the trust domain: a root CA (ECDSA P-256), the KEK
//!   file that seals its key, this node's certificate and the bootstrap admin credential.
//! - `init --pki-from DIR` (DIR holds `ca.crt` and `root.sealed` from the first node, and this
//!   host has the KEK file) signs this node's certificate locally: for the other members of a
//!   statically bootstrapped cluster.
//! - `join` needs neither the KEK nor the root: a single-use token and the root's fingerprint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use authsec_api::error::LEADER_ADDR_HEADER;
use authsec_api::v1;
use authsec_raft::tls;
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;

use crate::config::NodeConfig;
use crate::pki::{self, AdminFiles, Kek, NodeFiles, Root};

/// The bootstrap admin's name: `spiffe://<td>/authsec/admin/root`.
pub const BOOTSTRAP_ADMIN: &str = "root";

#[derive(Debug)]
pub struct Initialized {
    pub fingerprint: String,
    pub created_root: bool,
    pub admin_dir: Option<PathBuf>,
}

/// Give this node its TLS identity (see the module docs). Idempotent: an initialized node is
/// left as it is.
pub fn init_pki(
    cfg: &NodeConfig,
    pki_from: Option<&Path>,
    admin_dir: Option<&Path>,
) -> anyhow::Result<Initialized> {
    let td = cfg.td()?;
    let files = NodeFiles::new(&cfg.data_dir);
    if files.exists() {
        let bundle = files.load_bundle()?;
        return Ok(Initialized {
            fingerprint: pki::fingerprint(&bundle[0]),
            created_root: false,
            admin_dir: None,
        });
    }
    let kek_path = cfg.kek_path();
    let (root, sealed, created_root) = match pki_from {
        None => {
            let kek = Kek::create(&kek_path)
                .with_context(|| format!("create the KEK at {}", kek_path.display()))?;
            let root = Root::generate(&td)?;
            let sealed = root.seal(&kek, &td);
            (root, sealed, true)
        }
        Some(dir) => {
            let ca = pki::read_certs(&dir.join("ca.crt"))?;
            let sealed = std::fs::read(dir.join("root.sealed"))
                .with_context(|| format!("read {}", dir.join("root.sealed").display()))?;
            let kek = Kek::load(&kek_path).with_context(|| {
                format!(
                    "this host needs the cluster's KEK file at {} to sign its own certificate (or use `authsec node join`)",
                    kek_path.display()
                )
            })?;
            let root = Root::unseal(&kek, &td, &ca[0], &sealed)?;
            (root, sealed, false)
        }
    };
    pki::write_file(&files.sealed_root(), &sealed, 0o600)?;
    if let Some(dir) = pki_from {
        // The bootstrap admin's certificate travels with the root, so that whichever member
        // bootstraps the cluster records it.
        if let Ok(pem) = std::fs::read(dir.join("bootstrap-admin.crt")) {
            pki::write_file(&files.bootstrap_admin(), &pem, 0o644)?;
        }
    }
    files.write_bundle(std::slice::from_ref(&root.cert_der))?;
    let key = KeyPair::generate()?;
    let cert = root.sign_node(&td, cfg.node_id, &key, &cfg.sans()?, cfg.cert_ttl())?;
    files.write_identity(&[cert], &key)?;
    let admin_dir = match admin_dir {
        Some(d) => Some(d.to_owned()),
        None if created_root => Some(cfg.data_dir.join("admin")),
        None => None,
    };
    if let Some(d) = &admin_dir {
        let admin = AdminFiles { dir: d.clone() };
        if !admin.cert().exists() {
            let (cert, key) = root.issue_admin(&td, BOOTSTRAP_ADMIN)?;
            admin.write(&cert, &key, std::slice::from_ref(&root.cert_der))?;
            // Its certificate only: the bootstrap records it, so the cluster knows every admin
            // certificate it signed (`authsec admin list`, the root retirement's check).
            pki::write_file(
                &files.bootstrap_admin(),
                pki::pem_certs(std::slice::from_ref(&cert)).as_bytes(),
                0o644,
            )?;
        }
    }
    Ok(Initialized {
        fingerprint: pki::fingerprint(&root.cert_der),
        created_root,
        admin_dir,
    })
}

/// Ask a member for a certificate with a join token, pinning the root by fingerprint; writes
/// the node's TLS files. Returns the members the cluster reported.
pub async fn join_pki(
    cfg: &NodeConfig,
    token: &str,
    fingerprint: &str,
    peers: &[String],
) -> anyhow::Result<Vec<v1::Member>> {
    let td = cfg.td()?;
    let files = NodeFiles::new(&cfg.data_dir);
    if files.exists() {
        bail!(
            "{} already holds a node identity; start it with `authsec node run`",
            files.dir.display()
        );
    }
    // Check the token's and the fingerprint's shape here: a typo should not cost a round trip.
    pki::JoinToken::parse(token)?;
    let fp = fingerprint.trim().to_ascii_lowercase();
    let hex = fp.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--ca-fingerprint must be sha256:<64 hex digits>, as `authsec node init` printed it");
    }
    let id = tls::node_spiffe_id(&td, cfg.node_id);
    let (key, csr) = pki::new_key_and_csr(&id)?;
    let config = tls::pinned_client_config(td.clone(), fingerprint)?;
    let sans = cfg.sans()?;
    let mut last = anyhow::anyhow!("no --peer given");
    for peer in peers {
        let ch = authsec_raft::transport::tls_channel(peer.clone(), config.clone())?;
        let mut c = v1::node_service_client::NodeServiceClient::new(ch);
        let mut req = tonic::Request::new(v1::JoinRequest {
            token: token.trim().to_owned(),
            node_id: cfg.node_id,
            csr_der: csr.clone(),
            dns_names: sans.dns_strings(),
            ip_addrs: sans.ip_strings(),
        });
        req.set_timeout(Duration::from_secs(20));
        match c.join(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let chain: Vec<CertificateDer<'static>> = r
                    .cert_chain_der
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
                let bundle: Vec<CertificateDer<'static>> =
                    r.bundle_der.into_iter().map(CertificateDer::from).collect();
                if !bundle
                    .iter()
                    .any(|b| pki::fingerprint(b) == fingerprint.trim().to_ascii_lowercase())
                {
                    bail!("the bundle {peer} sent does not hold the pinned root {fingerprint}");
                }
                let leaf = chain.first().context("the answer holds no certificate")?;
                if tls::svid_id(leaf)? != id {
                    bail!("{peer} issued a certificate that is not for {id}");
                }
                files.write_signed(&chain, &bundle, &key)?;
                crate::secrets::store_local_key(&files.dir, &r.client_secret_key)?;
                return Ok(r.members);
            }
            Err(s) => {
                last = anyhow::anyhow!("{peer}: {:?}: {}", s.code(), s.message());
                // A refused token is final; only an unreachable peer is worth another try.
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                ) {
                    break;
                }
            }
        }
    }
    Err(last.context("join refused"))
}

/// Ask to be admitted (learner, then voter), following the leader's address; bounded.
pub async fn admit(
    transport: &authsec_raft::Transport,
    addr: &str,
    peers: &[String],
    learner_only: bool,
) -> anyhow::Result<v1::MembershipResponse> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut queue: Vec<String> = peers.to_vec();
    let mut i = 0;
    loop {
        let peer = queue[i % queue.len()].clone();
        i += 1;
        let ch = transport.channel(&peer)?;
        let mut c = v1::node_service_client::NodeServiceClient::new(ch);
        let mut req = tonic::Request::new(v1::AdmitRequest {
            addr: addr.to_owned(),
            learner_only,
        });
        req.set_timeout(Duration::from_secs(60));
        let err = match c.admit(req).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => s,
        };
        if let Some(leader) = err
            .metadata()
            .get(LEADER_ADDR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|a| !a.is_empty())
        {
            if !queue.iter().any(|q| q == leader) {
                queue.push(leader.to_owned());
            }
            if let Some(pos) = queue.iter().position(|q| q == leader) {
                i = pos;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "not admitted within 120 s: {:?}: {}",
                err.code(),
                err.message()
            );
        }
        tracing::info!(peer = %peer, code = ?err.code(), reason = err.message(), "admission not done yet; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Offline-root mode, on the operator's offline machine: a new root in `out` (`ca.crt`,
/// `root.key` 0600). Returns its fingerprint.
pub fn ca_init(td: &authsec_domain::TrustDomain, out: &Path) -> anyhow::Result<String> {
    let root = Root::generate(td)?;
    root.write_offline(out)?;
    Ok(pki::fingerprint(&root.cert_der))
}

/// Offline-root mode: an admin credential signed by the offline root.
pub fn ca_issue_admin(ca_dir: &Path, name: &str, out: &Path) -> anyhow::Result<()> {
    let root = Root::load_offline(ca_dir)?;
    let td = root.trust_domain()?;
    let admin = AdminFiles {
        dir: out.to_owned(),
    };
    if admin.key().exists() {
        bail!("{} already holds an admin credential", out.display());
    }
    let (cert, key) = root.issue_admin(&td, name)?;
    admin.write(&cert, &key, std::slice::from_ref(&root.cert_der))?;
    Ok(())
}

/// Offline-root mode, on the node: the key of its intermediate CA (kept in
/// `<data_dir>/tls/node-ca.key`, 0600) and a CSR for the operator. Returns the CSR's path.
pub fn node_csr(cfg: &NodeConfig) -> anyhow::Result<PathBuf> {
    let files = NodeFiles::new(&cfg.data_dir);
    if files.node_ca_key().exists() {
        bail!(
            "{} exists; this node already has an intermediate key",
            files.node_ca_key().display()
        );
    }
    let td = cfg.td()?;
    let id = tls::node_spiffe_id(&td, cfg.node_id);
    let (key, csr) = pki::new_key_and_csr(&id)?;
    pki::write_file(&files.node_ca_key(), key.serialize_pem().as_bytes(), 0o600)?;
    let path = files.dir.join("node-ca.csr");
    pki::write_file(&path, &csr, 0o644)?;
    Ok(path)
}

/// Offline-root mode, on the operator's machine: sign a node's intermediate from its CSR.
pub fn ca_sign_intermediate(
    ca_dir: &Path,
    csr: &Path,
    node_id: u64,
    ttl: Duration,
    out: &Path,
) -> anyhow::Result<()> {
    let root = Root::load_offline(ca_dir)?;
    let td = root.trust_domain()?;
    let der = std::fs::read(csr).with_context(|| format!("read {}", csr.display()))?;
    let pk = pki::csr_public_key(&der)?;
    let cert = root.sign_intermediate(&td, node_id, &pk, ttl)?;
    pki::write_file(out, pki::pem_certs(&[cert]).as_bytes(), 0o644)?;
    Ok(())
}

/// Offline-root mode, on the node: install the signed intermediate and the root, and make
/// the node's first transport certificate with the intermediate.
pub fn init_offline(
    cfg: &NodeConfig,
    intermediate: &Path,
    ca_file: &Path,
) -> anyhow::Result<String> {
    let td = cfg.td()?;
    let files = NodeFiles::new(&cfg.data_dir);
    let inter = pki::read_certs(intermediate)?.remove(0);
    let root = pki::read_certs(ca_file)?.remove(0);
    pki::write_file(
        &files.node_ca_cert(),
        pki::pem_certs(std::slice::from_ref(&inter)).as_bytes(),
        0o644,
    )?;
    let ca = files
        .node_ca()?
        .context("the intermediate was not installed")?;
    // The intermediate must be for this node's key and signed by this root.
    let (_, parsed) = x509_parser::parse_x509_certificate(&inter)
        .map_err(|e| anyhow::anyhow!("intermediate: {e}"))?;
    let (_, parsed_root) =
        x509_parser::parse_x509_certificate(&root).map_err(|e| anyhow::anyhow!("root: {e}"))?;
    parsed
        .verify_signature(Some(parsed_root.public_key()))
        .map_err(|_| {
            anyhow::anyhow!(
                "{} is not signed by the root in {}",
                intermediate.display(),
                ca_file.display()
            )
        })?;
    files.write_bundle(std::slice::from_ref(&root))?;
    let key = KeyPair::generate()?;
    let leaf = ca.sign_node(&td, cfg.node_id, &key, &cfg.sans()?, cfg.cert_ttl())?;
    files.write_identity(&[leaf, inter], &key)?;
    Ok(pki::fingerprint(&root))
}
