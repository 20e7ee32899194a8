//! The admin CLI: talks to any node over gRPC, follows the leader's address when a node names
//! one, and prints tables (or JSON with `--json`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use authsec_api::error::LEADER_ADDR_HEADER;
use authsec_api::v1::event_service_client::EventServiceClient;
use authsec_api::v1::{
    self, client_service_client::ClientServiceClient, cluster_service_client::ClusterServiceClient,
};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

/// Where `authsec dev` leaves the endpoints for the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CliConfig {
    pub endpoints: Vec<String>,
}

pub fn cli_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("authsec").join("cli.toml"))
}

pub fn write_cli_config(endpoints: &[String]) -> anyhow::Result<PathBuf> {
    let path =
        cli_config_path().ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = toml::to_string(&CliConfig {
        endpoints: endpoints.to_vec(),
    })?;
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The endpoints to try: `--endpoint`/`AUTHSEC_ENDPOINT`, else the CLI config file.
pub fn endpoints(flag: &Option<String>) -> anyhow::Result<Vec<String>> {
    if let Some(e) = flag {
        return Ok(e
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect());
    }
    let path = cli_config_path()
        .ok_or_else(|| anyhow!("no --endpoint given and no HOME for the CLI config"))?;
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no --endpoint given and no CLI config at {} (start `authsec dev`, or pass --endpoint)",
            path.display()
        )
    })?;
    let c: CliConfig =
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    if c.endpoints.is_empty() {
        bail!("{} lists no endpoints", path.display());
    }
    Ok(c.endpoints)
}

pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Channel::from_shared(uri)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(60))
        .connect()
        .await?)
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
        "{:<5} {:<22} {:<8} {:<10} {:>5} {:>9} {:>9}  {:<16} ARCHIVE HEAD",
        "NODE", "ADDR", "ROLE", "STATE", "TERM", "LOG", "APPLIED", "DIGEST"
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
                println!(
                    "{:<5} {:<22} {:<8} {:<10} {:>5} {:>9} {:>9}  {:<16} #{} {}",
                    s.node_id,
                    s.addr,
                    role,
                    s.state,
                    s.term,
                    s.last_log_index,
                    s.applied_index,
                    &s.projection_digest[..16.min(s.projection_digest.len())],
                    head.sequence,
                    &head.hash[..16.min(head.hash.len())]
                );
            }
            Err(e) => println!("unreachable: {e}"),
        }
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

pub async fn clients(eps: &[String]) -> anyhow::Result<ClientServiceClient<Channel>> {
    Ok(ClientServiceClient::new(connect(eps).await?.1))
}

pub async fn events(eps: &[String]) -> anyhow::Result<EventServiceClient<Channel>> {
    Ok(EventServiceClient::new(connect(eps).await?.1))
}

pub fn status_error(s: tonic::Status) -> anyhow::Error {
    status_err(s)
}
