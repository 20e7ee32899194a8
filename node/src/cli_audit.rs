//! `authsec audit`: export (JSON lines or CSV), tail, head, and the offline `verify`.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use authsec_api::v1;
use authsec_api::v1::audit_service_client::AuditServiceClient;
use authsec_domain::audit::{checkpoint_message, Checkpoint};
use authsec_domain::keys::KeyKind;
use authsec_domain::record::{
    chain_next, elision_digest, AuditRecord, ElidedRecord, Hash32, GENESIS_HASH,
};
use authsec_domain::Event;
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};

use crate::cli::Target;
use crate::cli_identity::CallError;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Write records to stdout (JSON lines by default), oldest first.
    Export(ExportArgs),
    /// The newest records, then new ones as they are committed (Ctrl-C to stop).
    Tail {
        #[command(flatten)]
        target: Target,
        /// How many of the newest records to show first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// Record types, e.g. 'delegation.*' (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// JSON lines (the export format) instead of one readable line per record.
        #[arg(long)]
        json: bool,
    },
    /// The chain's head and last signed checkpoint on a node.
    Head {
        #[command(flatten)]
        target: Target,
    },
    /// Check an export offline: the hash chain, every line against its hashed bytes, and
    /// every checkpoint's signature against the trust bundle. Names the first broken record.
    Verify {
        /// A JSON-lines export (`authsec audit export`); `-` reads stdin.
        file: PathBuf,
        /// The trust bundle: PEM root certificates, or a SPIFFE bundle (JSON). Default: the
        /// admin directory's `ca.crt`.
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
        /// Also demand that the chain ends at this hash (from `authsec audit head`).
        #[arg(long)]
        expect_head: Option<String>,
        /// Pass even if no signed checkpoint covers the records (a fresh cluster).
        #[arg(long)]
        allow_unsigned: bool,
        /// A filtered export (--type, --client, ...): accept gaps between sequences, checking
        /// each record's own link. Without it a missing record fails.
        #[arg(long)]
        partial: bool,
        /// Audit keys from another export (for a FILE that starts after the keys' publication:
        /// `authsec audit export --type node_key.published > keys.jsonl`). Each key's
        /// certificate is checked against the bundle.
        #[arg(long)]
        keys: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Jsonl,
    Csv,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    target: Target,
    /// Records at or after this time: a duration back from now (30m, 2h, 7d) or an RFC 3339
    /// time (2026-11-30T00:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Records before this time (same forms).
    #[arg(long)]
    until: Option<String>,
    /// The first sequence (resume after the last one you have); 0, the default, is the
    /// archive's first record (1, or the first one retention kept).
    #[arg(long, default_value_t = 0)]
    from_seq: u64,
    /// The last sequence, inclusive.
    #[arg(long)]
    to_seq: Option<u64>,
    /// Record types, with '*' wildcards: 'delegation.*', credential.issued (repeatable).
    #[arg(long = "type")]
    types: Vec<String>,
    /// Records about this client.
    #[arg(long)]
    client: Option<String>,
    /// Records about this SPIFFE ID.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Records by this actor (a trailing '*' matches a prefix).
    #[arg(long)]
    actor: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Keep going: write new records as they are committed (reconnects, never repeats one).
    #[arg(long)]
    follow: bool,
}

fn call(s: tonic::Status) -> anyhow::Error {
    CallError(s).into()
}

/// Milliseconds since the epoch of `30m` / `2h` / `7d` ago, an RFC 3339 time, or plain ms.
pub fn parse_time(s: &str, now_ms: u64) -> anyhow::Result<u64> {
    let t = s.trim();
    if let Some((i, unit)) = t.char_indices().last() {
        let mul = match unit {
            's' => Some(1_000u64),
            'm' => Some(60_000),
            'h' => Some(3_600_000),
            'd' => Some(86_400_000),
            _ => None,
        };
        if let (Some(mul), Ok(n)) = (mul, t[..i].parse::<u64>()) {
            let back = n
                .checked_mul(mul)
                .with_context(|| format!("{t:?} is too long ago"))?;
            return Ok(now_ms.saturating_sub(back).max(1));
        }
    }
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(ms);
    }
    parse_rfc3339(t).with_context(|| {
        format!("{t:?} is not a time: use a duration back from now (30m, 2h, 7d) or RFC 3339 (2026-11-30T00:00:00Z)")
    })
}

fn parse_rfc3339(t: &str) -> anyhow::Result<u64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> anyhow::Result<i64> {
        let s = t.get(r).context("too short")?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            bail!("not a number: {s:?}");
        }
        Ok(s.parse()?)
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        bail!("not RFC 3339");
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        bail!("not RFC 3339");
    }
    if h > 23 || mi > 59 || s > 60 {
        bail!("time of day out of range");
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = &t[start..i];
        if digits.is_empty() {
            bail!("empty fraction");
        }
        let ms3: String = digits.chars().chain("000".chars()).take(3).collect();
        frac_ms = ms3.parse()?;
    }
    let offset_s = match &t[i..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => bail!("needs a zone (Z or +hh:mm)"),
    };
    // days_from_civil (Howard Hinnant).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_s;
    if secs < 0 {
        bail!("before 1970");
    }
    Ok(secs as u64 * 1000 + frac_ms as u64)
}

