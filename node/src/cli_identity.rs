//! The identity CLI: `authsec client|entry|role|bind|unbind|delegation|revoke|agent`.
//!
//! Output is a table for people, or with `--output json` one JSON object per line for scripts.
//! Exit codes are stable (see [`exit_code`]): 0 success, 2 bad input, 3 not found, 4 already
//! exists, 5 failed precondition (a stale expected revision, a rule that refused), 6 permission
//! denied or unauthenticated, 7 unavailable or timed out, 1 anything else.

use std::process::ExitCode;

use authsec_api::v1::{
    self, agent_service_client::AgentServiceClient,
    delegation_service_client::DelegationServiceClient, entry_service_client::EntryServiceClient,
    revocation_service_client::RevocationServiceClient, role_service_client::RoleServiceClient,
};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::cli::{self, Target};

/// A gRPC error, kept whole so the exit code can follow its code.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", code_name(.0.code()), .0.message())]
pub struct CallError(pub tonic::Status);

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "ERROR",
    }
}

fn call(s: tonic::Status) -> anyhow::Error {
    CallError(s).into()
}

/// The process exit code for an error: scripts can rely on these.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    let Some(CallError(s)) = e.downcast_ref::<CallError>() else {
        return ExitCode::from(1);
    };
    ExitCode::from(match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => 2,
        tonic::Code::NotFound => 3,
        tonic::Code::AlreadyExists => 4,
        tonic::Code::FailedPrecondition | tonic::Code::Aborted => 5,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => 6,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => 7,
        _ => 1,
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    #[command(flatten)]
    pub target: Target,
    /// table (for people) or json (one object per line, for scripts).
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value_t,
        env = "AUTHSEC_OUTPUT",
        global = true
    )]
    pub output: Output,
}

/// Rows printed as an aligned table or JSON lines.
pub(crate) struct Printer {
    output: Output,
    headers: &'static [&'static str],
    rows: Vec<Vec<String>>,
}

impl Printer {
    pub(crate) fn new(output: Output, headers: &'static [&'static str]) -> Self {
        Self {
            output,
            headers,
            rows: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, json: Value, row: Vec<String>) {
        match self.output {
            Output::Json => println!("{json}"),
            Output::Table => self.rows.push(row),
        }
    }

    pub(crate) fn finish(self) {
        if self.output == Output::Json {
            return;
        }
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let s: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect();
            println!("{}", s.join("  ").trim_end());
        };
        line(self.headers.to_vec());
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect());
        }
    }
}

pub(crate) fn ms(t: u64) -> String {
    if t == 0 {
        return "-".into();
    }
    // To the second: `2026-11-30T03:18:21Z`.
    let full = crate::audit::rfc3339_ms(t);
    format!("{}Z", &full[..19])
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn kind_name(k: i32) -> &'static str {
    match v1::ClientKind::try_from(k) {
        Ok(v1::ClientKind::Service) => "service",
        Ok(v1::ClientKind::AiAgent) => "ai_agent",
        Ok(v1::ClientKind::Ci) => "ci",
        Ok(v1::ClientKind::Device) => "device",
        _ => "?",
    }
}

fn client_json(c: &v1::Client) -> Value {
    json!({
        "client_id": c.client_id, "kind": kind_name(c.kind), "display_name": c.display_name,
        "description": c.description, "owner": c.owner, "allowed_scopes": c.allowed_scopes,
        "default_scopes": c.default_scopes, "default_audience": c.default_audience,
        "enabled": c.enabled, "revision": c.revision, "created_at_ms": c.created_at_ms,
        "updated_at_ms": c.updated_at_ms,
    })
}

const CLIENT_HEADERS: &[&str] = &[
    "CLIENT",
    "KIND",
    "ENABLED",
    "OWNER",
    "ALLOWED SCOPES",
    "REV",
];

fn client_row(c: &v1::Client) -> Vec<String> {
    vec![
        c.client_id.clone(),
        kind_name(c.kind).into(),
        c.enabled.to_string(),
        if c.owner.is_empty() {
            "-".into()
        } else {
            c.owner.clone()
        },
        list(&c.allowed_scopes),
        c.revision.to_string(),
    ]
}

fn entry_json(e: &v1::Entry) -> Value {
    json!({
        "entry_id": e.entry_id, "spiffe_id": e.spiffe_id, "parent_id": e.parent_id,
        "selectors": e.selectors, "x509_ttl_seconds": e.x509_ttl_seconds,
        "jwt_ttl_seconds": e.jwt_ttl_seconds, "dns_names": e.dns_names, "client_id": e.client_id,
        "federates_with": e.federates_with, "status": e.status, "revision": e.revision,
        "created_at_ms": e.created_at_ms, "updated_at_ms": e.updated_at_ms,
    })
}

const ENTRY_HEADERS: &[&str] = &[
    "ENTRY",
    "SPIFFE ID",
    "PARENT",
    "SELECTORS",
    "CLIENT",
    "STATUS",
    "REV",
];

fn entry_row(e: &v1::Entry) -> Vec<String> {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    vec![
        e.entry_id.clone(),
        e.spiffe_id.clone(),
        dash(&e.parent_id),
        list(&e.selectors),
        dash(&e.client_id),
        e.status.clone(),
        e.revision.to_string(),
    ]
}

fn role_json(r: &v1::Role) -> Value {
    json!({
        "name": r.name, "description": r.description, "permissions": r.permissions,
        "revision": r.revision, "created_at_ms": r.created_at_ms, "updated_at_ms": r.updated_at_ms,
    })
}

