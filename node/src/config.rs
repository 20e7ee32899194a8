//! Node configuration: one TOML file, overridden by environment and flags (the binary reads
//! the environment through clap; libraries never do). Parsed into validated values at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use authsec_domain::TrustDomain;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// The initial voters. The node whose id is listed first initializes the cluster.
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_logs_since_last: u64,
    pub max_in_snapshot_log_to_keep: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        let t = authsec_raft::RaftTuning::default();
        Self {
            heartbeat_ms: t.heartbeat_ms,
            election_timeout_min_ms: t.election_timeout_min_ms,
            election_timeout_max_ms: t.election_timeout_max_ms,
            snapshot_logs_since_last: t.snapshot_logs_since_last,
            max_in_snapshot_log_to_keep: t.max_in_snapshot_log_to_keep,
        }
    }
}

/// The node's transport certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Lifetime of the node's certificate; it is renewed at half-life without a restart.
    pub cert_ttl_s: u64,
    /// DNS names for the certificate, so ordinary HTTPS clients can check the host name.
    pub dns_names: Vec<String>,
    /// IP addresses for the certificate.
    pub ip_addrs: Vec<String>,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            cert_ttl_s: crate::pki::NODE_TTL_DEFAULT.as_secs(),
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
        }
    }
}

/// The SPIFFE federation bundle endpoint, and how federated endpoints are trusted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    /// Where this node serves its trust bundle (HTTPS, no client certificate); none by default.
    pub addr: Option<SocketAddr>,
    /// A Web PKI certificate chain and key (PEM) for the endpoint: it then serves the
    /// `https_web` profile. Without them it presents the node's SVID (`https_spiffe`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Extra roots (PEM) trusted for `https_web` endpoints besides the Web PKI's, for a
    /// private PKI.
    pub web_ca_file: Option<PathBuf>,
}

/// The OAuth 2.0 authorization server on this node (HTTPS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OauthSection {
    /// Where `/oauth2/*` and the discovery documents are served; none by default.
    pub addr: Option<SocketAddr>,
    /// The issuer URL (`iss`), as a load balancer or DNS name serves the cluster. Without it,
    /// this node's own URL (`https://<addr>`).
    pub issuer: Option<String>,
    /// Issuer URLs of the other nodes (when each node is its own issuer): tokens naming one
    /// of them are introspected and revoked here too.
    pub accepted_issuers: Vec<String>,
    /// Access-token signature algorithm, `ES256` or `EdDSA`. Keys made before a change keep
    /// their algorithm until they rotate.
    pub alg: crate::issuer::TokenAlg,
    /// Lifetime of an access token.
    pub access_token_ttl_s: u32,
    /// The longest `exp - iat` a client assertion (private_key_jwt, JWT-SVID) may have.
    pub assertion_max_lifetime_s: u32,
    /// A Web PKI certificate chain and key (PEM) to serve; without them the node's own
    /// certificate, which chains to the cluster's transport root.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Failed client authentications allowed per client id and per source address in a
    /// minute before further attempts are refused with 429.
    pub auth_failures_per_minute: u32,
    /// Identity providers whose tokens a token exchange accepts as its subject.
    pub trusted_issuers: Vec<crate::oauth::external::TrustedIssuer>,
}

impl Default for OauthSection {
    fn default() -> Self {
        Self {
            addr: None,
            issuer: None,
            accepted_issuers: Vec::new(),
            alg: crate::issuer::TokenAlg::Es256,
            access_token_ttl_s: 300,
            assertion_max_lifetime_s: 300,
            cert_file: None,
            key_file: None,
            auth_failures_per_minute: 20,
            trusted_issuers: Vec::new(),
        }
    }
}

/// SVID issuance on this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerSection {
    /// The freshness bound: beyond it (no quorum acknowledged this node's leader for that
    /// long) the node refuses to issue, and resumes by itself.
    pub max_staleness_ms: u64,
    /// The revocation bound, kept apart from issuance's: introspection answers `active: true`,
    /// and the revocation stream vouches for its set, only while this node's view holds
    /// everything the cluster acknowledged this long ago. A revocation acknowledged anywhere
    /// is then honoured everywhere within this plus delivery (the 1 s promise leaves 250 ms
    /// for delivery and for the age estimate).
    pub revocation_staleness_ms: u64,
    /// Lifetime of the node's intermediate CA; a successor is prepared at half of it and
    /// activated at a sixth remaining (as SPIRE does). SVIDs never outlive their issuer.
    pub ca_ttl_s: u64,
    /// Lifetime of the node's JWT-SVID signing key, rotated like the CA.
    pub jwt_key_ttl_s: u64,
}

impl Default for IssuerSection {
    fn default() -> Self {
        Self {
            max_staleness_ms: 30_000,
            revocation_staleness_ms: 750,
            ca_ttl_s: 24 * 3600,
            jwt_key_ttl_s: 24 * 3600,
        }
    }
}