async fn client(
    t: &Target,
) -> anyhow::Result<(Vec<String>, AuditServiceClient<tonic::transport::Channel>)> {
    let eps = crate::cli::endpoints(t)?;
    let (_, ch) = crate::cli::connect(&eps).await?;
    Ok((
        eps,
        AuditServiceClient::new(ch).max_decoding_message_size(64 << 20),
    ))
}

/// A record's JSON line, exactly as `authsec audit export` writes it (what `verify` checks).
pub fn jsonl_line(r: &v1::AuditRecord) -> anyhow::Result<String> {
    render(Format::Jsonl, r)
}

/// One line of output for a record, in `format`.
fn render(format: Format, r: &v1::AuditRecord) -> anyhow::Result<String> {
    if r.elided {
        let (prev, hash) = (hash_hex(&r.prev_hash)?, hash_hex(&r.hash)?);
        let remnant = ElidedRecord {
            time_ms: r.time_ms,
            log_index: r.log_index,
            node_id: r.via_node,
        };
        return Ok(match format {
            Format::Jsonl => crate::audit::render_elided_line(r.sequence, &remnant, &prev, &hash),
            Format::Csv => [
                r.sequence.to_string(),
                crate::audit::rfc3339_ms(r.time_ms),
                r.kind.clone(),
                r.subject.clone(),
                "(elided)".to_owned(),
                r.via_node.to_string(),
                r.log_index.to_string(),
                r.hash.clone(),
            ]
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(","),
        });
    }
    let rec = AuditRecord::from_bytes(&r.record_bytes)
        .with_context(|| format!("record {} does not decode", r.sequence))?;
    let (prev, hash) = (hash_hex(&r.prev_hash)?, hash_hex(&r.hash)?);
    Ok(match format {
        Format::Jsonl => crate::audit::render_line(&rec, &prev, &hash, &r.record_bytes)
            .map_err(anyhow::Error::msg)?,
        Format::Csv => [
            rec.sequence.to_string(),
            crate::audit::rfc3339_ms(rec.time_ms),
            rec.kind.clone(),
            rec.subject.clone(),
            rec.actor.principal.to_string(),
            rec.actor.via_node.to_string(),
            rec.log_index.to_string(),
            r.hash.clone(),
        ]
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(","),
    })
}

const CSV_HEADER: &str = "sequence,time,kind,subject,actor,via_node,log_index,hash";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn hash_hex(s: &str) -> anyhow::Result<Hash32> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{s:?} is not a 32-byte hex hash"))
}