fn delegation_json(d: &v1::Delegation) -> Value {
    json!({
        "delegation_id": d.delegation_id, "delegator": d.delegator, "delegate": d.delegate,
        "permissions": d.permissions, "max_token_ttl_seconds": d.max_token_ttl_seconds,
        "max_depth": d.max_depth, "depth": d.depth, "parent": d.parent,
        "expires_at_ms": d.expires_at_ms, "created_at_ms": d.created_at_ms,
        "revoked_at_index": d.revoked_at_index, "status": d.status,
    })
}

const DELEGATION_HEADERS: &[&str] = &[
    "DELEGATION",
    "FROM",
    "TO",
    "PERMISSIONS",
    "DEPTH",
    "MAX DEPTH",
    "EXPIRES",
    "STATUS",
];

fn delegation_row(d: &v1::Delegation) -> Vec<String> {
    vec![
        d.delegation_id.clone(),
        d.delegator.clone(),
        d.delegate.clone(),
        list(&d.permissions),
        d.depth.to_string(),
        d.max_depth.to_string(),
        ms(d.expires_at_ms),
        d.status.clone(),
    ]
}

fn receipt(output: Output, what: &str, r: Option<&v1::WriteReceipt>) {
    let idx = r.map_or(0, |r| r.log_index);
    match output {
        Output::Json => println!("{}", json!({ "result": what, "log_index": idx })),
        Output::Table => println!("{what} (committed at log index {idx})"),
    }
}

/// Every item of a paged listing: `page(token)` until the next token is empty.
async fn all_pages<T, Fut>(mut page: impl FnMut(String) -> Fut) -> anyhow::Result<Vec<T>>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let (items, next) = page(token).await.map_err(call)?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

fn consistency(linearizable: bool) -> i32 {
    if linearizable {
        v1::Consistency::Linearizable as i32
    } else {
        v1::Consistency::Local as i32
    }
}

async fn channel(t: &Target) -> anyhow::Result<Channel> {
    Ok(cli::connect(&cli::endpoints(t)?).await?.1)
}

/// Read a public key from a file: `kid=path`.
fn public_key_arg(s: &str) -> anyhow::Result<v1::PublicKey> {
    let (kid, path) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--public-key takes KID=FILE (a JWK or PEM public key)"))?;
    let key = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("read public key {path}: {e}"))?;
    Ok(v1::PublicKey {
        kid: kid.into(),
        key: key.trim().into(),
    })
}

fn kind_arg(s: &str) -> anyhow::Result<i32> {
    authsec_domain::ClientKind::parse(s)
        .map(|k| authsec_api::convert::kind_to_wire(k) as i32)
        .ok_or_else(|| anyhow::anyhow!("--kind must be service, ai-agent, ci or device"))
}

// ---- client ----

