//! The audit log's export side (issue 9): `AuditService` (filtered, resumable export with a
//! follow mode), the one line format the CLI, the sinks and `audit verify` share, the leader's
//! checkpointer, and the per-interval aggregation of failed authentications.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authsec_api::v1;
use authsec_domain::audit::{checkpoint_message, AuthFailure, Checkpoint};
use authsec_domain::command::Command;
use authsec_domain::record::{elision_digest, AuditRecord, ElidedRecord, Hash32, GENESIS_HASH};
use authsec_domain::{Actor, ClientId, Principal, SpiffeId};
use authsec_storage::{Reader, StateView};
use base64::Engine;
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::services::Ctx;

/// Records read per archive scan while exporting.
const PAGE: usize = 512;
const PAGE_BYTES: usize = 4 << 20;
/// Bytes of one filter value.
const FILTER_BYTES_MAX: usize = 512;
/// Type patterns per request.
const TYPES_MAX: usize = 64;

/// One exported record as a line of JSON: the readable fields, then the exact hashed bytes
/// (base64) and the chain hashes around them. `audit verify` renders each line again from its
/// bytes and compares, so a change to any byte of a line is caught, readable part included.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub sequence: u64,
    pub time: String,
    pub time_ms: u64,
    pub kind: &'a str,
    pub subject: &'a str,
    pub actor: String,
    pub via_node: u64,
    pub log_index: u64,
    pub event: &'a authsec_domain::Event,
    pub prev_hash: String,
    pub hash: String,
    pub record_bytes: String,
}

/// The canonical line of a record (no trailing newline).
pub fn render_line(
    record: &AuditRecord,
    prev: &Hash32,
    hash: &Hash32,
    bytes: &[u8],
) -> Result<String, String> {
    serde_json::to_string(&Line {
        sequence: record.sequence,
        time: rfc3339_ms(record.time_ms),
        time_ms: record.time_ms,
        kind: &record.kind,
        subject: &record.subject,
        actor: record.actor.principal.to_string(),
        via_node: record.actor.via_node,
        log_index: record.log_index,
        event: &record.event,
        prev_hash: hex::encode(prev),
        hash: hex::encode(hash),
        record_bytes: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
    .map_err(|e| format!("record {}: {e}", record.sequence))
}

/// The line of an issuance record retention elided: where it sat in the chain and when, no
/// content (no `actor`, no `event`, no `record_bytes`).
#[derive(Debug, Serialize)]
pub struct ElidedLine<'a> {
    pub sequence: u64,
    pub time: String,
    pub time_ms: u64,
    pub kind: &'a str,
    pub subject: String,
    pub via_node: u64,
    pub log_index: u64,
    pub elided: bool,
    pub prev_hash: String,
    pub hash: String,
}

pub const ISSUED: &str = "credential.issued";

/// The canonical line of an elided record (no trailing newline).
pub fn render_elided_line(
    sequence: u64,
    remnant: &ElidedRecord,
    prev: &Hash32,
    hash: &Hash32,
) -> String {
    serde_json::to_string(&ElidedLine {
        sequence,
        time: rfc3339_ms(remnant.time_ms),
        time_ms: remnant.time_ms,
        kind: ISSUED,
        subject: format!("node:{}", remnant.node_id),
        via_node: remnant.node_id,
        log_index: remnant.log_index,
        elided: true,
        prev_hash: hex::encode(prev),
        hash: hex::encode(hash),
    })
    .unwrap_or_default()
}

/// An elided record on the wire: `elided`, no bytes, no JSON.
pub fn elided_to_wire(
    sequence: u64,
    remnant: &ElidedRecord,
    prev: &Hash32,
    hash: &Hash32,
) -> v1::AuditRecord {
    v1::AuditRecord {
        sequence,
        log_index: remnant.log_index,
        time_ms: remnant.time_ms,
        kind: ISSUED.into(),
        subject: format!("node:{}", remnant.node_id),
        actor: String::new(),
        via_node: remnant.node_id,
        json: String::new(),
        record_bytes: Vec::new(),
        hash: hex::encode(hash),
        prev_hash: hex::encode(prev),
        elided: true,
    }
}

/// `2026-11-30T03:18:21.123Z` from milliseconds since the epoch (UTC, proleptic Gregorian).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1000
    )
}

/// A record type pattern: `*` matches any run of characters.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// A validated export request.
#[derive(Debug, Clone)]
pub struct Filter {
    pub from: u64,
    pub to: Option<u64>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub types: Vec<String>,
    pub client: Option<String>,
    pub spiffe: Option<String>,
    pub actor: Option<String>,
    pub follow: bool,
}