/// Stream an export, reconnecting (with `follow`) after a broken stream from the sequence
/// after the last one considered, so nothing is missed and nothing repeated.
pub async fn export(a: ExportArgs) -> anyhow::Result<()> {
    let now = crate::issuer::now_ms();
    // A time the CLI cannot read is bad input like any other: INVALID_ARGUMENT (exit 2).
    let time = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
        v.as_deref()
            .map(|s| parse_time(s, now))
            .transpose()
            .map_err(|e| call(tonic::Status::invalid_argument(format!("{flag}: {e:#}"))))
    };
    let since_ms = time("--since", &a.since)?;
    let until_ms = time("--until", &a.until)?;
    let (eps, mut c) = client(&a.target).await?;
    let mut req = v1::ExportRequest {
        from_sequence: a.from_seq,
        to_sequence: a.to_seq.unwrap_or(0),
        since_ms: since_ms.unwrap_or(0),
        until_ms: until_ms.unwrap_or(0),
        types: a.types.clone(),
        client_id: a.client.clone().unwrap_or_default(),
        spiffe_id: a.spiffe_id.clone().unwrap_or_default(),
        actor: a.actor.clone().unwrap_or_default(),
        follow: a.follow,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    if a.format == Format::Csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    let progress = std::io::stderr().is_terminal();
    let (mut written, started, mut shown) = (0u64, Instant::now(), Instant::now());
    let mut failures = 0u32;
    loop {
        let stream = c.export(req.clone()).await;
        let mut s = match stream {
            Ok(s) => s.into_inner(),
            Err(e) if a.follow && is_transient(&e) && failures < 100 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
                c = client(&a.target).await.map(|x| x.1).unwrap_or(c);
                continue;
            }
            Err(e) => return Err(call(e)),
        };
        let ended = loop {
            match s.message().await {
                Ok(Some(m)) => {
                    failures = 0;
                    if let Some(r) = &m.record {
                        writeln!(out, "{}", render(a.format, r)?)?;
                        written += 1;
                    }
                    req.from_sequence = m.scanned_through + 1;
                    if a.follow {
                        out.flush()?;
                    }
                    if progress && shown.elapsed() > Duration::from_millis(200) {
                        shown = Instant::now();
                        eprint!(
                            "\r{written} records, through {} of {} ({:.0}/s)   ",
                            m.scanned_through,
                            m.head_sequence,
                            written as f64 / started.elapsed().as_secs_f64().max(1e-3)
                        );
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        match ended {
            Ok(()) => break,
            Err(e) if a.follow && is_transient(&e) => {
                out.flush()?;
                tracing::debug!(error = %e.message(), resume = req.from_sequence, endpoints = ?eps, "export stream broke; resuming");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10)))).await;
                if let Ok((_, fresh)) = client(&a.target).await {
                    c = fresh;
                }
            }
            Err(e) => return Err(call(e)),
        }
    }
    out.flush()?;
    if progress {
        eprintln!(
            "\r{written} records in {:.1} s                          ",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn is_transient(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    )
}

pub async fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Export(a) => export(a).await,
        AuditCmd::Head { target } => {
            let (_, mut c) = client(&target).await?;
            let h = c
                .head(v1::AuditHeadRequest {})
                .await
                .map_err(call)?
                .into_inner();
            println!(
                "{}",
                serde_json::json!({
                    "trust_domain": h.trust_domain,
                    "head_sequence": h.head_sequence,
                    "head_hash": h.head_hash,
                    "checkpoint_sequence": h.checkpoint_sequence,
                    "checkpoint_hash": h.checkpoint_hash,
                    "first_sequence": h.first_sequence,
                    "sinks": h.sinks.iter().map(|s| serde_json::json!({
                        "node_id": s.node_id,
                        "name": s.name,
                        "acked_sequence": s.acked_sequence,
                    })).collect::<Vec<_>>(),
                })
            );
            Ok(())
        }
        AuditCmd::Tail {
            target,
            lines,
            types,
            json,
        } => {
            let (_, mut c) = client(&target).await?;
            let h = c
                .head(v1::AuditHeadRequest {})
                .await
                .map_err(call)?
                .into_inner();
            let mut req = v1::ExportRequest {
                from_sequence: (h.head_sequence.saturating_sub(lines) + 1).max(h.first_sequence),
                types,
                follow: true,
                ..Default::default()
            };
            let mut failures = 0u32;
            loop {
                let r = async {
                    let mut s = c.export(req.clone()).await?.into_inner();
                    while let Some(m) = s.message().await? {
                        failures = 0;
                        if let Some(r) = &m.record {
                            let line = if json {
                                render(Format::Jsonl, r)
                                    .map_err(|e| tonic::Status::internal(e.to_string()))?
                            } else {
                                format!(
                                    "{} #{} {} {} by {}",
                                    crate::audit::rfc3339_ms(r.time_ms),
                                    r.sequence,
                                    r.kind,
                                    r.subject,
                                    r.actor
                                )
                            };
                            println!("{line}");
                        }
                        req.from_sequence = m.scanned_through + 1;
                    }
                    Ok::<(), tonic::Status>(())
                }
                .await;
                match r {
                    Ok(()) => return Ok(()),
                    Err(e) if is_transient(&e) && failures < 100 => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(
                            200 * u64::from(failures.min(10)),
                        ))
                        .await;
                        if let Ok((_, fresh)) = client(&target).await {
                            c = fresh;
                        }
                    }
                    Err(e) => return Err(call(e)),
                }
            }
        }
        AuditCmd::Verify {
            file,
            bundle,
            target,
            expect_head,
            allow_unsigned,
            partial,
            keys,
        } => {
            let bundle = match bundle {
                Some(b) => b,
                None => crate::cli::admin_dir(&target)?
                    .map(|d| d.join("ca.crt"))
                    .context("no --bundle and no admin directory: pass --bundle with the trust bundle (PEM roots or SPIFFE JSON)")?,
            };
            let roots = load_bundle(&bundle)?;
            let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                Box::new(std::io::BufReader::with_capacity(
                    1 << 20,
                    std::fs::File::open(&file)
                        .with_context(|| format!("open {}", file.display()))?,
                ))
            };
            let known = match keys {
                Some(k) => keys_from(&k, &roots)?,
                None => HashMap::new(),
            };
            let started = Instant::now();
            let report = verify(input, &roots, partial, known)?;
            let secs = started.elapsed().as_secs_f64();
            match report.broken {
                Some(b) => {
                    println!("FAILED: {b}");
                    bail!("the export does not verify");
                }
                None => {
                    if let Some(want) = expect_head {
                        if report.head_hash.map(hex::encode).as_deref() != Some(want.trim()) {
                            println!(
                                "FAILED: the chain ends at {} with hash {}, not the expected {want}",
                                report.last_sequence,
                                report.head_hash.map(hex::encode).unwrap_or_default()
                            );
                            bail!("the export does not verify");
                        }
                    }
                    if report.checkpoints == 0 && !allow_unsigned {
                        println!("FAILED: no signed checkpoint in the export covers its records, so nothing proves they are the cluster's; wait for the next checkpoint (every [audit] checkpoint_records or checkpoint_interval_s) and export again, or pass --allow-unsigned");
                        bail!("the export does not verify");
                    }
                    println!("{}", report.summary(secs));
                    Ok(())
                }
            }
        }
    }
}