#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Create a client. `--kind ai-agent` also creates its workload entry in the same commit,
    /// and prints the next steps. A generated secret is shown once.
    #[command(alias = "register")]
    Create {
        #[command(flatten)]
        common: Common,
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
        /// Allowed scope, the cap of every token (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Default scope (repeatable).
        #[arg(long = "default-scope")]
        default_scopes: Vec<String>,
        #[arg(long, default_value = "")]
        audience: String,
        /// Do not generate a client secret (authenticate with keys or mTLS only).
        #[arg(long)]
        no_secret: bool,
        /// A private_key_jwt key, KID=FILE (JWK or PEM; repeatable).
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// The SPIFFE ID the client's certificate carries (tls_client_auth).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// For ai-agent: the entry's SPIFFE ID template ({trust_domain}, {client_id}).
        #[arg(long)]
        spiffe_id_template: Option<String>,
    },
    /// List clients, a page at a time.
    List {
        #[command(flatten)]
        common: Common,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        owner: Option<String>,
    },
    /// A client with its authentication methods, entries and roles.
    Get {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        linearizable: bool,
    },
    /// Change a client's names, scopes or audience (only the fields given).
    Update {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// Replace the allowed scopes (repeatable; pass once with "" to clear).
        #[arg(long = "scope")]
        scopes: Option<Vec<String>>,
        #[arg(long = "default-scope")]
        default_scopes: Option<Vec<String>>,
        #[arg(long)]
        audience: Option<String>,
        /// Apply only at this revision (safe concurrent updates).
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Disable a client: it gets no more tokens.
    Disable {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Enable a disabled client.
    Enable {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Delete a client with its bindings, entries and delegations.
    #[command(alias = "remove")]
    Delete {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// A new secret, shown once; the old one keeps working for --overlap.
    RotateSecret {
        #[command(flatten)]
        common: Common,
        id: String,
        /// How long the old secret keeps working, e.g. 1h (default 0: it stops at once).
        #[arg(long, default_value = "0s")]
        overlap: String,
        #[arg(long)]
        expected_revision: Option<u64>,
    },
}

fn parse_duration_s(s: &str) -> anyhow::Result<u64> {
    let (n, mul) = match s.trim().char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a duration like 90s, 10m, 1h or 7d"))?;
    n.checked_mul(mul)
        .ok_or_else(|| anyhow::anyhow!("{s:?} is too long"))
}

fn opt_scopes(v: Option<Vec<String>>) -> Option<v1::ScopeList> {
    v.map(|v| v1::ScopeList {
        scopes: v.into_iter().filter(|s| !s.is_empty()).collect(),
    })
}

async fn set_enabled(
    common: Common,
    id: String,
    expected_revision: Option<u64>,
    enabled: bool,
) -> anyhow::Result<()> {
    let r = authsec_api::v1::client_service_client::ClientServiceClient::new(
        channel(&common.target).await?,
    )
    .update_client(v1::UpdateClientRequest {
        client_id: id.clone(),
        enabled: Some(enabled),
        expected_revision,
        ..Default::default()
    })
    .await
    .map_err(call)?
    .into_inner();
    let what = if enabled { "enabled" } else { "disabled" };
    receipt(
        common.output,
        &format!("client {id} {what}"),
        r.receipt.as_ref(),
    );
    Ok(())
}

pub async fn client(c: ClientCmd) -> anyhow::Result<()> {
    use authsec_api::v1::client_service_client::ClientServiceClient as C;
    match c {
        ClientCmd::Create {
            common,
            id,
            kind,
            name,
            description,
            owner,
            scopes,
            default_scopes,
            audience,
            no_secret,
            public_keys,
            spiffe_id,
            spiffe_id_template,
        } => {
            let req = v1::CreateClientRequest {
                client_id: id.unwrap_or_default(),
                kind: kind_arg(&kind)?,
                display_name: name,
                description,
                owner,
                allowed_scopes: scopes,
                default_scopes,
                default_audience: audience,
                generate_secret: !no_secret,
                public_keys: public_keys
                    .iter()
                    .map(|k| public_key_arg(k))
                    .collect::<anyhow::Result<_>>()?,
                spiffe_id: spiffe_id.unwrap_or_default(),
                spiffe_id_template: spiffe_id_template.unwrap_or_default(),
            };
            let r = C::new(channel(&common.target).await?)
                .create_client(req)
                .await
                .map_err(call)?
                .into_inner();
            let idx = r.receipt.as_ref().map_or(0, |r| r.log_index);
            let c = r.client.unwrap_or_default();
            match common.output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "log_index": idx, "client": client_json(&c),
                        "client_secret": r.client_secret,
                        "credentials": r.credentials.as_ref().map(|c| json!({"methods": c.methods, "spiffe_id": c.spiffe_id})),
                        "entry": r.entry.as_ref().map(entry_json), "next_steps": r.next_steps,
                    })
                ),
                Output::Table => {
                    println!(
                        "Client {} ({}) created at log index {idx}.",
                        c.client_id,
                        kind_name(c.kind)
                    );
                    let mut p = Printer::new(Output::Table, CLIENT_HEADERS);
                    p.add(Value::Null, client_row(&c));
                    p.finish();
                    if !r.client_secret.is_empty() {
                        println!(
                            "\nClient secret (shown once; store it now):\n  {}",
                            r.client_secret
                        );
                    }
                    if let Some(e) = &r.entry {
                        println!("\nWorkload entry (same commit):");
                        let mut p = Printer::new(Output::Table, ENTRY_HEADERS);
                        p.add(Value::Null, entry_row(e));
                        p.finish();
                    }
                    if !r.next_steps.is_empty() {
                        println!("\nNext steps:");
                        for (i, s) in r.next_steps.iter().enumerate() {
                            println!("  {}. {s}", i + 1);
                        }
                    }
                }
            }
        }
        ClientCmd::List {
            common,
            kind,
            owner,
        } => {
            let cl = C::new(channel(&common.target).await?);
            let kind = kind.map(|k| kind_arg(&k)).transpose()?.unwrap_or(0);
            let items = all_pages(|page_token| {
                let mut cl = cl.clone();
                let req = v1::ListClientsRequest {
                    page_size: 1000,
                    page_token,
                    consistency: 0,
                    kind,
                    owner: owner.clone().unwrap_or_default(),
                };
                async move {
                    let r = cl.list_clients(req).await?.into_inner();
                    Ok((r.clients, r.next_page_token))
                }
            })
            .await?;
            let mut p = Printer::new(common.output, CLIENT_HEADERS);
            for c in &items {
                p.add(client_json(c), client_row(c));
            }
            p.finish();
        }
        ClientCmd::Get {
            common,
            id,
            linearizable,
        } => {
            let d = C::new(channel(&common.target).await?)
                .describe_client(v1::GetClientRequest {
                    client_id: id,
                    consistency: consistency(linearizable),
                })
                .await
                .map_err(call)?
                .into_inner();
            let c = d.client.unwrap_or_default();
            let cred = d.credentials.unwrap_or_default();
            match common.output {
                Output::Json => {
                    let mut j = client_json(&c);
                    j["auth_methods"] = json!(cred.methods);
                    j["spiffe_id"] = json!(cred.spiffe_id);
                    j["public_key_ids"] =
                        json!(cred.public_keys.iter().map(|k| &k.kid).collect::<Vec<_>>());
                    j["previous_secret_valid_until_ms"] =
                        json!(cred.previous_secret_valid_until_ms);
                    j["entries"] = json!(d.entries.iter().map(entry_json).collect::<Vec<_>>());
                    j["roles"] = json!(d.roles);
                    println!("{j}");
                }
                Output::Table => {
                    let mut p = Printer::new(Output::Table, CLIENT_HEADERS);
                    p.add(Value::Null, client_row(&c));
                    p.finish();
                    println!("\nauth methods: {}", list(&cred.methods));
                    if !cred.spiffe_id.is_empty() {
                        println!("bound SPIFFE ID: {}", cred.spiffe_id);
                    }
                    if cred.previous_secret_valid_until_ms > 0 {
                        println!(
                            "previous secret valid until: {}",
                            ms(cred.previous_secret_valid_until_ms)
                        );
                    }
                    println!("roles: {}", list(&d.roles));
                    if !d.entries.is_empty() {
                        println!();
                        let mut p = Printer::new(Output::Table, ENTRY_HEADERS);
                        for e in &d.entries {
                            p.add(Value::Null, entry_row(e));
                        }
                        p.finish();
                    }
                }
            }
        }
        ClientCmd::Update {
            common,
            id,
            name,
            description,
            owner,
            scopes,
            default_scopes,
            audience,
            expected_revision,
        } => {
            let r = C::new(channel(&common.target).await?)
                .update_client(v1::UpdateClientRequest {
                    client_id: id.clone(),
                    display_name: name,
                    description,
                    owner,
                    allowed_scopes: opt_scopes(scopes),
                    default_scopes: opt_scopes(default_scopes),
                    default_audience: audience,
                    enabled: None,
                    expected_revision,
                })
                .await
                .map_err(call)?
                .into_inner();
            receipt(
                common.output,
                &format!("client {id} updated"),
                r.receipt.as_ref(),
            );
        }
        ClientCmd::Disable {
            common,
            id,
            expected_revision,
        } => set_enabled(common, id, expected_revision, false).await?,
        ClientCmd::Enable {
            common,
            id,
            expected_revision,
        } => set_enabled(common, id, expected_revision, true).await?,
        ClientCmd::Delete {
            common,
            id,
            expected_revision,
        } => {
            let r = C::new(channel(&common.target).await?)
                .delete_client(v1::DeleteClientRequest {
                    client_id: id.clone(),
                    expected_revision,
                })
                .await
                .map_err(call)?
                .into_inner();
            receipt(
                common.output,
                &format!("client {id} deleted"),
                r.receipt.as_ref(),
            );
        }
        ClientCmd::RotateSecret {
            common,
            id,
            overlap,
            expected_revision,
        } => {
            let r = C::new(channel(&common.target).await?)
                .rotate_secret(v1::RotateSecretRequest {
                    client_id: id.clone(),
                    overlap_seconds: parse_duration_s(&overlap)?,
                    expected_revision,
                })
                .await
                .map_err(call)?
                .into_inner();
            let idx = r.receipt.as_ref().map_or(0, |r| r.log_index);
            match common.output {
                Output::Json => println!(
                    "{}",
                    json!({"client_id": id, "client_secret": r.client_secret, "log_index": idx,
                           "previous_valid_until_ms": r.previous_valid_until_ms})
                ),
                Output::Table => {
                    println!(
                        "New secret for {id} (shown once; store it now):\n  {}",
                        r.client_secret
                    );
                    if r.previous_valid_until_ms > 0 {
                        println!(
                            "The previous secret works until {}.",
                            ms(r.previous_valid_until_ms)
                        );
                    } else {
                        println!("The previous secret no longer works.");
                    }
                }
            }
        }
    }
    Ok(())
}