/// What nodes tell authsec agents (`[agents]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    /// How often an agent sends a heartbeat (the node tells it at each one).
    pub heartbeat_s: u32,
    /// After how many missed heartbeats an agent's entries show `agent-offline`.
    pub offline_after_heartbeats: u32,
    /// Lifetime of an agent's own X.509-SVID; the agent renews it at half-life.
    pub svid_ttl_s: u32,
}

impl Default for AgentsSection {
    fn default() -> Self {
        Self {
            heartbeat_s: 30,
            offline_after_heartbeats: 3,
            svid_ttl_s: 3600,
        }
    }
}

impl AgentsSection {
    pub fn offline_after_ms(&self) -> u64 {
        u64::from(self.heartbeat_s) * u64::from(self.offline_after_heartbeats.max(1)) * 1000
    }
}

/// The audit log's checkpoints, failure aggregation and sinks (`[audit]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// The leader signs a checkpoint once this many records follow the last one...
    pub checkpoint_records: u64,
    /// ...or this long after it, whichever comes first (if any record followed).
    pub checkpoint_interval_s: u64,
    /// Failed authentications are counted per client and source, and recorded once per
    /// interval of this length.
    pub failure_interval_s: u64,
    /// Where every record also goes, as it is committed (see docs/guide/5-audit.md).
    pub sinks: Vec<crate::sink::SinkConfig>,
    /// Pruning old records, cluster-wide, once this node's sinks have them (off by default:
    /// every record is kept).
    pub retention: Option<RetentionSection>,
}

/// `[audit.retention]`: this node proposes to prune the archive's records older than
/// `max_age_s` once every sink in `after_sinks` has acknowledged them, up to the last signed
/// checkpoint they reach. The prune is a committed event: every node's archive (and every
/// snapshot) starts at the same record after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Records older than this (by their leader-stamped time) may be pruned.
    pub max_age_s: u64,
    /// Sinks of this node that must have acknowledged a record before it is pruned.
    pub after_sinks: Vec<String>,
    /// How often to look for records to prune.
    #[serde(default = "default_retention_check_s")]
    pub check_interval_s: u64,
    /// A shorter bound for `credential.issued` records: older ones (acknowledged likewise)
    /// are replaced by remnants that keep their place in the chain but none of their content.
    #[serde(default)]
    pub issuance_max_age_s: Option<u64>,
}

fn default_retention_check_s() -> u64 {
    60
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            checkpoint_records: 1000,
            checkpoint_interval_s: 60,
            failure_interval_s: 60,
            sinks: Vec::new(),
            retention: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Where the gRPC listener (admin API and peer traffic) binds.
    pub grpc_addr: SocketAddr,
    /// The address peers and clients use to reach this node; defaults to `grpc_addr`.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub http_addr: SocketAddr,
    #[serde(default)]
    pub federation: FederationSection,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub bootstrap: Option<Bootstrap>,
    #[serde(default)]
    pub raft: RaftSection,
    /// Dial a peer through another address: advertised address -> address to dial. For
    /// proxies and NAT; membership keeps the advertised address.
    #[serde(default)]
    pub peer_routes: BTreeMap<String, String>,
    /// Plaintext gRPC with no authentication at all. For throwaway experiments only; the node
    /// warns at every start.
    #[serde(default)]
    pub insecure: bool,
    /// The key-encryption key that seals the root CA key. A node that holds it can sign
    /// certificates for joining nodes and renew its own; default `<data_dir>/kek`.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: TlsSection,
    /// SPIFFE ID template of an AI agent's workload entry (`{trust_domain}`, `{client_id}`);
    /// default `spiffe://{trust_domain}/agent/{client_id}`.
    #[serde(default)]
    pub agent_spiffe_template: Option<String>,
    #[serde(default)]
    pub issuer: IssuerSection,
    #[serde(default)]
    pub oauth: OauthSection,
    #[serde(default)]
    pub agents: AgentsSection,
    #[serde(default)]
    pub audit: AuditSection,
    /// A deliberate defect for proving the chaos checkers (debug builds only; never from TOML).
    #[serde(skip)]
    pub planted_bug: crate::planted::PlantedBug,
}

fn default_trust_domain() -> String {
    "authsec.local".into()
}