/// Root certificates (DER) from PEM, or from a SPIFFE bundle's `x509-svid` keys.
pub fn load_bundle(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut roots = Vec::new();
    if text.trim_ascii_start().starts_with(b"{") {
        let v: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        for k in v["keys"].as_array().into_iter().flatten() {
            if k["use"] == "x509-svid" {
                for c in k["x5c"].as_array().into_iter().flatten() {
                    if let Some(b) = c.as_str() {
                        roots.push(base64::engine::general_purpose::STANDARD.decode(b)?);
                    }
                }
            }
        }
    } else {
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&text) {
            roots.push(
                c.with_context(|| format!("parse {}", path.display()))?
                    .to_vec(),
            );
        }
    }
    if roots.is_empty() {
        bail!("{} holds no root certificate", path.display());
    }
    Ok(roots)
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub head_hash: Option<Hash32>,
    pub gaps: u64,
    /// Lines seen twice (a sink's at-least-once delivery), skipped.
    pub duplicates: u64,
    /// Checkpoints whose signature and hash verified.
    pub checkpoints: u64,
    pub signers: BTreeSet<u64>,
    /// The sequence the last verified checkpoint covers.
    pub signed_through: u64,
    /// The last retention prune in the export: (pruned through, its record, the node).
    pub pruned: Option<(u64, u64, u64)>,
    /// A signed checkpoint covers the link before the first record (an export that starts
    /// after record 1).
    pub anchored: bool,
    /// Elided issuance records, each accounted for by an `audit.issuances_elided` record.
    pub elided: u64,
    /// Elided issuance records in a range the export holds only the end of (retention pruned
    /// into it, or `--from-seq` or a filter cut it): their elision record commits to records
    /// not in the export, so its count and digest cannot be checked.
    pub elided_unchecked: u64,
    pub broken: Option<String>,
}

impl Report {
    fn summary(&self, secs: f64) -> String {
        let unsigned = self.last_sequence.saturating_sub(self.signed_through);
        let mut s = format!(
            "ok: {} records, sequences {} to {}, chain head {}; {} checkpoint(s) verified, signed by node(s) {}; {:.0} records/s",
            self.records,
            self.first_sequence,
            self.last_sequence,
            self.head_hash.map(hex::encode).unwrap_or_default(),
            self.checkpoints,
            self.signers
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.records as f64 / secs.max(1e-9),
        );
        if self.first_sequence > 1 {
            let before = self.first_sequence - 1;
            match self.pruned {
                Some((through, record, node)) if through == before => s.push_str(&format!(
                    "; history starts at {}: records 1 to {through} were pruned by retention (audit.pruned, record {record}, proposed by node {node})",
                    self.first_sequence
                )),
                _ => s.push_str(&format!(
                    "; the export starts at {}: records 1 to {before} are not in it",
                    self.first_sequence
                )),
            }
            if self.anchored {
                s.push_str(&format!(
                    ", and a signed checkpoint of record {before} anchors its first link"
                ));
            }
        }
        if unsigned > 0 {
            s.push_str(&format!(
                "; the last {unsigned} record(s) follow the last checkpoint (chained, not yet signed)"
            ));
        }
        if self.elided > 0 {
            s.push_str(&format!(
                "; {} issuance record(s) elided by retention, each accounted for by an audit.issuances_elided record",
                self.elided
            ));
        }
        if self.elided_unchecked > 0 {
            s.push_str(&format!(
                "; {} issuance record(s) elided in a range this export holds only the end of (retention pruned into it, or it starts or is filtered inside it): their audit.issuances_elided record commits to records not in the export, so these remnants are chained but not checked against it",
                self.elided_unchecked
            ));
        }
        if self.duplicates > 0 {
            s.push_str(&format!(
                "; {} line(s) delivered twice, identical, skipped",
                self.duplicates
            ));
        }
        if self.gaps > 0 {
            s.push_str(&format!(
                "; a filtered export: {} gap(s), each record's own link checked",
                self.gaps
            ));
        }
        s
    }
}

#[derive(serde::Deserialize)]
struct LineIn<'a> {
    sequence: u64,
    #[serde(borrow)]
    prev_hash: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    hash: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    record_bytes: std::borrow::Cow<'a, str>,
    /// An elided issuance record's line (see `crate::audit::ElidedLine`).
    #[serde(default)]
    elided: bool,
    #[serde(default)]
    time_ms: u64,
    #[serde(default)]
    log_index: u64,
    #[serde(default)]
    via_node: u64,
}

/// What one line proved by itself (in parallel): its record, and its link.
struct Checked {
    line_no: u64,
    sequence: u64,
    prev: Hash32,
    hash: Hash32,
    /// `None` for an elided issuance record.
    record: Option<AuditRecord>,
}