// ---- entry ----

#[derive(Debug, Subcommand)]
pub enum EntryCmd {
    /// Create a workload entry (an SPIFFE ID, its parent agent and selectors).
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        spiffe_id: String,
        /// The agent that may issue it.
        #[arg(long)]
        parent: Option<String>,
        /// type:value, e.g. unix:uid:1000 (repeatable).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        #[arg(long)]
        x509_ttl: Option<String>,
        #[arg(long)]
        jwt_ttl: Option<String>,
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// The client this workload acts as.
        #[arg(long)]
        client: Option<String>,
        #[arg(long = "federates-with")]
        federates_with: Vec<String>,
        /// Entry id; generated when omitted.
        #[arg(long)]
        id: Option<String>,
    },
    /// List workload entries, filtered by SPIFFE ID, parent, client or status.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        client: Option<String>,
        /// awaiting-agent or active.
        #[arg(long)]
        status: Option<String>,
    },
    /// One workload entry.
    Get {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        linearizable: bool,
    },
    /// Change an entry's selectors, TTLs, DNS names or federation (only the fields given).
    Update {
        #[command(flatten)]
        common: Common,
        id: String,
        /// The agent that may issue it ("" clears it).
        #[arg(long)]
        parent: Option<String>,
        /// Replace the selectors (repeatable).
        #[arg(long = "selector")]
        selectors: Option<Vec<String>>,
        #[arg(long)]
        x509_ttl: Option<String>,
        #[arg(long)]
        jwt_ttl: Option<String>,
        #[arg(long = "dns-name")]
        dns_names: Option<Vec<String>>,
        #[arg(long = "federates-with")]
        federates_with: Option<Vec<String>>,
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Delete a workload entry.
    Delete {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        expected_revision: Option<u64>,
    },
}

fn ttl_arg(s: Option<String>) -> anyhow::Result<Option<u32>> {
    s.map(|s| {
        u32::try_from(parse_duration_s(&s)?).map_err(|_| anyhow::anyhow!("{s:?} is too long"))
    })
    .transpose()
}

fn strings(v: Option<Vec<String>>) -> Option<v1::StringList> {
    v.map(|v| v1::StringList {
        values: v.into_iter().filter(|s| !s.is_empty()).collect(),
    })
}

