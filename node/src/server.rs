//! Starting and stopping one node: storage checks, Raft, the gRPC and HTTP listeners, and
//! cluster bootstrap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use authsec_api::v1::agent_service_server::AgentServiceServer;
use authsec_api::v1::bundle_service_server::BundleServiceServer;
use authsec_api::v1::client_service_server::ClientServiceServer;
use authsec_api::v1::cluster_service_server::ClusterServiceServer;
use authsec_api::v1::delegation_service_server::DelegationServiceServer;
use authsec_api::v1::entry_service_server::EntryServiceServer;
use authsec_api::v1::event_service_server::EventServiceServer;
use authsec_api::v1::federation_service_server::FederationServiceServer;
use authsec_api::v1::node_service_server::NodeServiceServer;
use authsec_api::v1::revocation_service_server::RevocationServiceServer;
use authsec_api::v1::role_service_server::RoleServiceServer;
use authsec_api::v1::svid_service_server::SvidServiceServer;
use authsec_domain::command::Command;
use authsec_domain::{Actor, ArchiveHead, Principal, Rejection, TrustDomain};
use authsec_raft::tls::ClientAuth;
use authsec_raft::{raft_config, PeerNetwork, PeerServer, Raft};
use authsec_storage::{LogStore, Reader, StateMachine};
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::authz::AuthzLayer;
use crate::config::NodeConfig;
use crate::http::{self, HttpState};
use crate::identity_api::{Agents, Delegations, Entries, Revocations, Roles};
use crate::join::Nodes;
use crate::pki::NodeFiles;
use crate::security::{self, Security};
use crate::services::{Clients, Cluster, Ctx, Events};
use crate::writer::{Proposer, WriteMetrics, Writer};

/// Largest admin API request.
const API_MESSAGE_BYTES_MAX: usize = 1 << 20;
/// The connections the gRPC listener holds: 4,096 at once (peers, agents, admins, handshakes
/// in progress; more wait in the listen backlog), of which at most 256 without a client
/// certificate, each closed 5 minutes after its handshake. The OAuth listener has its own.
const GRPC_LIMITS: authsec_raft::tls::Limits = authsec_raft::tls::Limits {
    connections: 4096,
    anonymous: 256,
    anonymous_lifetime: Duration::from_secs(300),
};

/// tonic refuses a message over the size bound with OUT_OF_RANGE before any handler runs; for
/// a request that is the caller's bad input, so answer INVALID_ARGUMENT and say what to fix.
fn oversized_is_invalid_argument(
    resp: ::http::Response<tonic::body::Body>,
) -> ::http::Response<tonic::body::Body> {
    match resp.extensions().get::<tonic::Status>() {
        Some(s)
            if s.code() == tonic::Code::OutOfRange && s.message().starts_with("Error, decoded message length too large") =>
        {
            tonic::Status::invalid_argument(format!(
                "invalid request: the message is too large ({}); every field has a smaller limit of its own",
                s.message().trim_start_matches("Error, decoded message length too large: ")
            ))
            .into_http()
        }
        _ => resp,
    }
}