/// Check one line against itself: its bytes decode, its hash is SHA-256(prev || bytes), and
/// the line is exactly the canonical rendering of its bytes.
fn check_line(line_no: u64, line: &str) -> Result<Checked, String> {
    let l: LineIn = serde_json::from_str(line)
        .map_err(|e| format!("line {line_no}: not an export line ({e})"))?;
    let at = |what: String| format!("record {} (line {line_no}): {what}", l.sequence);
    let prev = hash_hex(&l.prev_hash).map_err(|e| at(e.to_string()))?;
    let hash = hash_hex(&l.hash).map_err(|e| at(e.to_string()))?;
    if l.elided {
        // Its own hash cannot be recomputed: an audit.issuances_elided record later in the
        // export must commit to it (checked in order, in `Chain::link`).
        let remnant = ElidedRecord {
            time_ms: l.time_ms,
            log_index: l.log_index,
            node_id: l.via_node,
        };
        if crate::audit::render_elided_line(l.sequence, &remnant, &prev, &hash) != line {
            return Err(at(
                "not the canonical line of an elided record: the line was changed".into(),
            ));
        }
        return Ok(Checked {
            line_no,
            sequence: l.sequence,
            prev,
            hash,
            record: None,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(l.record_bytes.as_bytes())
        .map_err(|e| at(format!("record_bytes is not base64: {e}")))?;
    if chain_next(&prev, &bytes) != hash {
        return Err(at(
            "its hash is not SHA-256(prev_hash || record_bytes): the record was changed".into(),
        ));
    }
    let record =
        AuditRecord::from_bytes(&bytes).map_err(|e| at(format!("its bytes do not decode: {e}")))?;
    if record.sequence != l.sequence {
        return Err(at(format!(
            "the line says sequence {}, its bytes {}",
            l.sequence, record.sequence
        )));
    }
    let canonical = crate::audit::render_line(&record, &prev, &hash, &bytes).map_err(at)?;
    if canonical != line {
        return Err(at(
            "the readable fields differ from the hashed bytes: the line was changed".into(),
        ));
    }
    Ok(Checked {
        line_no,
        sequence: l.sequence,
        prev,
        hash,
        record: Some(record),
    })
}

/// An audit key the export published, its certificate chain checked against the bundle.
pub struct AuditKeyInfo {
    node_id: u64,
    trust_domain: String,
    key: ed25519_dalek::VerifyingKey,
    not_before_ms: u64,
    not_after_ms: u64,
}

fn audit_key(chain: &[u8], node_id: u64, roots: &[Vec<u8>]) -> Result<AuditKeyInfo, String> {
    use x509_parser::prelude::*;
    let (rest, leaf) =
        X509Certificate::from_der(chain).map_err(|e| format!("the leaf does not parse: {e}"))?;
    let (rest, ca) = X509Certificate::from_der(rest)
        .map_err(|e| format!("the intermediate does not parse: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate chain".into());
    }
    leaf.verify_signature(Some(ca.public_key())).map_err(|_| {
        "the audit certificate is not signed by the intermediate beside it".to_owned()
    })?;
    if !ca.is_ca() {
        return Err("the certificate beside the audit key is not a CA".into());
    }
    let anchored = roots.iter().any(|r| {
        X509Certificate::from_der(r)
            .map(|(_, root)| ca.verify_signature(Some(root.public_key())).is_ok())
            .unwrap_or(false)
    });
    if !anchored {
        return Err("the intermediate is signed by no root of the trust bundle".into());
    }
    let uri = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|g| match g {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        })
        .ok_or("the audit certificate names no SPIFFE ID")?;
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or("the audit certificate's URI is not a SPIFFE ID")?;
    let (td, path) = rest
        .split_once('/')
        .ok_or("the audit certificate's SPIFFE ID has no path")?;
    if path != format!("authsec/node/{node_id}") {
        return Err(format!(
            "the audit certificate names {uri}, not node {node_id}"
        ));
    }
    let spki = leaf.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err("the audit key is not Ed25519".into());
    }
    let raw: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| "the Ed25519 key is not 32 bytes")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|e| e.to_string())?;
    let ms = |t: ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    let not_before_ms = ms(leaf.validity().not_before).max(ms(ca.validity().not_before));
    let not_after_ms = ms(leaf.validity().not_after).min(ms(ca.validity().not_after));
    Ok(AuditKeyInfo {
        node_id,
        trust_domain: td.to_owned(),
        key,
        not_before_ms,
        not_after_ms,
    })
}

/// Lines checked per parallel batch.
const VERIFY_BATCH: usize = 4096;

/// Verify an export read from `input` against `roots`.
/// The audit keys published in an export file, each line checked by itself and each key's
/// certificate chain against `roots`.
fn keys_from(
    path: &std::path::Path,
    roots: &[Vec<u8>],
) -> anyhow::Result<HashMap<String, AuditKeyInfo>> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut keys = HashMap::new();
    for (i, l) in std::io::BufReader::new(f).lines().enumerate() {
        let l = l?;
        if l.is_empty() {
            continue;
        }
        let c =
            check_line(i as u64 + 1, &l).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(Event::NodeKeyPublished { key }) = c.record.as_ref().map(|r| &r.event) {
            if key.kind == KeyKind::Audit {
                let info = audit_key(&key.public, key.node_id, roots).map_err(|e| {
                    anyhow::anyhow!("{}: audit key {}: {e}", path.display(), key.kid)
                })?;
                keys.insert(key.kid.clone(), info);
            }
        }
    }
    Ok(keys)
}