pub async fn entry(c: EntryCmd) -> anyhow::Result<()> {
    match c {
        EntryCmd::Create {
            common,
            spiffe_id,
            parent,
            selectors,
            x509_ttl,
            jwt_ttl,
            dns_names,
            client,
            federates_with,
            id,
        } => {
            let r = EntryServiceClient::new(channel(&common.target).await?)
                .create_entry(v1::CreateEntryRequest {
                    entry_id: id.unwrap_or_default(),
                    spiffe_id,
                    parent_id: parent.unwrap_or_default(),
                    selectors,
                    x509_ttl_seconds: ttl_arg(x509_ttl)?.unwrap_or(0),
                    jwt_ttl_seconds: ttl_arg(jwt_ttl)?.unwrap_or(0),
                    dns_names,
                    client_id: client.unwrap_or_default(),
                    federates_with,
                })
                .await
                .map_err(call)?
                .into_inner();
            let e = r.entry.unwrap_or_default();
            let mut p = Printer::new(common.output, ENTRY_HEADERS);
            p.add(entry_json(&e), entry_row(&e));
            p.finish();
        }
        EntryCmd::List {
            common,
            spiffe_id,
            parent,
            client,
            status,
        } => {
            let cl = EntryServiceClient::new(channel(&common.target).await?);
            let items = all_pages(|page_token| {
                let mut cl = cl.clone();
                let req = v1::ListEntriesRequest {
                    page_size: 1000,
                    page_token,
                    consistency: 0,
                    spiffe_id: spiffe_id.clone().unwrap_or_default(),
                    parent_id: parent.clone().unwrap_or_default(),
                    client_id: client.clone().unwrap_or_default(),
                    status: status.clone().unwrap_or_default(),
                };
                async move {
                    let r = cl.list_entries(req).await?.into_inner();
                    Ok((r.entries, r.next_page_token))
                }
            })
            .await?;
            let mut p = Printer::new(common.output, ENTRY_HEADERS);
            for e in &items {
                p.add(entry_json(e), entry_row(e));
            }
            p.finish();
        }
        EntryCmd::Get {
            common,
            id,
            linearizable,
        } => {
            let e = EntryServiceClient::new(channel(&common.target).await?)
                .get_entry(v1::GetEntryRequest {
                    entry_id: id,
                    consistency: consistency(linearizable),
                })
                .await
                .map_err(call)?
                .into_inner();
            let mut p = Printer::new(common.output, ENTRY_HEADERS);
            p.add(entry_json(&e), entry_row(&e));
            p.finish();
        }
        EntryCmd::Update {
            common,
            id,
            parent,
            selectors,
            x509_ttl,
            jwt_ttl,
            dns_names,
            federates_with,
            expected_revision,
        } => {
            let r = EntryServiceClient::new(channel(&common.target).await?)
                .update_entry(v1::UpdateEntryRequest {
                    entry_id: id.clone(),
                    parent_id: parent,
                    selectors: strings(selectors),
                    x509_ttl_seconds: ttl_arg(x509_ttl)?,
                    jwt_ttl_seconds: ttl_arg(jwt_ttl)?,
                    dns_names: strings(dns_names),
                    federates_with: strings(federates_with),
                    expected_revision,
                })
                .await
                .map_err(call)?
                .into_inner();
            receipt(
                common.output,
                &format!("entry {id} updated"),
                r.receipt.as_ref(),
            );
        }
        EntryCmd::Delete {
            common,
            id,
            expected_revision,
        } => {
            let r = EntryServiceClient::new(channel(&common.target).await?)
                .delete_entry(v1::DeleteEntryRequest {
                    entry_id: id.clone(),
                    expected_revision,
                })
                .await
                .map_err(call)?
                .into_inner();
            receipt(
                common.output,
                &format!("entry {id} deleted"),
                r.receipt.as_ref(),
            );
        }
    }
    Ok(())
}

// ---- role, bind, unbind ----