/// A started node.
pub struct RunningNode {
    pub node_id: u64,
    pub raft: Raft,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The federation bundle endpoint, if configured.
    pub federation_addr: Option<SocketAddr>,
    /// The OAuth 2.0 endpoint, if configured.
    pub oauth_addr: Option<SocketAddr>,
    /// How this node dials peers (mutual TLS with its own certificate, or plaintext).
    pub transport: authsec_raft::Transport,
    /// Becomes `Some(reason)` if Raft stops on a fatal (storage) error.
    pub fatal: watch::Receiver<Option<String>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    recorder: crate::outbox::Recorder,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("node_id", &self.node_id)
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

/// The data directory remembers which node it belongs to, so two nodes never share one.
fn check_identity(cfg: &NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("create {}", cfg.data_dir.display()))?;
    let path = cfg.data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let stored: u64 = s
                .trim()
                .parse()
                .with_context(|| format!("{} is damaged", path.display()))?;
            if stored != cfg.node_id {
                bail!(
                    "{} belongs to node {stored}, but this is node {}",
                    cfg.data_dir.display(),
                    cfg.node_id
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{}\n", cfg.node_id))
                .with_context(|| format!("write {}", path.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    Ok(())
}

pub async fn start(cfg: NodeConfig) -> anyhow::Result<RunningNode> {
    check_identity(&cfg)?;
    let node_id = cfg.node_id;
    let sec = Security::load(&cfg)?;
    let store = authsec_storage::open(&cfg.data_dir).context("open storage")?;
    let entries = store.verify_raft_log().context("check the raft log")?;
    let (head_tx, head_rx) = watch::channel(ArchiveHead::default());
    #[allow(unused_mut)]
    let mut sm = StateMachine::open(store.clone(), head_tx).context("check the state machine")?;
    #[cfg(debug_assertions)]
    match cfg.planted_bug {
        crate::planted::PlantedBug::DropRecord(seq) => sm.plant_drop_record(seq),
        crate::planted::PlantedBug::SkipRevocations => sm.plant_skip_revocations(),
        _ => {}
    }
    tracing::info!(
        node_id,
        log_entries = entries,
        archive_head = sm.head().sequence,
        "storage checked"
    );
    let security_rx = sm.watch_security();
    let view = sm.view();
    let log = LogStore::new(store.clone());
    let transport = sec.transport().with_routes(cfg.peer_routes.clone());
    let freshness = Arc::new(authsec_raft::Freshness::default());
    let raft = Raft::new(
        node_id,
        raft_config(&cfg.tuning())?,
        PeerNetwork {
            node_id,
            transport: transport.clone(),
            freshness: freshness.clone(),
        },
        log,
        sm,
    )
    .await
    .context("start raft")?;

    let writes = Arc::new(WriteMetrics::default());
    let proposer = Proposer::start(raft.clone(), writes.clone(), cfg.planted_bug);
    let writer = Writer::new(node_id, raft.clone(), proposer, transport, writes.clone());
    let mut issuer =
        crate::issuer::SvidIssuer::new(node_id, &cfg.data_dir, freshness.clone(), &cfg.issuer);
    issuer.token_alg = cfg.oauth.alg;
    let issuer = Arc::new(issuer);
    let (outbox, outbox_log, next_issuance) =
        authsec_storage::outbox::open(&store).context("open the issuance outbox")?;
    let recorder = crate::outbox::Recorder::start(outbox, outbox_log, next_issuance);

    let ctx = Arc::new(Ctx {
        node_id,
        addr: cfg.advertise(),
        writer: writer.clone(),
        reader: Reader::new(store.clone()),
        head_rx,
        sec: sec.clone(),
        agent_template: cfg
            .agent_spiffe_template
            .clone()
            .unwrap_or_else(|| authsec_domain::identity::AGENT_TEMPLATE_DEFAULT.to_owned()),
        issuer: issuer.clone(),
        agents: cfg.agents.clone(),
        auth_failures: Arc::new(crate::audit::FailureLog::default()),
        sink_gate: Arc::new(crate::sink::Gate::default()),
        sink_stats: Arc::new(crate::sink::SinkStats::default()),
    });

    if cfg!(feature = "unaudited-bench") {
        tracing::error!(
            node_id,
            "BENCHMARK BUILD (feature unaudited-bench): credentials this node issues are NOT audited; never run it for real"
        );
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let svids = crate::svid_api::Svids {
        ctx: ctx.clone(),
        issuer: issuer.clone(),
        recorder: recorder.clone(),
        view: view.clone(),
    };
    // The console is served with the OAuth endpoint, built below; its sign-in links are made
    // over gRPC, which starts first.
    let console_slot: Arc<std::sync::OnceLock<Arc<crate::console::Console>>> = Arc::default();
    let grpc = TcpListener::bind(cfg.grpc_addr)
        .await
        .with_context(|| format!("bind gRPC {}", cfg.grpc_addr))?;
    let grpc_addr = grpc.local_addr()?;
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_invalid_argument,
        ))
        .layer(AuthzLayer(sec.tls.clone().map(|t| {
            (
                t,
                crate::authz::AdminPolicy {
                    reader: ctx.reader.clone(),
                },
            )
        })))
        .add_service(
            PeerServer::new(raft.clone(), Arc::new(writer.clone()), freshness.clone())
                .into_service(),
        )
        .add_service(
            ClusterServiceServer::new(Cluster(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            ClientServiceServer::new(Clients(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            EntryServiceServer::new(Entries(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            RoleServiceServer::new(Roles(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            DelegationServiceServer::new(Delegations(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            RevocationServiceServer::new(Revocations(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(BundleServiceServer::new(crate::bundle::Bundles(
            ctx.clone(),
        )))
        .add_service(
            AgentServiceServer::new(Agents(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            EventServiceServer::new(Events(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            authsec_api::v1::audit_service_server::AuditServiceServer::new(crate::audit::Audit {
                ctx: ctx.clone(),
                view: view.clone(),
            })
            .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            NodeServiceServer::new(Nodes(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            authsec_api::v1::root_service_server::RootServiceServer::new(crate::bundle::Roots(
                ctx.clone(),
            ))
            .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            FederationServiceServer::new(crate::federation::Federations(ctx.clone()))
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            SvidServiceServer::new(svids.clone()).max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            authsec_api::v1::agent_api_service_server::AgentApiServiceServer::new(
                crate::agent_api::AgentApi {
                    svids: svids.clone(),
                    view: view.clone(),
                    cfg: cfg.agents.clone(),
                },
            )
            .max_decoding_message_size(API_MESSAGE_BYTES_MAX),
        )
        .add_service(
            authsec_api::v1::console_service_server::ConsoleServiceServer::new(
                crate::console::Logins(console_slot.clone()),
            ),
        );
    let grpc_stop = stop(shutdown_rx.clone());
    let refusals = ctx.auth_failures.clone();
    let server_tls = match &sec.tls {
        // Client certificates are optional at the handshake only so that a joining node can
        // reach `Join`; every other path demands one (authz).
        Some(t) => Some(t.server_config(ClientAuth::Optional)?),
        None => None,
    };
    let mut tasks = vec![tokio::spawn(async move {
        let served = match server_tls {
            Some(config) => {
                router
                    .serve_with_incoming_shutdown(
                        authsec_raft::tls::incoming(grpc, config, GRPC_LIMITS, move |r| {
                            refusals.record_refused_tls("api", &r)
                        }),
                        grpc_stop,
                    )
                    .await
            }
            None => {
                // Our own listener, so set TCP_NODELAY here: without it small HTTP/2 frames
                // wait on Nagle and delayed ACKs (40 ms stalls per request).
                let incoming =
                    tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, grpc_stop)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server failed");
        }
    })];
    if sec.tls.is_some() {
        tasks.push(tokio::spawn(security::renew_loop(
            sec.clone(),
            ctx.reader.clone(),
            raft.clone(),
        )));
        tasks.push(tokio::spawn(security::revocation_loop(
            sec.clone(),
            security_rx,
        )));
    }

    let http_listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("bind HTTP {}", cfg.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let app = http::router(HttpState {
        ctx: ctx.clone(),
        writes,
        outbox: recorder.stats.clone(),
    });
    let http_stop = stop(shutdown_rx.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(http_listener, app)
            .with_graceful_shutdown(http_stop)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));

    // The leader's own freshness, from openraft's metrics (stamped on its AppendEntries).
    let mut leading = raft.metrics();
    let fresh = freshness.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            {
                let m = leading.borrow_and_update();
                fresh.applied(m.last_applied.map_or(0, |l| l.index));
                // A new leader's commit index can lag what its predecessor committed (and
                // acknowledged) until it commits an entry of its own term, its first, blank
                // one: it has no figure of its own (and stamps none) until it has applied that.
                let own_term_applied = m
                    .last_applied
                    .is_some_and(|l| l.leader_id == *m.vote.leader_id());
                fresh.observe_leader(
                    if m.state == openraft::ServerState::Leader && own_term_applied {
                        m.millis_since_quorum_ack
                    } else {
                        None
                    },
                );
            }
            if leading.changed().await.is_err() {
                return;
            }
        }
    }));
    let federation_addr = match (
        cfg.federation.addr,
        crate::federation::endpoint_config(&cfg.federation, sec.tls.as_ref())?,
    ) {
        (Some(a), Some(config)) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("bind the federation endpoint {a}"))?;
            let bound = l.local_addr()?;
            tasks.push(tokio::spawn(crate::federation::serve_endpoint(
                l,
                config,
                crate::federation::our_bundle(ctx.clone()),
                shutdown_rx.clone(),
            )));
            Some(bound)
        }
        _ => None,
    };
    tasks.push(tokio::spawn(crate::maintenance::prune_loop(
        ctx.clone(),
        view.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::outbox::flush_loop(
        ctx.clone(),
        recorder.clone(),
        shutdown_rx.clone(),
    )));
    let oauth_addr = match (
        cfg.oauth.addr,
        crate::https::server_config(
            cfg.oauth.cert_file.as_deref(),
            cfg.oauth.key_file.as_deref(),
            sec.tls.as_ref(),
        )?,
    ) {
        (Some(a), Some(config)) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("bind the OAuth endpoint {a}"))?;
            let bound = l.local_addr()?;
            let oauth = crate::oauth::Oauth::new(
                ctx.clone(),
                view.clone(),
                issuer.clone(),
                recorder.clone(),
                cfg.oauth.clone(),
                bound,
            )?;
            tracing::info!(node_id, addr = %bound, issuer = %oauth.issuer_url, "serving OAuth 2.0");
            let console = crate::console::Console::new(oauth.clone(), bound);
            let _ = console_slot.set(console.clone());
            tasks.push(tokio::spawn(
                console.clone().sample_loop(shutdown_rx.clone()),
            ));
            tasks.push(tokio::spawn(crate::oauth::serve(
                l,
                config,
                console.router().merge(oauth.router()),
                ctx.auth_failures.clone(),
                shutdown_rx.clone(),
            )));
            Some(bound)
        }
        (Some(a), None) => {
            anyhow::bail!("oauth.addr {a}: the OAuth endpoint needs TLS (a node certificate, or oauth.cert_file and key_file)")
        }
        _ => None,
    };
    tasks.push(tokio::spawn(crate::federation::fetch_loop(
        ctx.clone(),
        crate::federation::web_roots(&cfg.federation)?,
        shutdown_rx.clone(),
    )));
    if sec.tls.is_some() {
        tasks.push(tokio::spawn(crate::keymgr::run(
            ctx.clone(),
            issuer.clone(),
            raft.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::audit::checkpointer(
            ctx.clone(),
            view.clone(),
            raft.clone(),
            cfg.audit.checkpoint_records,
            Duration::from_secs(cfg.audit.checkpoint_interval_s),
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::audit::failure_flusher(
        ctx.clone(),
        ctx.auth_failures.clone(),
        Duration::from_secs(cfg.audit.failure_interval_s),
        shutdown_rx.clone(),
    )));
    if let Some(r) = &cfg.audit.retention {
        tasks.push(tokio::spawn(crate::audit::pruner(
            ctx.clone(),
            view.clone(),
            r.clone(),
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::audit::sink_reporter(
        ctx.clone(),
        view.clone(),
        cfg.audit.sinks.iter().map(|s| s.name.clone()).collect(),
        cfg.data_dir.clone(),
        shutdown_rx.clone(),
    )));
    for sink in &cfg.audit.sinks {
        tasks.push(tokio::spawn(crate::sink::run(
            ctx.clone(),
            sink.clone(),
            cfg.data_dir.clone(),
            ctx.sink_gate.clone(),
            ctx.sink_stats.clone(),
            shutdown_rx.clone(),
        )));
    }

    // A storage error stops Raft for good (openraft #285): surface it so the process exits.
    let (fatal_tx, fatal) = watch::channel(None);
    let mut metrics = raft.metrics();
    tasks.push(tokio::spawn(async move {
        loop {
            if let Err(e) = &metrics.borrow_and_update().running_state {
                if matches!(e, openraft::error::Fatal::Stopped) {
                    return; // an orderly shutdown
                }
                tracing::error!(node_id, error = %e, "raft stopped on a fatal error");
                let _ = fatal_tx.send(Some(e.to_string()));
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }));

    if let Some(b) = &cfg.bootstrap {
        if b.members.first().is_some_and(|m| m.id == node_id) {
            let members: BTreeMap<u64, BasicNode> = b
                .members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        BasicNode {
                            addr: m.addr.clone(),
                        },
                    )
                })
                .collect();
            if !raft.is_initialized().await? {
                tracing::info!(node_id, members = ?members.keys().collect::<Vec<_>>(), "initializing a new cluster");
                raft.initialize(members)
                    .await
                    .context("initialize cluster")?;
            }
            let td = TrustDomain::parse(&cfg.trust_domain)?;
            let initial = b.members.clone();
            let mut root = bootstrap_records(&NodeFiles::new(&cfg.data_dir))?;
            // The client-secret key, sealed under the KEK; refused (harmlessly) if the cluster
            // has one already.
            if let Ok(kek) = crate::pki::Kek::load(&cfg.kek_path()) {
                root.push(Command::InstallClientSecretKey {
                    sealed_key: authsec_domain::Sealed(crate::secrets::new_sealed_key(&kek, &td)),
                });
            }
            tasks.push(tokio::spawn(record_bootstrap(writer, td, root, initial)));
        }
    }

    tracing::info!(node_id, %grpc_addr, %http_addr, "node started");
    Ok(RunningNode {
        node_id,
        raft,
        grpc_addr,
        http_addr,
        federation_addr,
        oauth_addr,
        transport: sec.transport(),
        fatal,
        shutdown,
        tasks,
        recorder,
    })
}

/// What `authsec node init` left for the bootstrap to commit: the root certificate and sealed
/// key (no key in offline-root mode), and the bootstrap admin's certificate (`init` writes it
/// on the host that makes the root, and `init --pki-from` copies it), recorded like every
/// admin certificate the cluster signs.
fn bootstrap_records(files: &NodeFiles) -> anyhow::Result<Vec<Command>> {
    if !files.bundle().exists() {
        return Ok(Vec::new()); // --insecure
    }
    let sealed = std::fs::read(files.sealed_root()).ok();
    let bundle = files.load_bundle()?;
    let cert = bundle.first().context("the trust bundle is empty")?;
    let mut out = vec![Command::InstallRoot {
        cert_der: cert.to_vec(),
        sealed_key: sealed.map(authsec_domain::Sealed),
    }];
    if let Ok(certs) = crate::pki::read_certs(&files.bootstrap_admin()) {
        let admin = certs
            .first()
            .context("the bootstrap admin's file holds no certificate")?;
        // The root that signed it, if it is still trusted (else there is nothing to record).
        // Recorded again at a later start, it is refused harmlessly once revoked or expired.
        if let Some(root) = bundle.iter().find(|r| crate::keymgr::signed_by(admin, r)) {
            out.push(Command::RecordAdminCertificate {
                name: crate::init::BOOTSTRAP_ADMIN.to_owned(),
                fingerprint: crate::pki::fingerprint(admin),
                root: crate::pki::fingerprint(root),
                not_after_ms: crate::pki::not_after_ms(admin)?,
                revokes: None,
            });
        }
    }
    Ok(out)
}

/// Commit the trust domain, the root CA and the initial members as events, once, through the
/// normal path.
async fn record_bootstrap(
    writer: Writer,
    td: TrustDomain,
    root: Vec<Command>,
    members: Vec<crate::config::Member>,
) {
    let actor = Actor {
        principal: Principal::System,
        via_node: 0,
    };
    let mut commands = vec![Command::ConfigureTrustDomain { trust_domain: td }];
    commands.extend(root);
    commands.extend(members.into_iter().map(|m| Command::RecordNodeMember {
        node_id: m.id,
        addr: m.addr,
    }));
    for cmd in commands {
        for attempt in 0..60u32 {
            match writer.submit(actor.clone(), cmd.clone()).await {
                Ok(c) => {
                    if let Err(Rejection::TrustDomainAlreadyConfigured { current }) = &c.outcome {
                        tracing::warn!(%current, "the cluster already has another trust domain; keeping it");
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "bootstrap record not written yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

impl RunningNode {
    /// Stop serving, stop Raft, wait for the listeners to close.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        // After every task that records: the writer holds the database open.
        self.recorder.stop().await;
        tracing::info!(node_id = self.node_id, "node stopped");
    }
}