pub fn verify(
    input: Box<dyn BufRead>,
    roots: &[Vec<u8>],
    partial: bool,
    keys: HashMap<String, AuditKeyInfo>,
) -> anyhow::Result<Report> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let mut report = Report::default();
    let mut state = Chain {
        partial,
        keys,
        ..Chain::default()
    };
    let mut lines = input.lines();
    let mut line_no = 0u64;
    loop {
        let mut batch = Vec::with_capacity(VERIFY_BATCH);
        for l in lines.by_ref() {
            line_no += 1;
            let l = l.with_context(|| format!("read line {line_no}"))?;
            if l.is_empty() {
                continue;
            }
            batch.push((line_no, l));
            if batch.len() >= VERIFY_BATCH {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        // Each line checks itself on its own thread; the links between them are checked in
        // order below.
        let per = batch.len().div_ceil(threads);
        let checked: Vec<Result<Checked, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|(n, l)| check_line(*n, l))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec![Err("a verify thread panicked".into())])
                })
                .collect()
        });
        for c in checked {
            let c = match c {
                Ok(c) => c,
                Err(e) => {
                    report.broken = Some(e);
                    return Ok(report);
                }
            };
            if let Err(e) = state.link(&c, roots, &mut report) {
                report.broken = Some(e);
                return Ok(report);
            }
        }
    }
    if report.records == 0 {
        report.broken = Some("the export holds no record".into());
    }
    if let Some(i) = state.issued.iter().find(|i| i.2) {
        if !partial {
            report.broken = Some(format!(
                "record {} (line {}): elided, but no audit.issuances_elided record in the export accounts for it",
                i.0, i.3
            ));
        }
    }
    if let Some(p) = state.pending.first() {
        report.broken = Some(format!(
            "record {} (line {}): checkpoint signed with {}, a key neither the export nor an audit.pruned record in it certifies; pass --keys with an export of the node_key.published records",
            p.sequence, p.line_no, p.cp.kid
        ));
    }
    Ok(report)
}

/// The in-order part of verification.
#[derive(Default)]
struct Chain {
    /// Gaps between sequences are allowed (a filtered export).
    partial: bool,
    last: Option<(u64, Hash32)>,
    /// Every chain hash from the first record on, by `sequence - first`: an unfiltered export
    /// is contiguous. Checkpoints name hashes from it, and a line delivered twice (a sink
    /// delivers at least once) is recognized by it.
    seen: Vec<Hash32>,
    /// A filtered export has gaps: its hashes by sequence instead.
    by_sequence: HashMap<u64, Hash32>,
    keys: HashMap<String, AuditKeyInfo>,
    /// Sequence and hash before the first record, when the export starts after record 1.
    anchor: Option<(u64, Hash32)>,
    /// Checkpoints whose key a later record may certify (see `link`).
    pending: Vec<Pending>,
    /// Issuance records (sequence, hash, elided, line) not yet accounted for by an
    /// `audit.issuances_elided` record.
    issued: Vec<(u64, Hash32, bool, u64)>,
}

struct Pending {
    cp: Checkpoint,
    time_ms: u64,
    sequence: u64,
    line_no: u64,
}

impl Chain {
    /// An `audit.issuances_elided` record of `from..=through`, committing to `parts`
    /// (`(from, through, count, digest)` each): every issuance record of the range, elided
    /// or not (a sink's file may hold them whole, written before the elision), is what it
    /// committed to. A part the export holds only the end of (it starts inside it, or is
    /// filtered) cannot be recomputed: its remnants are counted apart.
    fn elided<'a>(
        &mut self,
        from: u64,
        through: u64,
        parts: impl IntoIterator<Item = (u64, u64, u64, &'a Hash32)>,
        report: &mut Report,
    ) -> Result<(), String> {
        let early = self.issued_before(from);
        if let (Some((seq, line)), false) = (early, self.partial) {
            return Err(format!(
                "record {seq} (line {line}): elided, but no audit.issuances_elided record in the export accounts for it"
            ));
        }
        let (inside, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.issued)
            .into_iter()
            .partition(|i| i.0 <= through);
        self.issued = rest;
        // `issued` is in sequence order (records arrive in chain order): each part's records
        // are one slice, found by binary search, so a thousand parts over a million records
        // cost a thousand searches, not a thousand scans.
        for (pf, pt, n, d) in parts {
            let lo = inside.partition_point(|i| i.0 < pf);
            let hi = inside.partition_point(|i| i.0 <= pt).max(lo);
            let mine = &inside[lo..hi];
            let whole = report.first_sequence <= pf && !self.partial;
            let (count, digest) = elision_digest(mine.iter().map(|i| (i.0, &i.1)));
            if whole && (count, &digest) != (n, d) {
                return Err(format!(
                    "it elided {n} issuance record(s) from {pf} to {pt}, but the export holds {count} there, or others: an elided record was added, removed or changed"
                ));
            }
            let elided = mine.iter().filter(|i| i.2).count() as u64;
            if whole {
                report.elided += elided;
            } else {
                report.elided_unchecked += elided;
            }
        }
        Ok(())
    }

    /// An elided record before `sequence` still waiting for its elision record: none ever
    /// comes for it (elisions move forward).
    fn issued_before(&mut self, sequence: u64) -> Option<(u64, u64)> {
        let first = self
            .issued
            .iter()
            .find(|i| i.0 < sequence && i.2)
            .map(|i| (i.0, i.3));
        self.issued.retain(|i| i.0 >= sequence);
        first
    }

    /// The chain hash this export holds at `sequence` (`first`: its first sequence).
    fn hash_at(&self, sequence: u64, first: u64) -> Option<Hash32> {
        if self.partial {
            self.by_sequence.get(&sequence).copied()
        } else {
            let i = sequence.checked_sub(first)?;
            self.seen.get(usize::try_from(i).ok()?).copied()
        }
    }