#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Create a role: a named set of permissions.
    Create {
        #[command(flatten)]
        common: Common,
        name: String,
        /// resource:action, `*` as a whole segment only (repeatable).
        #[arg(long = "permission")]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List roles.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// One role with its permissions.
    Get {
        #[command(flatten)]
        common: Common,
        name: String,
        #[arg(long)]
        linearizable: bool,
    },
    /// Replace a role's permissions or description.
    Update {
        #[command(flatten)]
        common: Common,
        name: String,
        /// Replace the permissions (repeatable).
        #[arg(long = "permission")]
        permissions: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Refused while the role is bound.
    Delete {
        #[command(flatten)]
        common: Common,
        name: String,
        #[arg(long)]
        expected_revision: Option<u64>,
    },
    /// Bindings, by subject or role.
    Bindings {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        role: Option<String>,
    },
}

const ROLE_HEADERS: &[&str] = &["ROLE", "PERMISSIONS", "DESCRIPTION", "REV"];

fn role_row(r: &v1::Role) -> Vec<String> {
    vec![
        r.name.clone(),
        list(&r.permissions),
        r.description.clone(),
        r.revision.to_string(),
    ]
}

pub async fn role(c: RoleCmd) -> anyhow::Result<()> {
    match c {
        RoleCmd::Create {
            common,
            name,
            permissions,
            description,
        } => {
            let r = RoleServiceClient::new(channel(&common.target).await?)
                .create_role(v1::CreateRoleRequest {
                    name: name.clone(),
                    description,
                    permissions,
                })
                .await
                .map_err(call)?
                .into_inner();
            receipt(
                common.output,
                &format!("role {name} created"),
                r.receipt.as_ref(),
            );
        }
        RoleCmd::List { common } => {
            let cl = RoleServiceClient::new(channel(&common.target).await?);
            let items = all_pages(|page_token| {
                let mut cl = cl.clone();
                let req = v1::ListRolesRequest {
                    page_size: 1000,
                    page_token,
                    consistency: 0,
                };
                async move {
                    let r = cl.list_roles(req).await?.into_inner();
                    Ok((r.roles, r.next_page_token))
                }
            })
            .await?;
            let mut p = Printer::new(common.output, ROLE_HEADERS);
            for x in &items {
                p.add(role_json(x), role_row(x));
            }
            p.finish();
        }
        RoleCmd::Get {
            common,
            name,
            linearizable,
        } => {
            let x = RoleServiceClient::new(channel(&common.target).await?)
                .get_role(v1::GetRoleRequest {
                    name,
                    consistency: consistency(linearizable),
                })
                .await
                .map_err(call)?
                .into_inner();
            let mut p = Printer::new(common.output, ROLE_HEADERS);
            p.add(role_json(&x), role_row(&x));
            p.finish();
        }
        RoleCmd::Update {
            common,
            name,
            permissions,
            description,
            expected_revision,
        } => {
            let r = RoleServiceClient::new(channel(&common.target).await?)
                .update_role(v1::UpdateRoleRequest {
                    name: name.clone(),
                    description,
                    permissions: strings(permissions),
                    expected_revision,
                })
                .await
                .map_err(call)?
                .into_inner();
            receipt(
                common.output,
                &format!("role {name} updated"),
                r.receipt.as_ref(),
            );
        }
        RoleCmd::Delete {
            common,
            name,
            expected_revision,
        } => {
            let r = RoleServiceClient::new(channel(&common.target).await?)
                .delete_role(v1::DeleteRoleRequest {
                    name: name.clone(),
                    expected_revision,
                })
                .await
                .map_err(call)?
                .into_inner();
            receipt(
                common.output,
                &format!("role {name} deleted"),
                r.receipt.as_ref(),
            );
        }
        RoleCmd::Bindings {
            common,
            subject,
            role,
        } => {
            let cl = RoleServiceClient::new(channel(&common.target).await?);
            let items = all_pages(|page_token| {
                let mut cl = cl.clone();
                let req = v1::ListBindingsRequest {
                    page_size: 1000,
                    page_token,
                    consistency: 0,
                    subject: subject.clone().unwrap_or_default(),
                    role: role.clone().unwrap_or_default(),
                };
                async move {
                    let r = cl.list_bindings(req).await?.into_inner();
                    Ok((r.bindings, r.next_page_token))
                }
            })
            .await?;
            let mut p = Printer::new(common.output, &["ROLE", "SUBJECT"]);
            for b in &items {
                p.add(
                    json!({"role": b.role, "subject": b.subject}),
                    vec![b.role.clone(), b.subject.clone()],
                );
            }
            p.finish();
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct BindArgs {
    #[command(flatten)]
    pub common: Common,
    pub role: String,
    /// client:<id>, entry:<id>, a SPIFFE ID, or person:<issuer>#<subject>.
    pub subject: String,
}

pub async fn bind(a: BindArgs, bind: bool) -> anyhow::Result<()> {
    let mut cl = RoleServiceClient::new(channel(&a.common.target).await?);
    let b = v1::Binding {
        role: a.role.clone(),
        subject: a.subject.clone(),
    };
    let r = if bind {
        cl.bind(b).await
    } else {
        cl.unbind(b).await
    }
    .map_err(call)?
    .into_inner();
    let what = if bind { "bound to" } else { "unbound from" };
    receipt(
        a.common.output,
        &format!("role {} {what} {}", a.role, a.subject),
        r.receipt.as_ref(),
    );
    Ok(())
}

// ---- delegation ----

#[derive(Debug, Subcommand)]
pub enum DelegationCmd {
    /// Grant an AI agent client permissions on behalf of a client or person. Asking for more
    /// than the delegator holds, the agent's roles or its allowed scopes grant is refused.
    Create {
        #[command(flatten)]
        common: Common,
        /// client:<id> or person:<issuer>#<subject>.
        #[arg(long)]
        from: String,
        /// The ai_agent client.
        #[arg(long)]
        to: String,
        /// resource:action (repeatable).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        /// How long the grant lives, e.g. 24h.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Longest token the agent may hold under it.
        #[arg(long, default_value = "5m")]
        max_token_ttl: String,
        /// How many further hops of re-delegation it allows.
        #[arg(long, default_value_t = 0)]
        max_depth: u32,
        /// Re-delegate: the delegation --from holds.
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
    /// List delegations, by delegator or delegate.
    List {
        #[command(flatten)]
        common: Common,
        /// Only delegations this client gave or holds.
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        include_revoked: bool,
    },
    /// One delegation with its chain.
    Get {
        #[command(flatten)]
        common: Common,
        id: String,
        #[arg(long)]
        linearizable: bool,
    },
    /// What a token for CLIENT asking for these scopes would carry (the issuance rule).
    Check {
        #[command(flatten)]
        common: Common,
        client: String,
        #[arg(required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        delegation: Option<String>,
    },
}

pub async fn delegation(c: DelegationCmd) -> anyhow::Result<()> {
    match c {
        DelegationCmd::Create {
            common,
            from,
            to,
            permissions,
            ttl,
            max_token_ttl,
            max_depth,
            parent,
            id,
        } => {
            let r = DelegationServiceClient::new(channel(&common.target).await?)
                .create_delegation(v1::CreateDelegationRequest {
                    delegation_id: id.unwrap_or_default(),
                    delegator: from,
                    delegate: to,
                    permissions,
                    max_token_ttl_seconds: ttl_arg(Some(max_token_ttl))?.unwrap_or(0),
                    max_depth,
                    ttl_seconds: parse_duration_s(&ttl)?,
                    parent: parent.unwrap_or_default(),
                })
                .await
                .map_err(call)?
                .into_inner();
            let d = r.delegation.unwrap_or_default();
            let mut p = Printer::new(common.output, DELEGATION_HEADERS);
            p.add(delegation_json(&d), delegation_row(&d));
            p.finish();
        }
        DelegationCmd::List {
            common,
            client,
            include_revoked,
        } => {
            let cl = DelegationServiceClient::new(channel(&common.target).await?);
            let items = all_pages(|page_token| {
                let mut cl = cl.clone();
                let req = v1::ListDelegationsRequest {
                    page_size: 1000,
                    page_token,
                    consistency: 0,
                    client_id: client.clone().unwrap_or_default(),
                    include_revoked,
                };
                async move {
                    let r = cl.list_delegations(req).await?.into_inner();
                    Ok((r.delegations, r.next_page_token))
                }
            })
            .await?;
            let mut p = Printer::new(common.output, DELEGATION_HEADERS);
            for d in &items {
                p.add(delegation_json(d), delegation_row(d));
            }
            p.finish();
        }
        DelegationCmd::Get {
            common,
            id,
            linearizable,
        } => {
            let d = DelegationServiceClient::new(channel(&common.target).await?)
                .get_delegation(v1::GetDelegationRequest {
                    delegation_id: id,
                    consistency: consistency(linearizable),
                })
                .await
                .map_err(call)?
                .into_inner();
            let mut p = Printer::new(common.output, DELEGATION_HEADERS);
            p.add(delegation_json(&d), delegation_row(&d));
            p.finish();
        }
        DelegationCmd::Check {
            common,
            client,
            scopes,
            delegation,
        } => {
            let r = DelegationServiceClient::new(channel(&common.target).await?)
                .check(v1::CheckRequest {
                    client_id: client,
                    scopes,
                    delegation_id: delegation.unwrap_or_default(),
                    consistency: 0,
                })
                .await
                .map_err(call)?
                .into_inner();
            match common.output {
                Output::Json => println!(
                    "{}",
                    json!({"allowed": r.allowed, "granted": r.granted, "reason": r.reason})
                ),
                Output::Table if r.allowed => println!("allowed: {}", list(&r.granted)),
                Output::Table => println!("denied: {}", r.reason),
            }
            if !r.allowed {
                // A refusal is an answer, but scripts branch on it.
                return Err(call(tonic::Status::failed_precondition(r.reason)));
            }
        }
    }
    Ok(())
}

// ---- revoke ----

#[derive(Debug, Subcommand)]
pub enum RevokeCmd {
    /// One token by its jti (remembered until it would have expired).
    Token {
        #[command(flatten)]
        common: Common,
        jti: String,
        /// The token's exp, in ms since the epoch.
        #[arg(long)]
        expires_at_ms: u64,
    },
    /// One X.509-SVID, by its serial number (hex, as `authsec svid x509` prints it).
    Svid {
        #[command(flatten)]
        common: Common,
        serial: String,
        /// The SVID's notAfter, in seconds since the epoch (the revocation is kept until then).
        #[arg(long)]
        expires_at_unix: u64,
    },
    /// Every credential of a subject issued below this commit.
    Subject {
        #[command(flatten)]
        common: Common,
        subject: String,
    },
    /// A delegation and everything derived from it.
    Delegation {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Disable a client and revoke every credential it holds.
    Client {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Ban an agent and revoke every credential it holds.
    Agent {
        #[command(flatten)]
        common: Common,
        spiffe_id: String,
    },
    /// Revocations in force.
    List {
        #[command(flatten)]
        common: Common,
    },
}

pub async fn revoke(c: RevokeCmd) -> anyhow::Result<()> {
    use v1::revoke_request::Target as T;
    let (common, target, what) = match c {
        RevokeCmd::List { common } => {
            let cl = RevocationServiceClient::new(channel(&common.target).await?);
            let items = all_pages(|page_token| {
                let mut cl = cl.clone();
                let req = v1::ListRevocationsRequest {
                    page_size: 1000,
                    page_token,
                    consistency: 0,
                };
                async move {
                    let r = cl.list_revocations(req).await?.into_inner();
                    Ok((r.revocations, r.next_page_token))
                }
            })
            .await?;
            let mut p = Printer::new(common.output, &["TARGET", "INDEX", "EXPIRES"]);
            for x in &items {
                p.add(
                    json!({"target": x.target, "index": x.index, "expires_at_ms": x.expires_at_ms}),
                    vec![x.target.clone(), x.index.to_string(), ms(x.expires_at_ms)],
                );
            }
            p.finish();
            return Ok(());
        }
        RevokeCmd::Token {
            common,
            jti,
            expires_at_ms,
        } => (
            common,
            T::Token(v1::TokenRef {
                jti: jti.clone(),
                expires_at_ms,
            }),
            format!("token {jti}"),
        ),
        RevokeCmd::Svid {
            common,
            serial,
            expires_at_unix,
        } => {
            let serial = serial.trim().to_ascii_lowercase().replace(':', "");
            (
                common,
                T::Token(v1::TokenRef {
                    jti: format!("x509:{serial}"),
                    expires_at_ms: expires_at_unix.saturating_mul(1000),
                }),
                format!("X.509-SVID {serial}"),
            )
        }
        RevokeCmd::Subject { common, subject } => (common, T::Subject(subject.clone()), subject),
        RevokeCmd::Delegation { common, id } => (
            common,
            T::DelegationId(id.clone()),
            format!("delegation {id}"),
        ),
        RevokeCmd::Client { common, id } => {
            (common, T::ClientId(id.clone()), format!("client {id}"))
        }
        RevokeCmd::Agent { common, spiffe_id } => (
            common,
            T::AgentId(spiffe_id.clone()),
            format!("agent {spiffe_id}"),
        ),
    };
    let r = RevocationServiceClient::new(channel(&common.target).await?)
        .revoke(v1::RevokeRequest {
            target: Some(target),
        })
        .await
        .map_err(call)?
        .into_inner();
    receipt(
        common.output,
        &format!("{what} revoked"),
        r.receipt.as_ref(),
    );
    Ok(())
}

// ---- agent ----

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Single-use join tokens for agents.
    #[command(subcommand)]
    Token(AgentTokenCmd),
    /// List the agents that attested.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// One agent.
    Get {
        #[command(flatten)]
        common: Common,
        spiffe_id: String,
    },
    /// Ban an agent: it gets no more SVIDs.
    Ban {
        #[command(flatten)]
        common: Common,
        spiffe_id: String,
    },
    /// Lift an agent's ban.
    Unban {
        #[command(flatten)]
        common: Common,
        spiffe_id: String,
    },
    /// Forget an agent.
    Delete {
        #[command(flatten)]
        common: Common,
        spiffe_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentTokenCmd {
    /// A token an agent attests with once; shown once.
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The agent's name: it attests as spiffe://<td>/authsec/agent/<name>, the parent
        /// its entries name. Default: generated. Reusing an attested agent's name re-attests
        /// it (after an outage longer than its SVID's lifetime).
        #[arg(long)]
        name: Option<String>,
    },
}

const AGENT_HEADERS: &[&str] = &["AGENT", "ATTESTED", "LAST SEEN", "BANNED"];

fn agent_out(a: &v1::Agent) -> (Value, Vec<String>) {
    (
        json!({"spiffe_id": a.spiffe_id, "token_id": a.token_id, "attested_at_ms": a.attested_at_ms,
               "last_seen_ms": a.last_seen_ms, "banned": a.banned}),
        vec![
            a.spiffe_id.clone(),
            ms(a.attested_at_ms),
            ms(a.last_seen_ms),
            a.banned.to_string(),
        ],
    )
}

pub async fn agent(c: AgentCmd) -> anyhow::Result<()> {
    match c {
        AgentCmd::Token(AgentTokenCmd::Create { common, ttl, name }) => {
            let r = AgentServiceClient::new(channel(&common.target).await?)
                .create_join_token(v1::CreateAgentTokenRequest {
                    ttl_seconds: parse_duration_s(&ttl)?,
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(call)?
                .into_inner();
            match common.output {
                Output::Json => println!(
                    "{}",
                    json!({"token": r.token, "agent_id": r.agent_id, "expires_at_ms": r.expires_at_ms,
                           "log_index": r.receipt.map_or(0, |r| r.log_index)})
                ),
                Output::Table => println!(
                    "Agent join token (single use, shown once, expires {}):\n  {}\nThe agent will attest as {}; name it as its entries' parent.",
                    ms(r.expires_at_ms),
                    r.token,
                    r.agent_id
                ),
            }
        }
        AgentCmd::List { common } => {
            let cl = AgentServiceClient::new(channel(&common.target).await?);
            let items = all_pages(|page_token| {
                let mut cl = cl.clone();
                let req = v1::ListAgentsRequest {
                    page_size: 1000,
                    page_token,
                    consistency: 0,
                };
                async move {
                    let r = cl.list_agents(req).await?.into_inner();
                    Ok((r.agents, r.next_page_token))
                }
            })
            .await?;
            let mut p = Printer::new(common.output, AGENT_HEADERS);
            for a in &items {
                let (j, row) = agent_out(a);
                p.add(j, row);
            }
            p.finish();
        }
        AgentCmd::Get { common, spiffe_id } => {
            let a = AgentServiceClient::new(channel(&common.target).await?)
                .get_agent(v1::GetAgentRequest {
                    spiffe_id,
                    consistency: 0,
                })
                .await
                .map_err(call)?
                .into_inner();
            let mut p = Printer::new(common.output, AGENT_HEADERS);
            let (j, row) = agent_out(&a);
            p.add(j, row);
            p.finish();
        }
        AgentCmd::Ban { common, spiffe_id } => set_banned(common, spiffe_id, true).await?,
        AgentCmd::Unban { common, spiffe_id } => set_banned(common, spiffe_id, false).await?,
        AgentCmd::Delete { common, spiffe_id } => {
            let r = AgentServiceClient::new(channel(&common.target).await?)
                .delete_agent(v1::DeleteAgentRequest {
                    spiffe_id: spiffe_id.clone(),
                })
                .await
                .map_err(call)?
                .into_inner();
            receipt(
                common.output,
                &format!("agent {spiffe_id} deleted"),
                r.receipt.as_ref(),
            );
        }
    }
    Ok(())
}

async fn set_banned(common: Common, spiffe_id: String, banned: bool) -> anyhow::Result<()> {
    let r = AgentServiceClient::new(channel(&common.target).await?)
        .set_banned(v1::SetAgentBannedRequest {
            spiffe_id: spiffe_id.clone(),
            banned,
        })
        .await
        .map_err(call)?
        .into_inner();
    let what = if banned { "banned" } else { "unbanned" };
    receipt(
        common.output,
        &format!("agent {spiffe_id} {what}"),
        r.receipt.as_ref(),
    );
    Ok(())
}

// ---- bundle ----

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// The trust bundle: SPIFFE JSON (default), or the X.509 authorities as PEM for
    /// `openssl verify -CAfile`.
    Show {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value_t)]
        format: BundleFormat,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum BundleFormat {
    #[default]
    Spiffe,
    Pem,
}

pub async fn bundle(c: BundleCmd) -> anyhow::Result<()> {
    let BundleCmd::Show { common, format } = c;
    let b = authsec_api::v1::bundle_service_client::BundleServiceClient::new(
        channel(&common.target).await?,
    )
    .get_bundle(v1::GetBundleRequest {})
    .await
    .map_err(call)?
    .into_inner();
    match format {
        BundleFormat::Spiffe => println!("{}", b.spiffe_bundle_json),
        BundleFormat::Pem => print!("{}", crate::pki::pem_of_ders(b.x509_authorities_der)),
    }
    Ok(())
}