impl Filter {
    /// Check a request against the archive's head (`head`) and where retention pruned it
    /// (`pruned`: records up to it are gone, 0 when none are): every bad field is named.
    /// `from_sequence` 0 starts at the archive's first record.
    pub fn parse(r: &v1::ExportRequest, head: u64, pruned: u64) -> Result<Self, Status> {
        if r.from_sequence != 0 && r.from_sequence <= pruned {
            return Err(invalid(
                "from_sequence",
                format!(
                    "records 1 to {pruned} were pruned by retention; the archive starts at {} (or ask from 0, its first record)",
                    pruned + 1
                ),
            ));
        }
        let from = r.from_sequence.max(pruned + 1);
        if from > head + 1 {
            return Err(invalid(
                "from_sequence",
                format!(
                    "{} is past the archive's head ({head}); resume from at most {}",
                    r.from_sequence,
                    head + 1
                ),
            ));
        }
        let to = (r.to_sequence != 0).then_some(r.to_sequence);
        if let Some(t) = to {
            if t < from {
                return Err(invalid(
                    "to_sequence",
                    format!("{t} is before from_sequence {from}"),
                ));
            }
            if t > head && !r.follow {
                return Err(invalid(
                    "to_sequence",
                    format!(
                        "{t} is past the archive's head ({head}); ask with follow to wait for it"
                    ),
                ));
            }
        }
        let since_ms = (r.since_ms != 0).then_some(r.since_ms);
        let until_ms = (r.until_ms != 0).then_some(r.until_ms);
        if let (Some(s), Some(u)) = (since_ms, until_ms) {
            if u <= s {
                return Err(invalid(
                    "until_ms",
                    format!("the time range ends ({u}) before it starts ({s})"),
                ));
            }
        }
        if r.types.len() > TYPES_MAX {
            return Err(invalid("types", format!("at most {TYPES_MAX} patterns")));
        }
        let mut types = Vec::new();
        for t in &r.types {
            let t = t.trim();
            if t.is_empty()
                || t.len() > 64
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._*".contains(&b))
            {
                return Err(invalid(
                    "types",
                    format!("{t:?} is not a record type pattern (lowercase letters, digits, '.', '_' and '*', e.g. delegation.*)"),
                ));
            }
            if !authsec_domain::event::KINDS.iter().any(|k| glob(t, k)) {
                return Err(invalid(
                    "types",
                    format!(
                        "{t:?} matches no record type; the types are: {}",
                        authsec_domain::event::KINDS.join(", ")
                    ),
                ));
            }
            types.push(t.to_owned());
        }
        let text = |field: &str, v: &str| -> Result<Option<String>, Status> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            if v.len() > FILTER_BYTES_MAX {
                return Err(invalid(field, format!("at most {FILTER_BYTES_MAX} bytes")));
            }
            Ok(Some(v.to_owned()))
        };
        let client = text("client_id", &r.client_id)?;
        if let Some(c) = &client {
            ClientId::parse(c).map_err(|e| invalid("client_id", e))?;
        }
        let spiffe = text("spiffe_id", &r.spiffe_id)?;
        if let Some(s) = &spiffe {
            SpiffeId::parse(s).map_err(|e| invalid("spiffe_id", e))?;
        }
        let actor = text("actor", &r.actor)?;
        Ok(Self {
            from,
            to,
            since_ms,
            until_ms,
            types,
            client,
            spiffe,
            actor,
            follow: r.follow,
        })
    }

    fn needs_json(&self) -> bool {
        self.client.is_some() || self.spiffe.is_some()
    }

    /// Whether `r` passes the filters other than the sequence and time bounds. `event_json`
    /// is the event as JSON when [`Filter::needs_json`].
    fn matches(&self, r: &AuditRecord, event_json: Option<&serde_json::Value>) -> bool {
        if !self.types.is_empty() && !self.types.iter().any(|t| glob(t, &r.kind)) {
            return false;
        }
        if let Some(a) = &self.actor {
            let p = r.actor.principal.to_string();
            let ok = match a.strip_suffix('*') {
                Some(prefix) => p.starts_with(prefix),
                None => p == *a,
            };
            if !ok {
                return false;
            }
        }
        if let Some(c) = &self.client {
            let own = r.subject.strip_prefix("client:") == Some(c.as_str());
            if !own && !event_json.is_some_and(|j| mentions(j, c)) {
                return false;
            }
        }
        if let Some(s) = &self.spiffe {
            if r.subject != *s && !event_json.is_some_and(|j| mentions(j, s)) {
                return false;
            }
        }
        true
    }
}

/// Whether any string in `v` is `needle` (a client id, a SPIFFE ID).
fn mentions(v: &serde_json::Value, needle: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == needle,
        serde_json::Value::Array(a) => a.iter().any(|x| mentions(x, needle)),
        serde_json::Value::Object(o) => o.values().any(|x| mentions(x, needle)),
        _ => false,
    }
}

/// The wire form of one archived record.
pub fn to_wire(
    r: AuditRecord,
    prev: &Hash32,
    hash: &Hash32,
    bytes: Vec<u8>,
) -> Result<v1::AuditRecord, String> {
    let json = serde_json::to_string(&r).map_err(|e| e.to_string())?;
    Ok(v1::AuditRecord {
        sequence: r.sequence,
        log_index: r.log_index,
        time_ms: r.time_ms,
        kind: r.kind,
        subject: r.subject,
        actor: r.actor.principal.to_string(),
        via_node: r.actor.via_node,
        json,
        record_bytes: bytes,
        hash: hex::encode(hash),
        prev_hash: hex::encode(prev),
        elided: false,
    })
}

/// Run storage work on a blocking thread; any failure (its own, or the task's) is INTERNAL,
/// logged with its detail.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, Status>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e)),
    }
}

/// The chain hash at `sequence` (the genesis hash at 0; where retention pruned the archive,
/// the hash its checkpoint signed).
pub fn chain_hash(reader: &Reader, sequence: u64) -> Result<Hash32, String> {
    if sequence == 0 {
        return Ok(GENESIS_HASH);
    }
    let pruned = reader.pruned().map_err(|e| e.to_string())?;
    if sequence == pruned.through_sequence {
        return Ok(pruned.hash);
    }
    if sequence < pruned.through_sequence {
        return Err(format!(
            "record {sequence} was pruned by retention: the archive starts at {}",
            pruned.through_sequence + 1
        ));
    }
    match reader.records(sequence, 1, 1) {
        Ok(v) if v.first().is_some_and(|r| r.sequence == sequence) => Ok(v[0].hash),
        Ok(_) => Err(format!("record {sequence} is not in this node's archive")),
        Err(e) => Err(e.to_string()),
    }
}