/// Overrides from environment or flags (clap fills them, flags first).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    #[arg(long, env = "AUTHSEC_NODE_ID")]
    pub node_id: Option<u64>,
    #[arg(long, env = "AUTHSEC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "AUTHSEC_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    #[arg(long, env = "AUTHSEC_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    #[arg(long, env = "AUTHSEC_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Where the OAuth 2.0 endpoints are served (HTTPS).
    #[arg(long, env = "AUTHSEC_OAUTH_ADDR")]
    pub oauth_addr: Option<SocketAddr>,
    /// The issuer URL tokens carry (`iss`).
    #[arg(long, env = "AUTHSEC_OAUTH_ISSUER")]
    pub oauth_issuer: Option<String>,
    #[arg(long, env = "AUTHSEC_FEDERATION_ADDR")]
    pub federation_addr: Option<SocketAddr>,
    #[arg(long, env = "AUTHSEC_FEDERATION_CERT_FILE")]
    pub federation_cert_file: Option<PathBuf>,
    #[arg(long, env = "AUTHSEC_FEDERATION_KEY_FILE")]
    pub federation_key_file: Option<PathBuf>,
    #[arg(long, env = "AUTHSEC_FEDERATION_WEB_CA_FILE")]
    pub federation_web_ca_file: Option<PathBuf>,
    #[arg(long, env = "AUTHSEC_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    #[arg(long, env = "AUTHSEC_SNAPSHOT_LOGS_SINCE_LAST")]
    pub snapshot_logs_since_last: Option<u64>,
    /// Plaintext, unauthenticated gRPC (never in production; warns at every start).
    #[arg(long, env = "AUTHSEC_INSECURE")]
    pub insecure: bool,
    #[arg(long, env = "AUTHSEC_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// Lifetime of the node certificate, in seconds.
    #[arg(long, env = "AUTHSEC_CERT_TTL_S")]
    pub cert_ttl_s: Option<u64>,
    /// The freshness bound for issuing credentials, in milliseconds.
    #[arg(long, env = "AUTHSEC_MAX_STALENESS_MS")]
    pub max_staleness_ms: Option<u64>,
    /// Lifetime of the node's intermediate CA and JWT key, in seconds.
    #[arg(long, env = "AUTHSEC_ISSUER_KEY_TTL_S")]
    pub issuer_key_ttl_s: Option<u64>,
}