    /// Check one checkpoint: its key, its signature, and the hash it signs against this
    /// export's chain (or against the first record's link, for the checkpoint that anchors
    /// an export starting after a prune).
    fn checkpoint(&self, cp: &Checkpoint, time_ms: u64, report: &mut Report) -> Result<(), String> {
        let key = self.keys.get(&cp.kid).ok_or_else(|| {
            format!(
                "checkpoint signed with {}, a key the export has not published before it (or retired, or of a revoked node); for an export that starts later, pass --keys with an export of the node_key.published records",
                cp.kid
            )
        })?;
        if key.node_id != cp.node_id {
            return Err(format!(
                "checkpoint by node {} with node {}'s key",
                cp.node_id, key.node_id
            ));
        }
        // Leader time, and a leader's clock may run a little ahead of the one that certified
        // the key: a minute of slack either side.
        if time_ms + 60_000 < key.not_before_ms || time_ms > key.not_after_ms + 60_000 {
            return Err(format!(
                "checkpoint made outside its key's validity ({} to {})",
                crate::audit::rfc3339_ms(key.not_before_ms),
                crate::audit::rfc3339_ms(key.not_after_ms)
            ));
        }
        let sig = ed25519_dalek::Signature::from_slice(&cp.signature)
            .map_err(|_| "the checkpoint's signature is malformed".to_owned())?;
        let msg = checkpoint_message(&key.trust_domain, cp.sequence, &cp.head_hash);
        key.key
            .verify_strict(&msg, &sig)
            .map_err(|_| "the checkpoint's signature does not verify".to_owned())?;
        let anchor = self.anchor.filter(|(seq, _)| *seq == cp.sequence);
        match anchor
            .map(|(_, h)| h)
            .or_else(|| self.hash_at(cp.sequence, report.first_sequence))
        {
            Some(h) if h == cp.head_hash => {
                report.checkpoints += 1;
                report.signers.insert(cp.node_id);
                report.signed_through = report.signed_through.max(cp.sequence);
                if anchor.is_some() {
                    report.anchored = true;
                }
                Ok(())
            }
            Some(_) => Err(format!(
                "the checkpoint signs a hash at sequence {} that is not this export's: records up to it were changed",
                cp.sequence
            )),
            // A filtered export without that record: the signature holds, the hash cannot be
            // compared.
            None if report.gaps > 0 => Ok(()),
            None => Err(format!(
                "the checkpoint names sequence {}, which is not in the export",
                cp.sequence
            )),
        }
    }

