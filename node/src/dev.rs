//! `authsec dev`: a local three-node cluster on loopback under one data directory, in one
//! process, until Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Bootstrap, Member, NodeConfig, RaftSection};
use crate::server;

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the nodes keep their data (kept across runs unless --fresh).
    #[arg(long, env = "AUTHSEC_DEV_DIR")]
    pub dir: Option<PathBuf>,
    /// First port: node N listens for gRPC on base+N, HTTP on base+100+N and serves its
    /// federation bundle endpoint on base+200+N and OAuth 2.0 on base+300+N.
    #[arg(long, default_value_t = 7100, env = "AUTHSEC_DEV_BASE_PORT")]
    pub base_port: u16,
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    #[arg(long, default_value = "authsec.local")]
    pub trust_domain: String,
    /// Delete the data directory first.
    #[arg(long)]
    pub fresh: bool,
    /// Plaintext and unauthenticated, for experiments only.
    #[arg(long)]
    pub insecure: bool,
    /// Access-token signature algorithm (`[oauth] alg`): ES256 or EdDSA.
    #[arg(long, default_value = "ES256", value_parser = parse_token_alg, env = "AUTHSEC_DEV_TOKEN_ALG")]
    pub token_alg: crate::issuer::TokenAlg,
}

fn parse_token_alg(s: &str) -> Result<crate::issuer::TokenAlg, String> {
    match s {
        "ES256" => Ok(crate::issuer::TokenAlg::Es256),
        "EdDSA" => Ok(crate::issuer::TokenAlg::EdDsa),
        _ => Err(format!("{s:?} is not ES256 or EdDSA")),
    }
}

fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("authsec").join("dev")
}

pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    let dir = a.dir.clone().unwrap_or_else(default_dir);
    if a.fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let members: Vec<Member> = (1..=a.nodes)
        .map(|id| Member {
            id,
            addr: format!("127.0.0.1:{}", a.base_port as u64 + id),
        })
        .collect();
    let configs: Vec<NodeConfig> = members
        .iter()
        .map(|m| -> anyhow::Result<NodeConfig> {
            Ok(NodeConfig {
                node_id: m.id,
                data_dir: dir.join(format!("node{}", m.id)),
                grpc_addr: m.addr.parse()?,
                advertise_addr: None,
                http_addr: format!("127.0.0.1:{}", a.base_port as u64 + 100 + m.id).parse()?,
                federation: crate::config::FederationSection {
                    addr: Some(format!("127.0.0.1:{}", a.base_port as u64 + 200 + m.id).parse()?),
                    ..Default::default()
                },
                trust_domain: a.trust_domain.clone(),
                bootstrap: Some(Bootstrap {
                    members: members.clone(),
                }),
                raft: RaftSection::default(),
                peer_routes: Default::default(),
                insecure: a.insecure,
                kek_file: Some(dir.join("kek")),
                // Loopback names, so curl and OAuth clients check the host of an HTTPS URL.
                tls: crate::config::TlsSection {
                    dns_names: vec!["localhost".into()],
                    ip_addrs: vec!["127.0.0.1".into()],
                    ..Default::default()
                },
                agent_spiffe_template: None,
                issuer: Default::default(),
                agents: Default::default(),
                audit: Default::default(),
                // Each node is its own issuer (no load balancer in front of a dev cluster);
                // each accepts the others' tokens at introspection and revocation.
                oauth: crate::config::OauthSection {
                    addr: Some(format!("127.0.0.1:{}", a.base_port as u64 + 300 + m.id).parse()?),
                    accepted_issuers: members
                        .iter()
                        .filter(|o| o.id != m.id)
                        .map(|o| format!("https://127.0.0.1:{}", a.base_port as u64 + 300 + o.id))
                        .collect(),
                    alg: a.token_alg,
                    ..Default::default()
                },
                planted_bug: Default::default(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    // One trust domain: node 1 creates the root, the others sign their certificates from it
    // (one host, one KEK).
    let admin_dir = dir.join("admin");
    if !a.insecure {
        for cfg in &configs {
            let from = (cfg.node_id != 1).then(|| dir.join("node1").join("tls"));
            crate::init::init_pki(cfg, from.as_deref(), Some(&admin_dir))
                .with_context(|| format!("certificates for node {}", cfg.node_id))?;
        }
    }
    let mut nodes = Vec::new();
    // The first member initializes the cluster: start it last, once its peers listen.
    for cfg in configs.into_iter().rev() {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        // Leave each node's config beside its data, ready for `authsec node run --config`.
        std::fs::write(
            dir.join(format!("node{}.toml", cfg.node_id)),
            toml::to_string(&cfg)?,
        )?;
        let id = cfg.node_id;
        nodes.push(
            server::start(cfg)
                .await
                .with_context(|| format!("start node {id}"))?,
        );
    }
    nodes.reverse();
    let raft = nodes[0].raft.clone();
    raft.wait(Some(std::time::Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "leader elected")
        .await
        .context("no leader was elected within 30 s")?;
    let leader = raft.metrics().borrow().current_leader.unwrap_or(0);
    let endpoints: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
    let cli = crate::cli::write_cli_config(
        &endpoints,
        (!a.insecure).then(|| admin_dir.clone()),
        a.insecure,
    )?;
    println!(
        "authsec dev cluster: {} nodes, trust domain {}, data in {}",
        a.nodes,
        a.trust_domain,
        dir.display()
    );
    for n in &nodes {
        println!(
            "  node {}: gRPC {}  HTTP http://{}/metrics  bundle endpoint {}  OAuth {}",
            n.node_id,
            n.grpc_addr,
            n.http_addr,
            n.federation_addr
                .map_or("-".to_owned(), |a| format!("https://{a}/")),
            n.oauth_addr
                .map_or("-".to_owned(), |a| format!("https://{a}/oauth2/token")),
        );
    }
    if !a.insecure {
        println!(
            "  HTTPS endpoints present node certificates of the cluster's root: curl --cacert {}",
            crate::pki::AdminFiles {
                dir: admin_dir.clone()
            }
            .bundle()
            .display()
        );
    }
    println!("leader: node {leader}");
    println!(
        "CLI config written to {} : try `authsec cluster status`",
        cli.display()
    );
    println!("Ctrl-C stops the cluster.");

    let mut fatal: Vec<_> = nodes.iter().map(|n| n.fatal.clone()).collect();
    let any_fatal = async move {
        let waits = fatal
            .iter_mut()
            .map(|f| Box::pin(async move { f.wait_for(|x| x.is_some()).await.map(|x| x.clone()) }));
        futures::future::select_all(waits).await.0
    };
    tokio::select! {
        _ = crate::shutdown_signal() => println!("stopping the dev cluster"),
        r = any_fatal => if let Ok(Some(reason)) = r { eprintln!("a node stopped on a fatal error: {reason}") },
    }
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}