impl NodeConfig {
    pub fn load(path: &std::path::Path, o: &Overrides) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        let mut c: NodeConfig =
            toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))?;
        c.apply(o);
        c.validate()?;
        Ok(c)
    }

    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = o.node_id {
            self.node_id = v;
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = o.grpc_addr {
            self.grpc_addr = v;
        }
        if let Some(v) = &o.advertise_addr {
            self.advertise_addr = Some(v.clone());
        }
        if let Some(v) = o.http_addr {
            self.http_addr = v;
        }
        if let Some(v) = o.oauth_addr {
            self.oauth.addr = Some(v);
        }
        if let Some(v) = &o.oauth_issuer {
            self.oauth.issuer = Some(v.clone());
        }
        if let Some(v) = o.federation_addr {
            self.federation.addr = Some(v);
        }
        if let Some(v) = &o.federation_cert_file {
            self.federation.cert_file = Some(v.clone());
        }
        if let Some(v) = &o.federation_key_file {
            self.federation.key_file = Some(v.clone());
        }
        if let Some(v) = &o.federation_web_ca_file {
            self.federation.web_ca_file = Some(v.clone());
        }
        if let Some(v) = &o.trust_domain {
            self.trust_domain = v.clone();
        }
        if let Some(v) = o.snapshot_logs_since_last {
            self.raft.snapshot_logs_since_last = v;
        }
        if o.insecure {
            self.insecure = true;
        }
        if let Some(v) = &o.kek_file {
            self.kek_file = Some(v.clone());
        }
        if let Some(v) = o.cert_ttl_s {
            self.tls.cert_ttl_s = v;
        }
        if let Some(v) = o.max_staleness_ms {
            self.issuer.max_staleness_ms = v;
        }
        if let Some(v) = o.issuer_key_ttl_s {
            self.issuer.ca_ttl_s = v;
            self.issuer.jwt_key_ttl_s = v;
        }
    }

    pub fn kek_path(&self) -> PathBuf {
        self.kek_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("kek"))
    }

    pub fn cert_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.tls.cert_ttl_s)
    }

    pub fn sans(&self) -> anyhow::Result<crate::pki::Sans> {
        crate::pki::Sans::parse(&self.tls.dns_names, &self.tls.ip_addrs).context("tls")
    }

    pub fn td(&self) -> anyhow::Result<TrustDomain> {
        TrustDomain::parse(&self.trust_domain).context("trust_domain")
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_id == 0 || self.node_id > u64::from(u32::MAX) {
            bail!(
                "node_id must be 1 to {} (it is part of every SVID serial number)",
                u32::MAX
            );
        }
        TrustDomain::parse(&self.trust_domain).context("trust_domain")?;
        if self.raft.election_timeout_min_ms <= self.raft.heartbeat_ms
            || self.raft.election_timeout_max_ms <= self.raft.election_timeout_min_ms
        {
            bail!("raft: need heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms");
        }
        if self.tls.cert_ttl_s < crate::pki::NODE_TTL_MIN.as_secs() {
            bail!(
                "tls.cert_ttl_s must be {} or more",
                crate::pki::NODE_TTL_MIN.as_secs()
            );
        }
        self.sans()?;
        if self.audit.checkpoint_records == 0 || self.audit.checkpoint_interval_s == 0 {
            bail!("audit.checkpoint_records and audit.checkpoint_interval_s must be at least 1");
        }
        if !(1..=3600).contains(&self.audit.failure_interval_s) {
            bail!("audit.failure_interval_s must be 1 to 3600");
        }
        crate::sink::validate(&self.audit.sinks)?;
        if let Some(r) = &self.audit.retention {
            if r.max_age_s == 0 {
                bail!("audit.retention.max_age_s must be at least 1");
            }
            if !(1..=86_400).contains(&r.check_interval_s) {
                bail!("audit.retention.check_interval_s must be 1 to 86400");
            }
            if r.issuance_max_age_s
                .is_some_and(|i| i == 0 || i > r.max_age_s)
            {
                bail!("audit.retention.issuance_max_age_s must be 1 to max_age_s: it is the shorter bound for issuance records");
            }
            if r.after_sinks.is_empty() {
                bail!("audit.retention.after_sinks must name at least one [[audit.sinks]]: records are pruned only once a sink has them");
            }
            if r.after_sinks.len() > authsec_domain::audit::PRUNE_SINKS_MAX {
                bail!(
                    "audit.retention.after_sinks: at most {} sinks",
                    authsec_domain::audit::PRUNE_SINKS_MAX
                );
            }
            for name in &r.after_sinks {
                if !self.audit.sinks.iter().any(|s| &s.name == name) {
                    bail!("audit.retention.after_sinks names {name:?}, which is not one of this node's [[audit.sinks]]");
                }
            }
        }
        if self.federation.cert_file.is_some() != self.federation.key_file.is_some() {
            bail!("federation.cert_file and federation.key_file go together");
        }
        if self.oauth.cert_file.is_some() != self.oauth.key_file.is_some() {
            bail!("oauth.cert_file and oauth.key_file go together");
        }
        for url in self.oauth.issuer.iter().chain(&self.oauth.accepted_issuers) {
            crate::oauth::check_issuer_url(url).with_context(|| format!("oauth issuer {url:?}"))?;
        }
        crate::oauth::external::External::new(&self.oauth.trusted_issuers)?;
        if !(10..=86_400).contains(&self.oauth.access_token_ttl_s) {
            bail!("oauth.access_token_ttl_s must be 10 to 86400");
        }
        if !(10..=3_600).contains(&self.oauth.assertion_max_lifetime_s) {
            bail!("oauth.assertion_max_lifetime_s must be 10 to 3600");
        }
        if self.issuer.max_staleness_ms < 1_000 {
            bail!("issuer.max_staleness_ms must be 1000 or more");
        }
        if !(100..=60_000).contains(&self.issuer.revocation_staleness_ms) {
            bail!(
                "issuer.revocation_staleness_ms must be 100 to 60000 (a view younger than a few heartbeats cannot be promised)"
            );
        }
        let min = crate::issuer::CA_TTL_MIN.as_secs();
        if self.issuer.ca_ttl_s < min || self.issuer.jwt_key_ttl_s < min {
            bail!("issuer.ca_ttl_s and issuer.jwt_key_ttl_s must be {min} or more");
        }
        if self.raft.snapshot_logs_since_last == 0 {
            bail!("raft.snapshot_logs_since_last must be 1 or more");
        }
        for (from, to) in &self.peer_routes {
            for a in [from, to] {
                if a.parse::<SocketAddr>().is_err() && !a.contains(':') {
                    bail!("peer_routes: {a:?} is not a host:port address");
                }
            }
        }
        if let Some(b) = &self.bootstrap {
            if b.members.is_empty() {
                bail!("bootstrap.members is empty");
            }
            if !b.members.iter().any(|m| m.id == self.node_id) {
                bail!(
                    "bootstrap.members does not list this node ({})",
                    self.node_id
                );
            }
        }
        Ok(())
    }

    pub fn advertise(&self) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| self.grpc_addr.to_string())
    }

    pub fn tuning(&self) -> authsec_raft::RaftTuning {
        authsec_raft::RaftTuning {
            cluster_name: format!("authsec:{}", self.trust_domain),
            heartbeat_ms: self.raft.heartbeat_ms,
            election_timeout_min_ms: self.raft.election_timeout_min_ms,
            election_timeout_max_ms: self.raft.election_timeout_max_ms,
            snapshot_logs_since_last: self.raft.snapshot_logs_since_last,
            max_in_snapshot_log_to_keep: self.raft.max_in_snapshot_log_to_keep,
        }
    }
}
