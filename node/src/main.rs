//! `authsec`: the node server and the admin CLI in one binary.
#![forbid(unsafe_code)]

mod cli;
mod config;
mod dev;
mod http;
mod planted;
mod server;
mod services;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use authsec_api::v1;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "authsec",
    version,
    about = "Identity authority for machines and AI agents"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "AUTHSEC_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run or prepare a node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// A local three-node cluster on loopback, until Ctrl-C.
    Dev(dev::DevArgs),
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Register and manage OAuth clients.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Read the audit event feed.
    #[command(subcommand)]
    Events(EventsCmd),
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Check a node's config and prepare its data directory.
    Init {
        #[arg(long, env = "AUTHSEC_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: config::Overrides,
    },
    /// Run a node until SIGINT or SIGTERM.
    Run {
        #[arg(long, env = "AUTHSEC_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: config::Overrides,
    },
}

#[derive(Debug, clap::Args)]
struct Target {
    /// Node gRPC address(es), comma separated; default: the CLI config `authsec dev` writes.
    #[arg(long, env = "AUTHSEC_ENDPOINT", global = true)]
    endpoint: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Every member's role, term, indexes, projection digest and archive head.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Add a node: as a learner first, then as a voter.
    AddNode {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        addr: String,
        /// Keep it a learner (an issuer replica that does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the membership.
    RemoveNode {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        node_id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ClientCmd {
    Register {
        #[command(flatten)]
        target: Target,
        /// Client id; generated when omitted.
        #[arg(long)]
        id: Option<String>,
        /// service, ai-agent, ci or device.
        #[arg(long)]
        kind: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "")]
        owner: String,
        /// Allowed scope (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Default scope (repeatable).
        #[arg(long = "default-scope")]
        default_scopes: Vec<String>,
        #[arg(long, default_value = "")]
        audience: String,
    },
    Get {
        #[command(flatten)]
        target: Target,
        id: String,
        #[arg(long)]
        linearizable: bool,
    },
    List {
        #[command(flatten)]
        target: Target,
    },
    Disable {
        #[command(flatten)]
        target: Target,
        id: String,
    },
    Remove {
        #[command(flatten)]
        target: Target,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCmd {
    /// Print archived records as JSON lines.
    Tail {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        follow: bool,
    },
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn kind_to_wire(s: &str) -> anyhow::Result<i32> {
    let k = authsec_domain::ClientKind::parse(s).ok_or_else(|| {
        anyhow::anyhow!("--kind must be service, ai-agent, ci or device, not {s:?}")
    })?;
    Ok(authsec_api::convert::kind_to_wire(k) as i32)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Node(NodeCmd::Init { config, overrides }) => {
            let cfg = config::NodeConfig::load(&config, &overrides)?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("create {}", cfg.data_dir.display()))?;
            let store = authsec_storage::open(&cfg.data_dir)?;
            store.verify_raft_log()?;
            let id_file = cfg.data_dir.join("node_id");
            if !id_file.exists() {
                std::fs::write(&id_file, format!("{}\n", cfg.node_id))?;
            }
            println!(
                "node {} prepared in {}",
                cfg.node_id,
                cfg.data_dir.display()
            );
            match &cfg.bootstrap {
                Some(_) => println!("next: `authsec node run --config {}` starts the cluster", config.display()),
                None => println!(
                    "next: `authsec node run --config {}`, then `authsec cluster add-node --node-id {} --addr {}` against the cluster",
                    config.display(),
                    cfg.node_id,
                    cfg.advertise()
                ),
            }
        }
        Cmd::Node(NodeCmd::Run { config, overrides }) => {
            let mut cfg = config::NodeConfig::load(&config, &overrides)?;
            cfg.planted_bug = planted::PlantedBug::from_env()?;
            let node = server::start(cfg).await?;
            let mut fatal = node.fatal.clone();
            let reason = tokio::select! {
                _ = shutdown_signal() => None,
                r = fatal.wait_for(|x| x.is_some()) => r.ok().and_then(|x| x.clone()),
            };
            node.shutdown().await;
            if let Some(reason) = reason {
                anyhow::bail!("raft stopped on a fatal storage error: {reason}");
            }
        }
        Cmd::Dev(a) => dev::run(a).await?,
        Cmd::Cluster(ClusterCmd::Status { target, json }) => {
            let eps = cli::endpoints(&target.endpoint)?;
            let all = cli::status_all(&eps).await?;
            cli::print_status(&all, json);
        }
        Cmd::Cluster(ClusterCmd::AddNode {
            target,
            node_id,
            addr,
            learner,
        }) => {
            let eps = cli::endpoints(&target.endpoint)?;
            let r = cli::membership(
                &eps,
                Some(v1::AddNodeRequest {
                    node_id,
                    addr,
                    learner_only: learner,
                }),
                None,
            )
            .await?;
            println!(
                "node {node_id} added at log index {}; members:",
                r.log_index
            );
            for m in r.members {
                println!("  {} {} {}", m.node_id, m.addr, m.role);
            }
        }
        Cmd::Cluster(ClusterCmd::RemoveNode { target, node_id }) => {
            let eps = cli::endpoints(&target.endpoint)?;
            let r = cli::membership(&eps, None, Some(v1::RemoveNodeRequest { node_id })).await?;
            println!("node {node_id} removed at log index {}", r.log_index);
        }
        Cmd::Client(c) => client_cmd(c).await?,
        Cmd::Events(EventsCmd::Tail {
            target,
            from,
            follow,
        }) => {
            let eps = cli::endpoints(&target.endpoint)?;
            let mut c = cli::events(&eps).await?;
            let mut s = c
                .feed(v1::FeedRequest {
                    from_sequence: from,
                    follow,
                })
                .await
                .map_err(cli::status_error)?
                .into_inner();
            while let Some(r) = s.message().await.map_err(cli::status_error)? {
                println!(
                    "{}",
                    serde_json::json!({"sequence": r.sequence, "hash": r.hash, "record": serde_json::from_str::<serde_json::Value>(&r.json)?})
                );
            }
        }
    }
    Ok(())
}

async fn client_cmd(c: ClientCmd) -> anyhow::Result<()> {
    let print = |c: &v1::Client| {
        println!(
            "{}",
            serde_json::json!({
                "client_id": c.client_id, "kind": v1::ClientKind::try_from(c.kind).map(|k| k.as_str_name()).unwrap_or("?"),
                "display_name": c.display_name, "owner": c.owner, "description": c.description,
                "allowed_scopes": c.allowed_scopes, "default_scopes": c.default_scopes,
                "default_audience": c.default_audience, "enabled": c.enabled, "revision": c.revision,
            })
        )
    };
    match c {
        ClientCmd::Register {
            target,
            id,
            kind,
            name,
            description,
            owner,
            scopes,
            default_scopes,
            audience,
        } => {
            let mut cl = cli::clients(&cli::endpoints(&target.endpoint)?).await?;
            let r = cl
                .register_client(v1::RegisterClientRequest {
                    client_id: id.unwrap_or_default(),
                    kind: kind_to_wire(&kind)?,
                    display_name: name,
                    description,
                    owner,
                    allowed_scopes: scopes,
                    default_scopes,
                    default_audience: audience,
                })
                .await
                .map_err(cli::status_error)?
                .into_inner();
            if let Some(rc) = r.receipt {
                eprintln!(
                    "committed at log index {} (audit sequence {})",
                    rc.log_index, rc.sequence_first
                );
            }
            if let Some(c) = r.client {
                print(&c);
            }
        }
        ClientCmd::Get {
            target,
            id,
            linearizable,
        } => {
            let mut cl = cli::clients(&cli::endpoints(&target.endpoint)?).await?;
            let consistency = if linearizable {
                v1::Consistency::Linearizable
            } else {
                v1::Consistency::Local
            } as i32;
            let c = cl
                .get_client(v1::GetClientRequest {
                    client_id: id,
                    consistency,
                })
                .await
                .map_err(cli::status_error)?;
            print(&c.into_inner());
        }
        ClientCmd::List { target } => {
            let mut cl = cli::clients(&cli::endpoints(&target.endpoint)?).await?;
            let mut token = String::new();
            loop {
                let r = cl
                    .list_clients(v1::ListClientsRequest {
                        page_size: 500,
                        page_token: token,
                        consistency: 0,
                    })
                    .await
                    .map_err(cli::status_error)?
                    .into_inner();
                r.clients.iter().for_each(print);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
        }
        ClientCmd::Disable { target, id } => {
            let mut cl = cli::clients(&cli::endpoints(&target.endpoint)?).await?;
            let r = cl
                .update_client(v1::UpdateClientRequest {
                    client_id: id.clone(),
                    enabled: Some(false),
                    ..Default::default()
                })
                .await
                .map_err(cli::status_error)?
                .into_inner();
            println!(
                "client {id} disabled at log index {}",
                r.receipt.map_or(0, |r| r.log_index)
            );
        }
        ClientCmd::Remove { target, id } => {
            let mut cl = cli::clients(&cli::endpoints(&target.endpoint)?).await?;
            let r = cl
                .remove_client(v1::RemoveClientRequest {
                    client_id: id.clone(),
                })
                .await
                .map_err(cli::status_error)?
                .into_inner();
            println!(
                "client {id} removed at log index {}",
                r.receipt.map_or(0, |r| r.log_index)
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_server = matches!(cli.cmd, Cmd::Node(NodeCmd::Run { .. }) | Cmd::Dev(_));
    init_tracing(cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_server {
                tracing::error!(error = format!("{e:#}"), "authsec stopped");
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