    fn link(&mut self, c: &Checked, roots: &[Vec<u8>], report: &mut Report) -> Result<(), String> {
        let at = |what: String| format!("record {} (line {}): {what}", c.sequence, c.line_no);
        match self.last {
            None => {
                report.first_sequence = c.sequence;
                if c.sequence == 1 && c.prev != GENESIS_HASH {
                    return Err(at(
                        "the first record's prev_hash is not the genesis hash".into()
                    ));
                }
                if c.sequence > 1 {
                    // Where the export starts after a prune: a signed checkpoint of this link
                    // later in the export anchors it.
                    self.anchor = Some((c.sequence - 1, c.prev));
                }
            }
            Some((seq, hash)) => {
                if c.sequence <= seq {
                    let again = self
                        .hash_at(c.sequence, report.first_sequence)
                        .is_some_and(|h| h == c.hash);
                    if again && !self.partial {
                        report.duplicates += 1;
                        return Ok(());
                    }
                    return Err(at(format!(
                        "out of order or repeated: it follows sequence {seq}"
                    )));
                }
                if c.sequence == seq + 1 {
                    if c.prev != hash {
                        return Err(at(format!(
                            "its prev_hash is not the hash of record {seq}: a record before it was removed, added or changed"
                        )));
                    }
                } else if self.partial {
                    report.gaps += 1;
                } else {
                    let missing = if c.sequence == seq + 2 {
                        format!("record {} is missing", seq + 1)
                    } else {
                        format!("records {} to {} are missing", seq + 1, c.sequence - 1)
                    };
                    return Err(at(format!(
                        "it follows sequence {seq}: {missing} (verify a filtered export with --partial)"
                    )));
                }
            }
        }
        if self.partial {
            self.by_sequence.insert(c.sequence, c.hash);
        } else {
            self.seen.push(c.hash);
        }
        let issued = c
            .record
            .as_ref()
            .is_none_or(|r| r.kind == crate::audit::ISSUED);
        if issued {
            self.issued
                .push((c.sequence, c.hash, c.record.is_none(), c.line_no));
        }
        let Some(record) = &c.record else {
            self.last = Some((c.sequence, c.hash));
            report.records += 1;
            report.last_sequence = c.sequence;
            report.head_hash = Some(c.hash);
            return Ok(());
        };
        match &record.event {
            Event::IssuancesElided { elision: e } => {
                let whole = [(e.from_sequence, e.through_sequence, e.count, &e.digest)];
                self.elided(e.from_sequence, e.through_sequence, whole, report)
                    .map_err(at)?;
            }
            Event::IssuancePartsElided { elision: e } => {
                self.elided(e.from_sequence, e.through_sequence, e.ranges(), report)
                    .map_err(at)?;
            }
            // A retired key signs nothing after its retirement; a revoked node nothing at all.
            Event::NodeKeyRetired { kid } => {
                self.keys.remove(kid);
            }
            Event::NodeRevoked { node_id } => {
                self.keys.retain(|_, k| k.node_id != *node_id);
            }
            Event::NodeKeyPublished { key } if key.kind == KeyKind::Audit => {
                let info = audit_key(&key.public, key.node_id, roots)
                    .map_err(|e| at(format!("audit key {}: {e}", key.kid)))?;
                self.keys.insert(key.kid.clone(), info);
            }
            Event::AuditPruned { prune, audit_keys } => {
                // The keys that could still sign when the prune was committed, certified by
                // the bundle like any published key: checkpoints of an export that starts after
                // their publication (pruned) verify with them.
                for key in audit_keys.iter().filter(|k| k.kind == KeyKind::Audit) {
                    if !self.keys.contains_key(&key.kid) {
                        let info = audit_key(&key.public, key.node_id, roots)
                            .map_err(|e| at(format!("audit key {}: {e}", key.kid)))?;
                        self.keys.insert(key.kid.clone(), info);
                    }
                }
                report.pruned = Some((prune.through_sequence, c.sequence, prune.node_id));
                for p in std::mem::take(&mut self.pending) {
                    self.checkpoint(&p.cp, p.time_ms, report)
                        .map_err(|e| format!("record {} (line {}): {e}", p.sequence, p.line_no))?;
                }
            }
            Event::CheckpointRecorded { checkpoint: cp } => {
                // An export that starts after record 1 (retention pruned what came before) may
                // hold a checkpoint before the record that certifies its key: it is checked
                // once that record comes, and fails at the end if none does.
                if !self.keys.contains_key(&cp.kid) && report.first_sequence > 1 {
                    self.pending.push(Pending {
                        cp: cp.clone(),
                        time_ms: record.time_ms,
                        sequence: c.sequence,
                        line_no: c.line_no,
                    });
                } else {
                    self.checkpoint(cp, record.time_ms, report).map_err(at)?;
                }
            }
            _ => {}
        }
        self.last = Some((c.sequence, c.hash));
        report.records += 1;
        report.last_sequence = c.sequence;
        report.head_hash = Some(c.hash);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        let now = 10_000_000_000;
        assert_eq!(parse_time("2h", now).expect("ok"), now - 7_200_000);
        assert_eq!(parse_time("30m", now).expect("ok"), now - 1_800_000);
        assert_eq!(
            parse_time("2026-11-30T03:18:21.123Z", now).expect("ok"),
            1_796_008_701_123
        );
        assert_eq!(
            parse_time("2026-11-30T04:18:21.123+01:00", now).expect("ok"),
            1_796_008_701_123
        );
        assert_eq!(
            parse_time("1796008701123", now).expect("ms"),
            1_796_008_701_123
        );
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-30T00:00:00",
            "2h30",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }

    /// Three chained lines of role records, as an export renders them.
    fn export(n: u64) -> Vec<String> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let r = AuditRecord {
                    sequence: seq,
                    log_index: seq,
                    time_ms: 1_000 + seq,
                    actor: authsec_domain::Actor {
                        principal: authsec_domain::Principal::System,
                        via_node: 1,
                    },
                    kind: "role.deleted".into(),
                    subject: format!("role:r{seq}"),
                    event: Event::RoleDeleted {
                        name: authsec_domain::RoleName::parse(&format!("r{seq}")).expect("name"),
                    },
                };
                let bytes = r.to_bytes();
                let hash = chain_next(&prev, &bytes);
                let line = crate::audit::render_line(&r, &prev, &hash, &bytes).expect("line");
                prev = hash;
                line
            })
            .collect()
    }

    fn check(lines: &[String]) -> Report {
        let text = lines.join("\n") + "\n";
        verify(
            Box::new(std::io::Cursor::new(text.into_bytes())),
            &[],
            false,
            HashMap::new(),
        )
        .expect("reads")
    }

    #[test]
    fn verify_names_the_first_broken_record() {
        let lines = export(5);
        let ok = check(&lines);
        assert_eq!((ok.broken, ok.records, ok.last_sequence), (None, 5, 5));
        assert_eq!(ok.checkpoints, 0, "no checkpoint in this chain");

        let mut changed = lines.clone();
        changed[2] = changed[2].replace("role:r3", "role:r9");
        let b = check(&changed).broken.expect("a changed subject fails");
        assert!(b.starts_with("record 3 (line 3)"), "{b}");

        let mut removed = lines.clone();
        removed.remove(1);
        let b = check(&removed).broken.expect("a removed record fails");
        assert!(b.contains("record 2 is missing"), "{b}");

        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert!(
            check(&swapped).broken.is_some(),
            "records out of order fail"
        );

        let mut twice = lines.clone();
        twice.insert(3, lines[2].clone());
        let r = check(&twice);
        assert_eq!(
            (r.broken, r.duplicates, r.records),
            (None, 1, 5),
            "a line delivered twice is skipped"
        );

        let mut other = lines.clone();
        other.insert(3, export(3)[2].replace("r3", "r4"));
        assert!(
            check(&other).broken.is_some(),
            "a different line at a seen sequence fails"
        );
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