/// The first sequence at or after `from` whose time is at least `since_ms` (record times never
/// decrease along the chain), by bisection over `[from, head]`.
fn first_since(reader: &Reader, from: u64, head: u64, since_ms: u64) -> Result<u64, String> {
    let (mut lo, mut hi) = (from, head + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let rec = reader
            .records(mid, 1, 1)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| format!("record {mid} is missing"))?;
        let time_ms = match rec.elided() {
            Some(remnant) => remnant.time_ms,
            None => {
                AuditRecord::from_bytes(&rec.bytes)
                    .map_err(|e| format!("record {mid}: {e}"))?
                    .time_ms
            }
        };
        if time_ms < since_ms {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// What one page produced: messages to send, where it ended, and whether the export is done.
struct Page {
    out: Vec<v1::ExportResponse>,
    next: u64,
    prev: Hash32,
    done: bool,
}

fn export_page(
    reader: &Reader,
    f: &Filter,
    next: u64,
    prev: Hash32,
    head: u64,
) -> Result<Page, String> {
    let records = reader
        .records(next, PAGE, PAGE_BYTES)
        .map_err(|e| e.to_string())?;
    let mut page = Page {
        out: Vec::new(),
        next,
        prev,
        done: false,
    };
    for rec in records {
        if rec.sequence != page.next {
            return Err(format!(
                "the archive skips from {} to {}",
                page.next, rec.sequence
            ));
        }
        if f.to.is_some_and(|t| rec.sequence > t) {
            page.done = true;
            break;
        }
        if let Some(remnant) = rec.elided() {
            // An elided issuance record: only time and type can match; a filter on who it
            // was about or by cannot.
            if f.until_ms.is_some_and(|u| remnant.time_ms >= u) {
                page.done = true;
                break;
            }
            let matches = f.since_ms.is_none_or(|s| remnant.time_ms >= s)
                && f.client.is_none()
                && f.spiffe.is_none()
                && f.actor.is_none()
                && (f.types.is_empty() || f.types.iter().any(|t| glob(t, ISSUED)));
            if matches {
                page.out.push(v1::ExportResponse {
                    record: Some(elided_to_wire(
                        rec.sequence,
                        &remnant,
                        &page.prev,
                        &rec.hash,
                    )),
                    scanned_through: rec.sequence,
                    head_sequence: head,
                });
            }
            page.prev = rec.hash;
            page.next = rec.sequence + 1;
            if f.to == Some(rec.sequence) {
                page.done = true;
                break;
            }
            continue;
        }
        let r = AuditRecord::from_bytes(&rec.bytes)
            .map_err(|e| format!("record {} does not decode: {e}", rec.sequence))?;
        if f.until_ms.is_some_and(|u| r.time_ms >= u) {
            page.done = true;
            break;
        }
        let in_time = f.since_ms.is_none_or(|s| r.time_ms >= s);
        let json = if in_time && f.needs_json() {
            Some(serde_json::to_value(&r.event).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let sequence = rec.sequence;
        if in_time && f.matches(&r, json.as_ref()) {
            page.out.push(v1::ExportResponse {
                record: Some(to_wire(r, &page.prev, &rec.hash, rec.bytes)?),
                scanned_through: sequence,
                head_sequence: head,
            });
        }
        page.prev = rec.hash;
        page.next = sequence + 1;
        if f.to == Some(sequence) {
            page.done = true;
            break;
        }
    }
    if page.out.is_empty() && page.next > next {
        // Nothing matched in a stretch: tell the client how far the scan went.
        page.out.push(v1::ExportResponse {
            record: None,
            scanned_through: page.next - 1,
            head_sequence: head,
        });
    }
    Ok(page)
}

#[derive(Debug, Clone)]
pub struct Audit {
    pub ctx: Arc<Ctx>,
    pub view: StateView,
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<v1::ExportResponse, Status>> + Send>>;

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "audit export failed");
    Status::internal("reading the audit archive failed; see the node's log")
}

#[tonic::async_trait]
impl v1::audit_service_server::AuditService for Audit {
    type ExportStream = ExportStream;

    async fn export(
        &self,
        req: Request<v1::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let r = req.into_inner();
        let mut head_rx = self.ctx.head_rx.clone();
        let mut head = head_rx.borrow_and_update().sequence;
        if r.follow && r.from_sequence > head + 1 {
            // A follower resuming here after another node served it may be ahead of this
            // node for a moment: give this node a few seconds to catch up.
            let want = r.from_sequence - 1;
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                head_rx.wait_for(|h| h.sequence >= want),
            )
            .await;
            head = head_rx.borrow_and_update().sequence;
        }
        let reader = self.ctx.reader.clone();
        let pruned = {
            let rd = reader.clone();
            blocking(move || rd.pruned().map_err(|e| e.to_string())).await?
        };
        let f = Filter::parse(&r, head, pruned.through_sequence)?;
        // Where to begin: the first record in the time range, and the hash before it.
        let (start, prev) = {
            let (rd, f2) = (reader.clone(), f.clone());
            blocking(move || -> Result<(u64, Hash32), String> {
                let start = match f2.since_ms {
                    Some(s) if f2.from <= head => first_since(&rd, f2.from, head, s)?,
                    _ => f2.from,
                };
                Ok((start, chain_hash(&rd, start - 1)?))
            })
            .await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<v1::ExportResponse, Status>>(4);
        tokio::spawn(async move {
            let (mut next, mut prev) = (start, prev);
            loop {
                let head = head_rx.borrow_and_update().sequence;
                if next > head {
                    if !f.follow {
                        return;
                    }
                    // A time range that ended (with a few seconds for leader clocks ahead of
                    // this node's) gets no more records: the export is complete.
                    if f.until_ms
                        .is_some_and(|u| crate::issuer::now_ms() >= u.saturating_add(5_000))
                    {
                        return;
                    }
                    // Wait for the head to pass `next`, or the client to go away.
                    tokio::select! {
                        changed = head_rx.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                let (rd, f2) = (reader.clone(), f.clone());
                let page = match blocking(move || export_page(&rd, &f2, next, prev, head)).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if page.next == next && !page.done {
                    // The head is past `next` yet nothing was read: a snapshot installation
                    // is replacing the archive. Give it a moment instead of spinning.
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
                for m in page.out {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                if page.done {
                    return;
                }
                (next, prev) = (page.next, page.prev);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn head(
        &self,
        _req: Request<v1::AuditHeadRequest>,
    ) -> Result<Response<v1::AuditHeadResponse>, Status> {
        let head = *self.ctx.head_rx.borrow();
        let (cp, pruned, sinks) = {
            let s = self.view.read();
            let sinks = s
                .sink_acks
                .by_node
                .iter()
                .filter(|(n, _)| s.nodes.contains_key(n))
                .flat_map(|(n, v)| {
                    v.iter().map(|a| v1::SinkProgress {
                        node_id: *n,
                        name: a.name.clone(),
                        acked_sequence: a.acked_through,
                    })
                })
                .collect();
            (s.audit_meta, s.audit_pruned, sinks)
        };
        Ok(Response::new(v1::AuditHeadResponse {
            sinks,
            first_sequence: pruned.through_sequence + 1,
            head_sequence: head.sequence,
            head_hash: hex::encode(head.hash),
            checkpoint_sequence: cp.checkpoint_sequence,
            checkpoint_hash: hex::encode(cp.checkpoint_hash),
            trust_domain: self.ctx.sec.td.to_string(),
        }))
    }
}

fn node_actor(ctx: &Ctx) -> Actor {
    Actor {
        principal: Principal::Named(
            authsec_raft::tls::node_spiffe_id(&ctx.sec.td, ctx.node_id).to_string(),
        ),
        via_node: ctx.node_id,
    }
}

/// On the leader: sign a checkpoint of the chain once `every` records follow the last one, or
/// `interval` after it if any record did. Runs on every node; acts only while leading.
pub async fn checkpointer(
    ctx: Arc<Ctx>,
    view: StateView,
    raft: authsec_raft::Raft,
    every: u64,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut head_rx = ctx.head_rx.clone();
    let tick = (interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            r = head_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if raft.metrics().borrow().current_leader != Some(ctx.node_id) {
            continue;
        }
        let Some(key) = ctx.issuer.active_audit() else {
            continue;
        };
        let head = *head_rx.borrow_and_update();
        let cp = view.read().audit_meta;
        // The record right after a checkpoint is that checkpoint's own: nothing new.
        if head.sequence <= cp.checkpoint_sequence + 1 {
            continue;
        }
        let since = crate::issuer::now_ms().saturating_sub(cp.checkpoint_time_ms);
        if head.sequence - cp.checkpoint_sequence < every && since < interval.as_millis() as u64 {
            continue;
        }
        let message = checkpoint_message(ctx.sec.td.as_str(), head.sequence, &head.hash);
        let checkpoint = Checkpoint {
            node_id: ctx.node_id,
            kid: key.kid.clone(),
            sequence: head.sequence,
            head_hash: head.hash,
            signature: key.sign(&message).to_vec(),
        };
        match ctx
            .write(node_actor(&ctx), Command::RecordCheckpoint(checkpoint))
            .await
        {
            Ok(_) => {
                failures = 0;
                tracing::debug!(sequence = head.sequence, kid = %key.kid, "audit checkpoint signed");
            }
            Err(e) => {
                failures += 1;
                // Another checkpoint got there first, or leadership moved: try again later.
                tracing::debug!(error = %e.message(), failures, "audit checkpoint not recorded");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20)))).await;
            }
        }
    }
}

/// The caller's address: from the TLS connection, else from the plaintext socket.
/// Records a retention pass looks back through for a checkpoint before it gives up.
const PRUNE_SCAN_MAX: usize = 200_000;

/// What retention would prune now: `(through_sequence, head_hash, checkpoint_record)`, the
/// newest checkpoint whose covered sequence is at most `upper` and past `pruned`. A
/// checkpoint's record follows the sequence it covers by the records committed while it was
/// signed, so the search starts a little past `upper` and walks back.
fn prune_point(
    reader: &Reader,
    upper: u64,
    pruned: u64,
    head: u64,
) -> Result<Option<(u64, Hash32, u64)>, String> {
    let mut at = head.min(upper.saturating_add(10_000));
    let mut scanned = 0usize;
    while at > pruned && scanned < PRUNE_SCAN_MAX {
        let page = reader.records_back(at, PAGE).map_err(|e| e.to_string())?;
        if page.is_empty() {
            break;
        }
        for rec in &page {
            scanned += 1;
            if rec.sequence <= pruned {
                return Ok(None);
            }
            if rec.elided().is_some() {
                continue;
            }
            let r = AuditRecord::from_bytes(&rec.bytes)
                .map_err(|e| format!("record {} does not decode: {e}", rec.sequence))?;
            if let authsec_domain::Event::CheckpointRecorded { checkpoint: cp } = r.event {
                if cp.sequence <= upper && cp.sequence > pruned {
                    return Ok(Some((cp.sequence, cp.head_hash, rec.sequence)));
                }
            }
        }
        at = page.last().map_or(0, |r| r.sequence.saturating_sub(1));
    }
    Ok(None)
}

/// `[audit.retention]`: every `check_interval_s`, prune the records older than `max_age_s`
/// that every sink in `after_sinks` has acknowledged, up to the newest signed checkpoint they
/// reach. Runs on every node that configures it; the prune is a command like any other, so
/// it reaches every node's archive at the same log index.
pub async fn pruner(
    ctx: Arc<Ctx>,
    view: StateView,
    retention: crate::config::RetentionSection,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_age_ms = retention.max_age_s.saturating_mul(1000);
    let tick = Duration::from_secs(retention.check_interval_s);
    // The other node's sink that last held retention back (logged once per change).
    let mut held_by: Option<(u64, String, u64)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // Every required sink must have started and acknowledged: the least of them bounds.
        let acked = retention
            .after_sinks
            .iter()
            .map(|n| ctx.sink_stats.acked(n))
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().min());
        let Some(own) = acked else { continue };
        let (pruned, signed, cluster) = {
            let s = view.read();
            (
                s.audit_pruned.through_sequence,
                s.audit_meta.checkpoint_sequence,
                s.sink_acks
                    .bound(&s.nodes)
                    .map(|b| (b.node_id, b.name.to_owned(), b.acked_through)),
            )
        };
        // Every member's sinks, as they last reported (the rules refuse a prune past them):
        // this node's own sinks are only one of them.
        let acked = match &cluster {
            Some((node, name, at)) if *at < own => {
                if held_by.as_ref() != Some(&(*node, name.clone(), *at)) && *at <= pruned {
                    tracing::info!(
                        holder_node = node,
                        sink = %name,
                        acked = at,
                        pruned,
                        "retention waits for an audit sink that has not acknowledged older records"
                    );
                }
                held_by = Some((*node, name.clone(), *at));
                *at
            }
            _ => own,
        };
        let head = ctx.head_rx.borrow().sequence;
        let cutoff = crate::issuer::now_ms().saturating_sub(max_age_ms);
        let rd = ctx.reader.clone();
        let found = blocking(move || -> Result<_, String> {
            if pruned >= head {
                return Ok(None);
            }
            // The first record young enough to keep: everything before it is older.
            let young = first_since(&rd, pruned + 1, head, cutoff)?;
            let upper = young.saturating_sub(1).min(acked).min(signed);
            if upper <= pruned {
                return Ok(None);
            }
            prune_point(&rd, upper, pruned, head)
        })
        .await;
        let (through, hash, record) = match found {
            Ok(Some(p)) => p,
            Ok(None) => {
                elide(&ctx, &view, &retention, acked).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "retention could not look for records to prune");
                continue;
            }
        };
        let prune = authsec_domain::audit::Prune {
            node_id: ctx.node_id,
            through_sequence: through,
            head_hash: hash,
            checkpoint_record: record,
            older_than_ms: cutoff,
            acked_by: retention.after_sinks.clone(),
        };
        match ctx
            .write(node_actor(&ctx), Command::PruneAudit(prune))
            .await
        {
            Ok(_) => tracing::info!(
                through,
                records = through - pruned,
                checkpoint_record = record,
                "audit records pruned by retention"
            ),
            // Another node pruned first, or leadership moved: look again next time.
            Err(e) => tracing::debug!(error = %e.message(), "audit prune not recorded"),
        }
        elide(&ctx, &view, &retention, acked).await;
    }
}

/// How often a node looks whether its sinks' progress is worth reporting.
const SINK_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Records whose delivery alone is not worth a sink progress report: the reports
/// themselves, the checkpoints that sign them, and retention's own prunes and elisions.
/// Reporting their delivery would add a record, which a checkpoint signs, which the sinks
/// deliver, which retention prunes once old enough: for ever, on an idle cluster.
const NOT_NEWS: &[&str] = &[
    "audit.sinks_acknowledged",
    "audit.checkpoint",
    "audit.pruned",
    "audit.issuances_elided",
];

/// Tell the cluster how far this node's audit sinks have delivered (`RecordSinkProgress`),
/// so that retention, whichever node proposes it, never prunes or elides a record one of them
/// has not acknowledged (the rules refuse it). Runs on every node, with or without sinks: a
/// node whose sinks were all removed from its configuration reports none, and stops holding
/// retention back.
///
/// A report is due when the set of sinks changed, when a sink's point moved back (its cursor
/// was reset to deliver again), or when a sink acknowledged a record other than retention's
/// and checkpoints' own ([`NOT_NEWS`]). A sink bounds retention from its node's first report on.
pub async fn sink_reporter(
    ctx: Arc<Ctx>,
    view: StateView,
    sinks: Vec<String>,
    data_dir: std::path::PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    use authsec_domain::audit::SinkAck;
    let mut wait = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        wait = SINK_REPORT_INTERVAL;
        let mut now: Vec<SinkAck> = sinks
            .iter()
            .map(|name| SinkAck {
                name: name.clone(),
                // A sink that has not started holds at its cursor, as it will resume there.
                acked_through: ctx
                    .sink_stats
                    .acked(name)
                    .or_else(|| crate::sink::read_cursor(&data_dir, name).ok())
                    .unwrap_or(0),
            })
            .collect();
        now.sort_by(|a, b| a.name.cmp(&b.name));
        let mut last = view
            .read()
            .sink_acks
            .by_node
            .get(&ctx.node_id)
            .cloned()
            .unwrap_or_default();
        last.sort_by(|a, b| a.name.cmp(&b.name));
        let due = match progress_since(&last, &now) {
            Progress::Same => false,
            Progress::Changed => true,
            Progress::Advanced { from, through } => {
                let rd = ctx.reader.clone();
                match blocking(move || any_news(&rd, from, through)).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "could not read what the audit sinks acknowledged");
                        continue;
                    }
                }
            }
        };
        if !due {
            continue;
        }
        let cmd = Command::RecordSinkProgress {
            node_id: ctx.node_id,
            sinks: now.clone(),
        };
        match ctx.write(node_actor(&ctx), cmd).await {
            Ok(_) => tracing::debug!(sinks = ?now, "audit sink progress reported"),
            // Not a member yet, no leader, a refused write: try again soon.
            Err(e) => {
                tracing::debug!(error = %e.message(), "audit sink progress not reported");
                wait = Duration::from_secs(1);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Same,
    /// Other sinks, or a sink's point moved back: report at once.
    Changed,
    /// Only forward: report if a record in `from..=through` is not itself a report.
    Advanced {
        from: u64,
        through: u64,
    },
}

/// How `now` differs from the `last` report (both sorted by name).
fn progress_since(
    last: &[authsec_domain::audit::SinkAck],
    now: &[authsec_domain::audit::SinkAck],
) -> Progress {
    if last.len() != now.len() || last.iter().zip(now).any(|(l, n)| l.name != n.name) {
        return Progress::Changed;
    }
    let mut range: Option<(u64, u64)> = None;
    for (l, n) in last.iter().zip(now) {
        if n.acked_through < l.acked_through {
            return Progress::Changed;
        }
        if n.acked_through > l.acked_through {
            let (from, through) = range.unwrap_or((u64::MAX, 0));
            range = Some((from.min(l.acked_through + 1), through.max(n.acked_through)));
        }
    }
    match range {
        None => Progress::Same,
        Some((from, through)) => Progress::Advanced { from, through },
    }
}

/// Whether `from..=through` holds a record other than [`NOT_NEWS`] (or a record retention
/// already removed).
fn any_news(reader: &Reader, from: u64, through: u64) -> Result<bool, String> {
    let mut next = from;
    while next <= through {
        let page = reader
            .records(next, PAGE, PAGE_BYTES)
            .map_err(|e| e.to_string())?;
        let Some(first) = page.first() else {
            return Ok(false);
        };
        if first.sequence != next {
            return Ok(true); // pruned: moved past records that were there
        }
        for rec in page {
            if rec.sequence > through {
                return Ok(false);
            }
            next = rec.sequence + 1;
            if rec.elided().is_some() {
                return Ok(true);
            }
            let r = AuditRecord::from_bytes(&rec.bytes)
                .map_err(|e| format!("record {} does not decode: {e}", rec.sequence))?;
            if !NOT_NEWS.contains(&r.kind.as_str()) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Elisions proposed per retention pass at most (each covers up to `ELIDE_SPAN_MAX` records).
const ELISIONS_PER_PASS: usize = 16;

/// Retention's shorter bound for issuance records (`issuance_max_age_s`): replace the
/// `credential.issued` records older than it, acknowledged by the sinks (`acked`) and behind
/// the last checkpoint, by remnants, a bounded range per command.
async fn elide(
    ctx: &Arc<Ctx>,
    view: &StateView,
    retention: &crate::config::RetentionSection,
    acked: u64,
) {
    use authsec_domain::audit::ELIDE_SPAN_MAX;
    let Some(age_s) = retention.issuance_max_age_s else {
        return;
    };
    for _ in 0..ELISIONS_PER_PASS {
        let (done, signed) = {
            let s = view.read();
            (
                s.audit_pruned
                    .through_sequence
                    .max(s.audit_pruned.issuance_elided_through),
                s.audit_meta.checkpoint_sequence,
            )
        };
        let head = ctx.head_rx.borrow().sequence;
        let cutoff = crate::issuer::now_ms().saturating_sub(age_s.saturating_mul(1000));
        let rd = ctx.reader.clone();
        let found = blocking(move || -> Result<_, String> {
            let from = done + 1;
            if from > head {
                return Ok(None);
            }
            let young = first_since(&rd, from, head, cutoff)?;
            let upper = young.saturating_sub(1).min(acked).min(signed);
            if upper < from {
                return Ok(None);
            }
            let cap = upper.min(from + ELIDE_SPAN_MAX - 1);
            // The issuance records up to `cap`, and the sequences checkpoints signed in
            // `from..=cap` (a checkpoint's record follows what it signs: look a little past).
            let look_to = cap.saturating_add(CHECKPOINT_LOOKAHEAD).min(head);
            let mut items = Vec::new();
            let mut signed_at = std::collections::BTreeSet::new();
            let mut next = from;
            'scan: while next <= look_to {
                let page = rd
                    .records(next, PAGE, PAGE_BYTES)
                    .map_err(|e| e.to_string())?;
                if page.is_empty() {
                    break;
                }
                for rec in page {
                    if rec.sequence > look_to {
                        break 'scan;
                    }
                    next = rec.sequence + 1;
                    if rec.elided().is_some() {
                        continue;
                    }
                    let r = AuditRecord::from_bytes(&rec.bytes)
                        .map_err(|e| format!("record {} does not decode: {e}", rec.sequence))?;
                    if r.kind == ISSUED && rec.sequence <= cap {
                        items.push((rec.sequence, rec.hash));
                    }
                    if let authsec_domain::Event::CheckpointRecorded { checkpoint } = &r.event {
                        if (from..=cap).contains(&checkpoint.sequence) {
                            signed_at.insert(checkpoint.sequence);
                        }
                    }
                }
            }
            Ok(Some(split_at_checkpoints(from, cap, &signed_at, &items)))
        })
        .await;
        let (from, through, parts) = match found {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e.message(), "retention could not look for issuance records to elide");
                return;
            }
        };
        let count: u64 = parts.iter().map(|p| p.count).sum();
        let n_parts = parts.len();
        let elision = authsec_domain::audit::SplitElision {
            node_id: ctx.node_id,
            from_sequence: from,
            through_sequence: through,
            parts,
            older_than_ms: cutoff,
            acked_by: retention.after_sinks.clone(),
        };
        match ctx
            .write(node_actor(ctx), Command::ElideIssuanceParts(elision))
            .await
        {
            Ok(_) => tracing::info!(
                from,
                through,
                count,
                parts = n_parts,
                "issuance records elided by retention"
            ),
            Err(e) => {
                tracing::debug!(error = %e.message(), "issuance elision not recorded");
                return;
            }
        }
    }
}

/// Records past an elision's end searched for the checkpoints that signed inside it.
const CHECKPOINT_LOOKAHEAD: u64 = 4096;

/// An elision of `from..=cap` in parts that end where checkpoints signed (`signed_at`, all
/// within the range), so that a prune, which ends at a checkpoint, never cuts a part: the
/// elision ends at the last of them (or at `cap` if none signed inside), each part counts
/// and digests its issuance records (`items`, in order). At most `ELIDE_PARTS_MAX` parts:
/// beyond that, every k-th checkpoint ends one.
fn split_at_checkpoints(
    from: u64,
    cap: u64,
    signed_at: &std::collections::BTreeSet<u64>,
    items: &[(u64, Hash32)],
) -> (u64, u64, Vec<authsec_domain::audit::ElisionPart>) {
    use authsec_domain::audit::{ElisionPart, ELIDE_PARTS_MAX};
    let mut ends: Vec<u64> = signed_at
        .iter()
        .copied()
        .filter(|s| (from..=cap).contains(s))
        .collect();
    let through = ends.last().copied().unwrap_or(cap);
    if ends.len() > ELIDE_PARTS_MAX {
        let k = ends.len().div_ceil(ELIDE_PARTS_MAX - 1);
        let last = through;
        ends = ends.into_iter().step_by(k).filter(|e| *e < last).collect();
        ends.push(last);
    }
    if ends.is_empty() {
        ends.push(through);
    }
    let mut parts = Vec::with_capacity(ends.len());
    let mut rest = items.iter().filter(|(s, _)| *s <= through).peekable();
    for end in ends {
        let mut mine = Vec::new();
        while let Some(i) = rest.next_if(|(s, _)| *s <= end) {
            mine.push(i);
        }
        let (count, digest) = elision_digest(mine.into_iter().map(|(s, h)| (*s, h)));
        parts.push(ElisionPart {
            through_sequence: end,
            count,
            digest,
        });
    }
    (from, through, parts)
}

pub fn source_of<T>(req: &Request<T>) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<authsec_raft::tls::PeerInfo>()
        .and_then(|p| p.remote)
        .or_else(|| req.remote_addr())
        .map(|a| a.ip())
}

/// Distinct (client, source, endpoint) keys counted per interval; beyond it, attempts are
/// counted under one overflow key, so a flood of made-up client ids cannot grow memory or the
/// log.
const FAILURE_KEYS_MAX: usize = 10_000;

/// Failed authentications of the current interval, counted per client, source and endpoint.
#[derive(Debug, Default)]
pub struct FailureLog {
    window: Mutex<HashMap<(String, String, &'static str), AuthFailure>>,
}

impl FailureLog {
    /// Count one failure. `client` is what the caller claimed, if anything.
    pub fn record(
        &self,
        client: Option<&str>,
        source: std::net::IpAddr,
        endpoint: &'static str,
        reason: &str,
    ) {
        let now = crate::issuer::now_ms();
        let clip = |s: &str| -> String {
            let max = authsec_domain::audit::AUTH_FAILURE_TEXT_BYTES_MAX;
            if s.len() <= max {
                return s.to_owned();
            }
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        };
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (clip(client.unwrap_or("-")), source.to_string(), endpoint);
        if !w.contains_key(&key) && w.len() >= FAILURE_KEYS_MAX {
            key = ("*".into(), "*".into(), endpoint);
        }
        let e = w.entry(key.clone()).or_insert_with(|| AuthFailure {
            client_id: key.0.clone(),
            source: key.1.clone(),
            endpoint: endpoint.to_owned(),
            reason: String::new(),
            count: 0,
            first_ms: now,
            last_ms: now,
        });
        e.count += 1;
        e.last_ms = now;
        e.reason = clip(reason);
    }

    /// Count a TLS handshake refused for the client's certificate on `listener`, under
    /// endpoint `mtls`, with the SPIFFE ID the certificate claimed as the client.
    pub fn record_refused_tls(&self, listener: &str, r: &authsec_raft::tls::Refused) {
        self.record(
            r.claimed.as_deref(),
            r.remote.ip(),
            "mtls",
            &format!("{listener}: {}", r.reason),
        );
    }

    fn take(&self) -> Vec<AuthFailure> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<AuthFailure> = std::mem::take(&mut *w).into_values().collect();
        v.sort_by(|a, b| (&a.client_id, &a.source).cmp(&(&b.client_id, &b.source)));
        v
    }
}

/// Record each interval's failures in the log, in commands of at most 1,000 aggregates.
pub async fn failure_flusher(
    ctx: Arc<Ctx>,
    log: Arc<FailureLog>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        let all = log.take();
        for chunk in all.chunks(authsec_domain::audit::AUTH_FAILURES_PER_COMMAND_MAX) {
            let cmd = Command::RecordAuthFailures {
                node_id: ctx.node_id,
                failures: chunk.to_vec(),
            };
            if let Err(e) = ctx.write(node_actor(&ctx), cmd).await {
                tracing::warn!(error = %e.message(), aggregates = chunk.len(), "recording failed authentications failed");
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The export line is a format: `audit verify` compares lines byte for byte with its own
    /// rendering, so archived exports and sink files verify only while this stays the same.
    #[test]
    fn the_line_format_is_pinned() {
        let record = AuditRecord {
            sequence: 7,
            log_index: 5,
            time_ms: 1_796_008_701_123,
            actor: Actor {
                principal: Principal::Named("spiffe://example.org/authsec/admin/root".into()),
                via_node: 2,
            },
            kind: "role.deleted".into(),
            subject: "role:readers".into(),
            event: authsec_domain::Event::RoleDeleted {
                name: authsec_domain::RoleName::parse("readers").expect("role name"),
            },
        };
        let bytes = record.to_bytes();
        let line = render_line(&record, &[1u8; 32], &[2u8; 32], &bytes).expect("renders");
        let want = format!(
            concat!(
                r#"{{"sequence":7,"time":"2026-11-30T03:18:21.123Z","time_ms":1796008701123,"#,
                r#""kind":"role.deleted","subject":"role:readers","#,
                r#""actor":"spiffe://example.org/authsec/admin/root","via_node":2,"log_index":5,"#,
                r#""event":{{"RoleDeleted":{{"name":"readers"}}}},"prev_hash":"{}","hash":"{}","#,
                r#""record_bytes":"{}"}}"#
            ),
            hex::encode([1u8; 32]),
            hex::encode([2u8; 32]),
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
        assert_eq!(line, want);
    }

    #[test]
    fn sink_progress_is_reported_when_it_changed_or_moved_forward() {
        use authsec_domain::audit::SinkAck;
        let a = |name: &str, at: u64| SinkAck {
            name: name.into(),
            acked_through: at,
        };
        assert_eq!(progress_since(&[], &[]), Progress::Same);
        assert_eq!(progress_since(&[a("f", 3)], &[a("f", 3)]), Progress::Same);
        // A sink added or removed, renamed, or moved back: at once.
        assert_eq!(progress_since(&[], &[a("f", 0)]), Progress::Changed);
        assert_eq!(progress_since(&[a("f", 3)], &[]), Progress::Changed);
        assert_eq!(
            progress_since(&[a("f", 3)], &[a("g", 3)]),
            Progress::Changed
        );
        assert_eq!(
            progress_since(&[a("f", 3), a("g", 9)], &[a("f", 5), a("g", 8)]),
            Progress::Changed
        );
        // Forward: the records between the least reported point and the furthest new one.
        assert_eq!(
            progress_since(&[a("f", 3), a("g", 9)], &[a("f", 5), a("g", 12)]),
            Progress::Advanced {
                from: 4,
                through: 12
            }
        );
        assert_eq!(
            progress_since(&[a("f", 3), a("g", 9)], &[a("f", 3), a("g", 12)]),
            Progress::Advanced {
                from: 10,
                through: 12
            }
        );
    }

    #[test]
    fn elisions_are_split_where_checkpoints_signed() {
        use authsec_domain::audit::ELIDE_PARTS_MAX;
        let h = |s: u64| [s as u8; 32];
        let items: Vec<(u64, Hash32)> = [3, 10, 11, 40, 55, 70]
            .iter()
            .map(|s| (*s, h(*s)))
            .collect();
        let signed: std::collections::BTreeSet<u64> = [10, 50].into_iter().collect();
        let (from, through, parts) = split_at_checkpoints(1, 60, &signed, &items);
        // Ends at the last checkpoint inside, not at the cap; 55 waits for the next elision.
        assert_eq!((from, through), (1, 50));
        let got: Vec<(u64, u64)> = parts
            .iter()
            .map(|p| (p.through_sequence, p.count))
            .collect();
        assert_eq!(got, [(10, 2), (50, 2)]);
        assert_eq!(
            parts[1].digest,
            elision_digest([(11, &h(11)), (40, &h(40))]).1
        );
        // No checkpoint inside: one part, up to the cap.
        let (_, through, parts) = split_at_checkpoints(1, 60, &Default::default(), &items);
        assert_eq!((through, parts.len(), parts[0].count), (60, 1, 5));
        // More checkpoints than parts allowed: every k-th, and the last.
        let many: std::collections::BTreeSet<u64> = (1..=3000).collect();
        let (_, through, parts) = split_at_checkpoints(1, 3000, &many, &[]);
        assert_eq!(through, 3000);
        assert!(parts.len() <= ELIDE_PARTS_MAX, "{}", parts.len());
        assert_eq!(parts.last().map(|p| p.through_sequence), Some(3000));
        assert!(parts
            .windows(2)
            .all(|w| w[0].through_sequence < w[1].through_sequence));
    }

    #[test]
    fn globs() {
        assert!(glob("delegation.*", "delegation.created"));
        assert!(!glob("delegation.*", "client.created"));
        assert!(glob("*", "anything.at_all"));
        assert!(glob("*.created", "client.created"));
        assert!(glob("credential.issued", "credential.issued"));
        assert!(!glob("credential.issue", "credential.issued"));
        assert!(glob("c*l.*", "credential.issued"));
        assert!(!glob("c*d.*", "credential.issued"));
    }

    #[test]
    fn times_render_as_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_796_008_701_123), "2026-11-30T03:18:21.123Z");
    }

    fn req() -> v1::ExportRequest {
        v1::ExportRequest::default()
    }

    #[test]
    fn bad_requests_name_their_field() {
        let bad = |r: v1::ExportRequest, field: &str| {
            let e = Filter::parse(&r, 100, 0).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        };
        bad(
            v1::ExportRequest {
                from_sequence: 102,
                ..req()
            },
            "from_sequence",
        );
        bad(
            v1::ExportRequest {
                from_sequence: 50,
                to_sequence: 10,
                ..req()
            },
            "to_sequence",
        );
        bad(
            v1::ExportRequest {
                to_sequence: 500,
                ..req()
            },
            "to_sequence",
        );
        bad(
            v1::ExportRequest {
                since_ms: 2000,
                until_ms: 1000,
                ..req()
            },
            "until_ms",
        );
        bad(
            v1::ExportRequest {
                types: vec!["nosuch.*".into()],
                ..req()
            },
            "types",
        );
        bad(
            v1::ExportRequest {
                types: vec!["Bad Type".into()],
                ..req()
            },
            "types",
        );
        bad(
            v1::ExportRequest {
                client_id: "not a client id!".into(),
                ..req()
            },
            "client_id",
        );
        bad(
            v1::ExportRequest {
                spiffe_id: "http://x".into(),
                ..req()
            },
            "spiffe_id",
        );
        // The next sequence is a valid place to resume (and follow from).
        Filter::parse(
            &v1::ExportRequest {
                from_sequence: 101,
                follow: true,
                ..req()
            },
            100,
            0,
        )
        .expect("resume at head + 1");
        Filter::parse(
            &v1::ExportRequest {
                types: vec!["delegation.*".into(), "credential.issued".into()],
                ..req()
            },
            100,
            0,
        )
        .expect("known types");
        // Behind a prune: from 0 starts at the first record kept; a pruned sequence is
        // refused with where the archive starts.
        let f = Filter::parse(&req(), 100, 40).expect("from the start");
        assert_eq!(f.from, 41);
        let e = Filter::parse(
            &v1::ExportRequest {
                from_sequence: 40,
                ..req()
            },
            100,
            40,
        )
        .expect_err("pruned");
        assert!(
            e.message()
                .contains("pruned by retention; the archive starts at 41"),
            "{}",
            e.message()
        );
        assert_eq!(
            Filter::parse(
                &v1::ExportRequest {
                    from_sequence: 41,
                    ..req()
                },
                100,
                40
            )
            .expect("the first kept")
            .from,
            41
        );
    }
}
