//! `authsec`: the node server and the admin CLI in one binary.
#![forbid(unsafe_code)]

/// mimalloc: the issuance paths allocate per request, and glibc malloc cost a sixth of the
/// token endpoint's CPU under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent_api;
mod audit;
mod authz;
mod backup;
mod bundle;
mod cli;
mod cli_audit;
mod cli_identity;
mod cli_oauth;
mod cli_svid;
mod clock;
mod config;
mod console;
mod dev;
mod federation;
#[cfg(test)]
mod fuzz;
mod http;
mod https;
mod identity_api;
mod init;
mod issuer;
mod join;
mod keymgr;
mod maintenance;
mod oauth;
mod outbox;
mod pki;
mod planted;
mod secrets;
mod security;
mod server;
mod services;
mod sink;
mod svid_api;
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
    /// OAuth clients and AI agents: create (onboard), list, get, update, disable, delete,
    /// rotate-secret.
    #[command(subcommand)]
    Client(cli_identity::ClientCmd),
    /// Workload entries: who a workload is and how an agent recognizes it.
    #[command(subcommand)]
    Entry(cli_identity::EntryCmd),
    /// Roles: named sets of permissions (resource:action).
    #[command(subcommand)]
    Role(cli_identity::RoleCmd),
    /// Give a role to a client, entry, SPIFFE ID or person.
    Bind(cli_identity::BindArgs),
    /// Take a role back.
    Unbind(cli_identity::BindArgs),
    /// Delegations: what an AI agent may do on someone's behalf.
    #[command(subcommand)]
    Delegation(cli_identity::DelegationCmd),
    /// Revoke a token, a subject's credentials, a delegation, a client or an agent.
    #[command(subcommand)]
    Revoke(cli_identity::RevokeCmd),
    /// Node agents: join tokens, listing, banning.
    #[command(subcommand)]
    Agent(cli_identity::AgentCmd),
    /// The trust domain's trust bundle.
    #[command(subcommand)]
    Bundle(cli_identity::BundleCmd),
    /// SPIFFE credentials: mint X.509- and JWT-SVIDs from any node; see whether it issues.
    #[command(subcommand)]
    Svid(cli_svid::SvidCmd),
    /// The trust domain's roots and their rotation (prepare, activate, retire).
    #[command(subcommand)]
    Roots(cli_svid::RootsCmd),
    /// Other trust domains this one trusts (SPIFFE federation).
    #[command(subcommand)]
    Federation(cli_svid::FederationCmd),
    /// OAuth 2.0 tools: a load generator for token endpoints.
    #[command(subcommand)]
    Oauth(cli_oauth::OauthCmd),
    /// Read the audit event feed.
    #[command(subcommand)]
    Events(EventsCmd),
    /// The web console (served by every node on its OAuth listener under /ui): sign-in links.
    #[command(subcommand)]
    Console(console::ConsoleCmd),
    /// The audit log: export (JSON lines or CSV, filtered, follow), tail, head, and verify an
    /// export offline against the trust bundle.
    #[command(subcommand)]
    Audit(cli_audit::AuditCmd),
    /// Back up a cluster, or build a new one from a backup.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Admin credentials: another admin, or a new certificate for this one.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Offline-root mode: the root CA stays on an operator's machine, outside the cluster.
    #[command(subcommand)]
    Ca(CaCmd),
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Create a root CA in --out (`ca.crt`, and `root.key` mode 0600: keep it offline).
    Init {
        #[arg(long)]
        trust_domain: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a node's intermediate CA (pathLen 0) from the CSR of `authsec node csr`.
    SignIntermediate {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        node_id: u64,
        /// Lifetime, e.g. 90d.
        #[arg(long, default_value = "365d")]
        ttl: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an admin credential from the offline root.
    IssueAdmin {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCmd {
    /// Create a credential for another admin (`spiffe://<td>/authsec/admin/<name>`); the key
    /// is made here and written with the certificate to --out (0600).
    Issue {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Replace the credential in use with a new key and certificate; the old certificate is
    /// refused from the same commit on. Rewrites the admin directory in place.
    Rotate {
        #[command(flatten)]
        target: Target,
    },
    /// Every live admin certificate the cluster signed (unexpired, not revoked): who holds
    /// one, under which root, until when. Before retiring a root, every admin under it
    /// should have rotated.
    List {
        #[command(flatten)]
        common: cli_identity::Common,
    },
}

// Parsed once per process; boxing the config overrides would only move them.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum SnapshotCmd {
    /// Save a consistent, online backup from one node (no quorum needed).
    Save {
        #[command(flatten)]
        target: Target,
        file: PathBuf,
    },
    /// Make a new cluster's first node from a backup: restores into the (empty) data
    /// directory of `--config`, which must have no [bootstrap]; then `authsec node run` it
    /// and add nodes with join tokens.
    Restore {
        file: PathBuf,
        #[arg(long, env = "AUTHSEC_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: config::Overrides,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Prepare a node: its data directory and its identity. Without --pki-from, create the
    /// trust domain's root CA, the KEK file and the bootstrap admin credential.
    Init {
        #[arg(long, env = "AUTHSEC_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: config::Overrides,
        /// A directory with `ca.crt` and `root.sealed` of an existing trust domain (from the
        /// first node's `<data_dir>/tls`); this host must hold the KEK file too.
        #[arg(long)]
        pki_from: Option<PathBuf>,
        /// Where to write the bootstrap admin credential (default `<data_dir>/admin` when a
        /// new root is created).
        #[arg(long)]
        admin_dir: Option<PathBuf>,
        /// Offline-root mode: this node's intermediate, signed by `authsec ca
        /// sign-intermediate` from the CSR of `authsec node csr` (needs --ca).
        #[arg(long, requires = "ca")]
        intermediate: Option<PathBuf>,
        /// Offline-root mode: the root certificate (`ca.crt` of `authsec ca init`).
        #[arg(long, requires = "intermediate")]
        ca: Option<PathBuf>,
    },
    /// Offline-root mode: make this node's intermediate key and a CSR for the operator.
    Csr {
        #[arg(long, env = "AUTHSEC_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: config::Overrides,
    },
    /// Join an existing cluster with a join token, then run the node until SIGINT or SIGTERM
    /// (later starts use `authsec node run`).
    Join {
        #[arg(long, env = "AUTHSEC_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: config::Overrides,
        /// From `authsec cluster join-token create`.
        #[arg(long, env = "AUTHSEC_JOIN_TOKEN")]
        token: String,
        /// The root CA's `sha256:<hex>` fingerprint, as `authsec node init` printed it.
        #[arg(long)]
        ca_fingerprint: String,
        /// Members to ask (host:port), comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        peer: Vec<String>,
        /// Stay a learner (an issuer replica that does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Print what a stopped node's issuance outbox holds, one JSON object per line:
    /// `{"in_log": bool, "record": {...}}`. Records the log already has stay in the outbox
    /// until their segment is dropped; the node proposes the others when it starts.
    Outbox {
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

use cli::Target;

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
        /// A compromised node: revoke it first, so every node refuses its certificates at
        /// once, and its id can never rejoin.
        #[arg(long)]
        revoke_keys: bool,
    },
    /// Single-use tokens for `authsec node join`.
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
}

#[derive(Debug, Subcommand)]
enum JoinTokenCmd {
    /// Create a token; it is shown once.
    Create {
        #[command(flatten)]
        target: Target,
        /// Lifetime, e.g. 30s, 15m, 2h, 1d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// `30s`, `15m`, `2h`, `1d`, or plain seconds.
fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("--ttl {s:?}: use e.g. 30s, 15m, 2h or 1d"))?;
    n.checked_mul(mul)
        .ok_or_else(|| anyhow::anyhow!("--ttl {s:?} is too long"))
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Node(NodeCmd::Csr { config, overrides }) => {
            let cfg = config::NodeConfig::load(&config, &overrides)?;
            let path = init::node_csr(&cfg)?;
            println!(
                "intermediate key kept in {}; have the operator sign: authsec ca sign-intermediate --ca-dir <dir> --node-id {} --csr {} --out node{}-ca.crt",
                pki::NodeFiles::new(&cfg.data_dir).node_ca_key().display(),
                cfg.node_id,
                path.display(),
                cfg.node_id
            );
        }
        Cmd::Ca(CaCmd::Init { trust_domain, out }) => {
            let td = authsec_domain::TrustDomain::parse(&trust_domain)?;
            let fp = init::ca_init(&td, &out)?;
            println!(
                "offline root CA for {td}: {fp}; ca.crt and root.key (0600) in {}",
                out.display()
            );
        }
        Cmd::Ca(CaCmd::SignIntermediate {
            ca_dir,
            csr,
            node_id,
            ttl,
            out,
        }) => {
            let ttl = std::time::Duration::from_secs(parse_ttl(&ttl)?);
            init::ca_sign_intermediate(&ca_dir, &csr, node_id, ttl, &out)?;
            println!(
                "intermediate for node {node_id} written to {}",
                out.display()
            );
        }
        Cmd::Ca(CaCmd::IssueAdmin { ca_dir, name, out }) => {
            init::ca_issue_admin(&ca_dir, &name, &out)?;
            println!("admin {name} written to {}", out.display());
        }
        Cmd::Node(NodeCmd::Init {
            config,
            overrides,
            pki_from,
            admin_dir,
            intermediate,
            ca,
        }) => {
            let cfg = config::NodeConfig::load(&config, &overrides)?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("create {}", cfg.data_dir.display()))?;
            {
                let store = authsec_storage::open(&cfg.data_dir)?;
                store.verify_raft_log()?;
            }
            let id_file = cfg.data_dir.join("node_id");
            if !id_file.exists() {
                std::fs::write(&id_file, format!("{}\n", cfg.node_id))?;
            }
            println!(
                "node {} prepared in {}",
                cfg.node_id,
                cfg.data_dir.display()
            );
            if cfg.insecure {
                println!("insecure: no certificates (plaintext gRPC, no authentication)");
            } else if let (Some(inter), Some(ca)) = (&intermediate, &ca) {
                let fp = init::init_offline(&cfg, inter, ca)?;
                println!("offline-root mode: root CA {fp}; this node signs its own certificates with its intermediate");
            } else {
                let i = init::init_pki(&cfg, pki_from.as_deref(), admin_dir.as_deref())?;
                if i.created_root {
                    println!(
                        "new trust domain {}: root CA {}",
                        cfg.trust_domain, i.fingerprint
                    );
                    println!(
                        "KEK written to {} (mode 0600): it unseals the root key; back it up offline",
                        cfg.kek_path().display()
                    );
                } else {
                    println!("root CA {}", i.fingerprint);
                }
                if let Some(d) = &i.admin_dir {
                    println!(
                        "admin credential in {} (spiffe://{}/authsec/admin/{}): pass --admin-dir {} to the CLI",
                        d.display(),
                        cfg.trust_domain,
                        init::BOOTSTRAP_ADMIN,
                        d.display()
                    );
                }
            }
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
        Cmd::Node(NodeCmd::Join {
            config,
            overrides,
            token,
            ca_fingerprint,
            peer,
            learner,
        }) => {
            let cfg = config::NodeConfig::load(&config, &overrides)?;
            if cfg.insecure {
                anyhow::bail!("joining needs TLS; an --insecure node is added with `authsec cluster add-node`");
            }
            let members = init::join_pki(&cfg, &token, &ca_fingerprint, &peer).await?;
            println!("node {} has its certificate; starting", cfg.node_id);
            let mut peers = peer.clone();
            peers.extend(members.into_iter().map(|m| m.addr));
            peers.dedup();
            let advertise = cfg.advertise();
            let node = server::start(cfg).await?;
            let transport = node.transport.clone();
            let admitted = tokio::select! {
                r = init::admit(&transport, &advertise, &peers, learner) => Some(r),
                _ = shutdown_signal() => None,
            };
            match admitted {
                Some(Ok(r)) => {
                    tracing::info!(
                        node_id = node.node_id,
                        log_index = r.log_index,
                        "admitted to the cluster"
                    );
                    println!(
                        "node {} admitted at log index {}",
                        node.node_id, r.log_index
                    );
                }
                Some(Err(e)) => {
                    node.shutdown().await;
                    return Err(e);
                }
                None => {
                    node.shutdown().await;
                    return Ok(());
                }
            }
            run_until_stopped(node).await?;
        }
        Cmd::Node(NodeCmd::Outbox { config, overrides }) => {
            let cfg = config::NodeConfig::load(&config, &overrides)?;
            let mark = {
                let store = authsec_storage::open(&cfg.data_dir)
                    .context("open the node's store (is the node stopped?)")?;
                authsec_storage::Reader::new(store).issuance_recorded(cfg.node_id)?
            };
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            for rec in authsec_storage::outbox::pending(&cfg.data_dir)? {
                let line = serde_json::json!({ "in_log": rec.seq <= mark, "record": rec });
                writeln!(out, "{line}")?;
            }
        }
        Cmd::Node(NodeCmd::Run { config, overrides }) => {
            let mut cfg = config::NodeConfig::load(&config, &overrides)?;
            cfg.planted_bug = planted::PlantedBug::from_env()?;
            let node = server::start(cfg).await?;
            run_until_stopped(node).await?;
        }
        Cmd::Dev(a) => dev::run(a).await?,
        Cmd::Cluster(ClusterCmd::Status { target, json }) => {
            let eps = cli::endpoints(&target)?;
            let all = cli::status_all(&eps).await?;
            cli::print_status(&all, json);
        }
        Cmd::Cluster(ClusterCmd::AddNode {
            target,
            node_id,
            addr,
            learner,
        }) => {
            let eps = cli::endpoints(&target)?;
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
        Cmd::Cluster(ClusterCmd::RemoveNode {
            target,
            node_id,
            revoke_keys,
        }) => {
            let eps = cli::endpoints(&target)?;
            let r = cli::membership(
                &eps,
                None,
                Some(v1::RemoveNodeRequest {
                    node_id,
                    revoke_keys,
                }),
            )
            .await?;
            if revoke_keys {
                println!("node {node_id} revoked: every node refuses its certificates");
            }
            println!("node {node_id} removed at log index {}", r.log_index);
        }
        Cmd::Cluster(ClusterCmd::JoinToken(JoinTokenCmd::Create { target, ttl })) => {
            let ttl_seconds = parse_ttl(&ttl)?;
            let eps = cli::endpoints(&target)?;
            let mut c = cli::cluster(&eps).await?;
            let r = c
                .create_join_token(v1::CreateJoinTokenRequest { ttl_seconds })
                .await
                .map_err(cli::status_error)?
                .into_inner();
            eprintln!(
                "single-use join token, valid for {ttl_seconds} s (until {} ms since the epoch); shown once:",
                r.expires_at_ms
            );
            println!("{}", r.token);
            eprintln!(
                "join with: authsec node join --config <file> --token <token> --ca-fingerprint {} --peer {}",
                r.ca_fingerprint,
                eps.join(",")
            );
        }
        Cmd::Client(c) => cli_identity::client(c).await?,
        Cmd::Entry(c) => cli_identity::entry(c).await?,
        Cmd::Role(c) => cli_identity::role(c).await?,
        Cmd::Bind(a) => cli_identity::bind(a, true).await?,
        Cmd::Unbind(a) => cli_identity::bind(a, false).await?,
        Cmd::Delegation(c) => cli_identity::delegation(c).await?,
        Cmd::Revoke(c) => cli_identity::revoke(c).await?,
        Cmd::Agent(c) => cli_identity::agent(c).await?,
        Cmd::Bundle(c) => cli_identity::bundle(c).await?,
        Cmd::Svid(c) => cli_svid::svid(c).await?,
        Cmd::Audit(c) => cli_audit::run(c).await?,
        Cmd::Console(c) => console::run(c).await?,
        Cmd::Federation(c) => cli_svid::federation(c).await?,
        Cmd::Oauth(c) => cli_oauth::run(c).await?,
        Cmd::Roots(c) => cli_svid::roots(c).await?,
        Cmd::Admin(AdminCmd::Issue { target, name, out }) => {
            let eps = cli::endpoints(&target)?;
            if out.join("admin.key").exists() {
                anyhow::bail!("{} already holds an admin credential", out.display());
            }
            let cert = cli::issue_admin(&eps, &target, Some(&name), &out).await?;
            println!("admin {name} ({cert}) written to {}", out.display());
        }
        Cmd::Admin(AdminCmd::Rotate { target }) => {
            let eps = cli::endpoints(&target)?;
            let dir = cli::admin_dir(&target)?
                .ok_or_else(|| anyhow::anyhow!("no admin credential in use to rotate"))?;
            let cert = cli::issue_admin(&eps, &target, None, &dir).await?;
            println!(
                "rotated: {} now holds {cert}; the previous certificate is refused",
                dir.display()
            );
        }
        Cmd::Admin(AdminCmd::List { common }) => cli::list_admins(&common).await?,
        Cmd::Snapshot(SnapshotCmd::Save { target, file }) => {
            let eps = cli::endpoints(&target)?;
            backup::save(&eps, &file).await?;
        }
        Cmd::Snapshot(SnapshotCmd::Restore {
            file,
            config,
            overrides,
        }) => {
            let cfg = config::NodeConfig::load(&config, &overrides)?;
            backup::restore(&cfg, &file)?;
            println!(
                "next: `authsec node run --config {}`, then add nodes with `authsec cluster join-token create` and `authsec node join`",
                config.display()
            );
        }
        Cmd::Events(EventsCmd::Tail {
            target,
            from,
            follow,
        }) => {
            let eps = cli::endpoints(&target)?;
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

/// Serve until SIGINT/SIGTERM, or fail when Raft stops on a fatal storage error.
async fn run_until_stopped(node: server::RunningNode) -> anyhow::Result<()> {
    let mut fatal = node.fatal.clone();
    let reason = tokio::select! {
        _ = shutdown_signal() => None,
        r = fatal.wait_for(|x| x.is_some()) => r.ok().and_then(|x| x.clone()),
    };
    node.shutdown().await;
    if let Some(reason) = reason {
        anyhow::bail!("raft stopped on a fatal storage error: {reason}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_server = matches!(
        cli.cmd,
        Cmd::Node(NodeCmd::Run { .. } | NodeCmd::Join { .. }) | Cmd::Dev(_)
    );
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
            cli_identity::exit_code(&e)
        }
    }
}
