//! The admin CLI: talks to any node over gRPC, follows the leader's address when a node names
//! one, and prints tables (or JSON with `--json`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use authsec_api::error::LEADER_ADDR_HEADER;
use authsec_api::v1::event_service_client::EventServiceClient;
use authsec_api::v1::{self, cluster_service_client::ClusterServiceClient};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

/// Where `authsec dev` leaves the endpoints and admin credential for the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CliConfig {
    pub endpoints: Vec<String>,
    /// Holds `admin.crt`, `admin.key` and `ca.crt`.
    #[serde(default)]
    pub admin_dir: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
}

// Which cluster the CLI talks to, and as whom. (A plain comment: clap would show a doc
// comment as the about text of every subcommand that flattens this.)
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Node gRPC address(es), comma separated; default: the CLI config `authsec dev` writes.
    #[arg(long, env = "AUTHSEC_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Directory with the admin credential (`admin.crt`, `admin.key`, `ca.crt`) that
    /// `authsec node init` wrote; default: the CLI config's.
    #[arg(long, env = "AUTHSEC_ADMIN_DIR", global = true)]
    pub admin_dir: Option<PathBuf>,
    /// Plaintext, for a cluster started with --insecure.
    #[arg(long, env = "AUTHSEC_INSECURE", global = true)]
    pub insecure: bool,
}

/// The CLI's transport, set once per run by [`endpoints`].
static TRANSPORT: std::sync::OnceLock<authsec_raft::Transport> = std::sync::OnceLock::new();

fn load_cli_config() -> anyhow::Result<Option<(PathBuf, CliConfig)>> {
    let Some(path) = cli_config_path() else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let c: CliConfig =
                toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
            Ok(Some((path, c)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// The transport for an admin: mutual TLS with the admin credential, or plaintext when asked.
pub fn admin_transport(dir: &std::path::Path) -> anyhow::Result<authsec_raft::Transport> {
    let files = crate::pki::AdminFiles {
        dir: dir.to_owned(),
    };
    let (roots, chain, key) = files
        .load()
        .with_context(|| format!("load the admin credential from {}", dir.display()))?;
    let id = authsec_raft::tls::svid_id(&chain[0]).context("the admin certificate")?;
    let state = authsec_raft::tls::TlsState::new(id.trust_domain(), roots, chain, key)?;
    Ok(authsec_raft::Transport::mutual_tls(state))
}

pub fn cli_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("authsec").join("cli.toml"))
}

pub fn write_cli_config(
    endpoints: &[String],
    admin_dir: Option<PathBuf>,
    insecure: bool,
) -> anyhow::Result<PathBuf> {
    let path =
        cli_config_path().ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = toml::to_string(&CliConfig {
        endpoints: endpoints.to_vec(),
        admin_dir,
        insecure,
    })?;
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The endpoints to try (`--endpoint`/`AUTHSEC_ENDPOINT`, else the CLI config file), and
/// the transport: the admin credential of `--admin-dir` or the CLI config, or plaintext with
/// `--insecure`.
pub fn endpoints(t: &Target) -> anyhow::Result<Vec<String>> {
    let file = load_cli_config()?;
    let eps: Vec<String> = match &t.endpoint {
        Some(e) => e
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        None => {
            let Some((path, c)) = &file else {
                bail!(
                    "no --endpoint given and no CLI config at {} (start `authsec dev`, or pass --endpoint)",
                    cli_config_path().map(|p| p.display().to_string()).unwrap_or_else(|| "$HOME/.config/authsec/cli.toml".into())
                );
            };
            if c.endpoints.is_empty() {
                bail!("{} lists no endpoints", path.display());
            }
            c.endpoints.clone()
        }
    };
    let insecure =
        t.insecure || (t.admin_dir.is_none() && file.as_ref().is_some_and(|(_, c)| c.insecure));
    let transport = if insecure {
        authsec_raft::Transport::plaintext()
    } else {
        let dir = t
            .admin_dir
            .clone()
            .or_else(|| file.as_ref().and_then(|(_, c)| c.admin_dir.clone()))
            .ok_or_else(|| {
                anyhow!("no admin credential: pass --admin-dir (the directory `authsec node init` wrote), or --insecure for a plaintext cluster")
            })?;
        admin_transport(&dir)?
    };
    let _ = TRANSPORT.set(transport);
    Ok(eps)
}

/// The admin directory in use: `--admin-dir`, else the CLI config's.
pub fn admin_dir(t: &Target) -> anyhow::Result<Option<PathBuf>> {
    if t.admin_dir.is_some() {
        return Ok(t.admin_dir.clone());
    }
    Ok(load_cli_config()?.and_then(|(_, c)| c.admin_dir))
}

/// Get an admin certificate for a key made here, and write the credential to `out`
/// (replacing it whole). `name: None` rotates the credential in use (its own name). Returns
/// the new certificate's fingerprint.
pub async fn issue_admin(
    eps: &[String],
    t: &Target,
    name: Option<&str>,
    out: &std::path::Path,
) -> anyhow::Result<String> {
    let current = admin_dir(t)?.ok_or_else(|| anyhow!("no admin credential in use"))?;
    let files = crate::pki::AdminFiles { dir: current };
    let (_, chain, _) = files.load()?;
    let me = authsec_raft::tls::svid_id(&chain[0])?;
    let td = me.trust_domain();
    let (name, rotate) = match name {
        Some(n) => (n.to_owned(), false),
        None => (
            crate::pki::admin_name_of(&td, &me)
                .ok_or_else(|| anyhow!("{me} is not an admin identity"))?
                .to_owned(),
            true,
        ),
    };
    let id = crate::pki::admin_spiffe_id(&td, &name)?;
    let (key, csr) = crate::pki::new_key_and_csr(&id)?;
    let mut client = cluster(eps).await?;
    let r = if rotate {
        // Any admin may rotate its own credential, whatever its roles.
        client
            .rotate_admin(v1::RotateAdminRequest { csr_der: csr })
            .await
    } else {
        client
            .issue_admin(v1::IssueAdminRequest {
                name: name.clone(),
                csr_der: csr,
                rotate: false,
            })
            .await
    }
    .map_err(status_err)?
    .into_inner();
    let cert = rustls::pki_types::CertificateDer::from(
        r.cert_chain_der
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the node sent no certificate"))?,
    );
    let roots: Vec<rustls::pki_types::CertificateDer<'static>> = r
        .bundle_der
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    if roots.is_empty() {
        bail!("the node sent no bundle");
    }
    if authsec_raft::tls::svid_id(&cert)? != id {
        bail!("the node issued a certificate that is not for {id}");
    }
    // Write beside, then swap: a crash never leaves a key with another key's certificate.
    let staging = out.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    crate::pki::AdminFiles {
        dir: staging.clone(),
    }
    .write(&cert, &key, &roots)?;
    let old = out.with_extension("old");
    if out.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old)?;
    }
    std::fs::rename(&staging, out)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(crate::pki::fingerprint(&cert))
}

pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    let addr = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let transport = TRANSPORT
        .get()
        .ok_or_else(|| anyhow!("the CLI transport is not set up"))?;
    // Connect now (TCP and TLS), so an unreachable node is skipped for the next endpoint.
    tokio::time::timeout(Duration::from_secs(3), transport.connect(addr))
        .await
        .map_err(|_| anyhow!("{addr}: no answer within 3 s"))?
        .map_err(|e| anyhow!("{addr}: {e}"))
}

/// Connect to the first endpoint that answers.
pub async fn connect(eps: &[String]) -> anyhow::Result<(String, Channel)> {
    let mut last = None;
    for ep in eps {
        match channel(ep).await {
            Ok(ch) => return Ok((ep.clone(), ch)),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no endpoints"))
        .context(format!("no node answered at {}", eps.join(", "))))
}

fn leader_addr(s: &tonic::Status) -> Option<String> {
    s.metadata()
        .get(LEADER_ADDR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", s.code(), s.message())
}

pub async fn status_all(eps: &[String]) -> anyhow::Result<Vec<Result<v1::StatusResponse, String>>> {
    let (_, ch) = connect(eps).await?;
    let first = ClusterServiceClient::new(ch)
        .status(v1::StatusRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    let mut out = Vec::new();
    for m in &first.members {
        if m.node_id == first.node_id {
            out.push(Ok(first.clone()));
            continue;
        }
        let r = async {
            let ch = channel(&m.addr).await.map_err(|e| e.to_string())?;
            let mut c = ClusterServiceClient::new(ch);
            let mut req = tonic::Request::new(v1::StatusRequest {});
            req.set_timeout(Duration::from_secs(3));
            c.status(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_owned())
        }
        .await;
        out.push(r.map_err(|e| format!("node {} at {}: {e}", m.node_id, m.addr)));
    }
    if first.members.is_empty() {
        out.push(Ok(first));
    }
    Ok(out)
}

pub fn print_status(all: &[Result<v1::StatusResponse, String>], json: bool) {
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|r| match r {
                Ok(s) => serde_json::json!({
                    "node_id": s.node_id, "addr": s.addr, "state": s.state, "leader_id": s.leader_id,
                    "term": s.term, "last_log_index": s.last_log_index, "applied_index": s.applied_index,
                    "projection_digest": s.projection_digest,
                    "archive_head": s.archive_head.as_ref().map(|h| serde_json::json!({"sequence": h.sequence, "hash": h.hash})),
                    "trust_domain": s.trust_domain, "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                    "freshness_ms": s.freshness_ms, "max_staleness_ms": s.max_staleness_ms,
                    "issuing": s.issuing, "issuing_reason": s.issuing_reason,
                    "members": s.members.iter().map(|m| serde_json::json!({"node_id": m.node_id, "addr": m.addr, "role": m.role})).collect::<Vec<_>>(),
                }),
                Err(e) => serde_json::json!({ "error": e }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    if let Some(Ok(s)) = all.iter().find(|r| r.is_ok()) {
        let leader = if s.leader_id == 0 {
            "none".to_string()
        } else {
            format!("{} ({})", s.leader_id, s.leader_addr)
        };
        println!(
            "trust domain: {}   leader: {}   term: {}",
            if s.trust_domain.is_empty() {
                "-"
            } else {
                &s.trust_domain
            },
            leader,
            s.term
        );
    }
    println!(
        "{:<5} {:<22} {:<8} {:<10} {:>5} {:>9} {:>9} {:>9} {:<7}  {:<16} ARCHIVE HEAD",
        "NODE", "ADDR", "ROLE", "STATE", "TERM", "LOG", "APPLIED", "FRESH", "ISSUING", "DIGEST"
    );
    for r in all {
        match r {
            Ok(s) => {
                let role = s
                    .members
                    .iter()
                    .find(|m| m.node_id == s.node_id)
                    .map_or("-", |m| m.role.as_str());
                let head = s.archive_head.clone().unwrap_or_default();
                let fresh = s
                    .freshness_ms
                    .map_or("-".to_owned(), |ms| format!("{ms}ms"));
                println!(
                    "{:<5} {:<22} {:<8} {:<10} {:>5} {:>9} {:>9} {:>9} {:<7}  {:<16} #{} {}",
                    s.node_id,
                    s.addr,
                    role,
                    s.state,
                    s.term,
                    s.last_log_index,
                    s.applied_index,
                    fresh,
                    if s.issuing { "yes" } else { "no" },
                    &s.projection_digest[..16.min(s.projection_digest.len())],
                    head.sequence,
                    &head.hash[..16.min(head.hash.len())]
                );
            }
            Err(e) => println!("unreachable: {e}"),
        }
    }
    for s in all.iter().flatten().filter(|s| !s.issuing) {
        println!("node {} does not issue: {}", s.node_id, s.issuing_reason);
    }
}

/// Run a membership call, following the leader's address once if the node names it.
pub async fn membership(
    eps: &[String],
    add: Option<v1::AddNodeRequest>,
    remove: Option<v1::RemoveNodeRequest>,
) -> anyhow::Result<v1::MembershipResponse> {
    let (_, ch) = connect(eps).await?;
    let call = |ch: Channel| {
        let (add, remove) = (add.clone(), remove);
        async move {
            let mut c = ClusterServiceClient::new(ch);
            match (add, remove) {
                (Some(a), _) => c.add_node(a).await.map(|r| r.into_inner()),
                (_, Some(r)) => c.remove_node(r).await.map(|r| r.into_inner()),
                _ => Err(tonic::Status::invalid_argument("nothing to do")),
            }
        }
    };
    match call(ch).await {
        Ok(r) => Ok(r),
        Err(s) if s.code() == tonic::Code::Unavailable => {
            let Some(addr) = leader_addr(&s) else {
                return Err(status_err(s));
            };
            eprintln!("following the leader at {addr}");
            call(channel(&addr).await?).await.map_err(status_err)
        }
        Err(s) => Err(status_err(s)),
    }
}

pub async fn cluster(eps: &[String]) -> anyhow::Result<ClusterServiceClient<Channel>> {
    Ok(ClusterServiceClient::new(connect(eps).await?.1))
}

pub async fn events(eps: &[String]) -> anyhow::Result<EventServiceClient<Channel>> {
    Ok(EventServiceClient::new(connect(eps).await?.1))
}

pub fn status_error(s: tonic::Status) -> anyhow::Error {
    status_err(s)
}

/// `authsec admin list`: every live admin certificate, the caller's own marked.
pub async fn list_admins(common: &crate::cli_identity::Common) -> anyhow::Result<()> {
    let eps = endpoints(&common.target)?;
    let mine = match admin_dir(&common.target)? {
        Some(dir) => crate::pki::AdminFiles { dir }
            .load()
            .ok()
            .map(|(_, chain, _)| crate::pki::fingerprint(&chain[0])),
        None => None,
    };
    let r = cluster(&eps)
        .await?
        .list_admins(v1::ListAdminsRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    let mut p = crate::cli_identity::Printer::new(
        common.output,
        &["NAME", "CERTIFICATE", "ROOT", "NOT AFTER", "ISSUED"],
    );
    for c in r.certificates {
        let you = mine.as_deref() == Some(c.fingerprint.as_str());
        p.add(
            serde_json::json!({
                "name": c.name, "fingerprint": c.fingerprint, "root": c.root,
                "under_signing_root": c.under_signing_root, "not_after_ms": c.not_after_ms,
                "issued_at_ms": c.issued_at_ms, "yours": you,
            }),
            vec![
                format!("{}{}", c.name, if you { " (you)" } else { "" }),
                c.fingerprint,
                format!(
                    "{}{}",
                    c.root,
                    if c.under_signing_root {
                        ""
                    } else {
                        " (not signing)"
                    }
                ),
                crate::cli_identity::ms(c.not_after_ms),
                crate::cli_identity::ms(c.issued_at_ms),
            ],
        );
    }
    p.finish();
    Ok(())
}
