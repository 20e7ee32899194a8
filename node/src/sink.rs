//! Audit sinks (`[[audit.sinks]]`): every committed record, as the export's JSON lines, pushed
//! to a rotating file or an HTTP webhook, so a SIEM ingests without polling.
//!
//! Delivery is at least once: a sink's cursor (the last sequence it acknowledged) is kept in
//! `<data_dir>/audit-sinks/<name>.cursor` and moved only after the file is synced or the
//! webhook answered 2xx, so a crash in between sends a batch again, never skips one. A sink
//! that falls more than `max_lag_records` behind either only warns (`on_lag = "serve"`) or
//! makes this node refuse admin writes until it catches up (`on_lag = "refuse_writes"`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use authsec_domain::record::{AuditRecord, Hash32};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::services::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// JSON lines appended to `path`, rotated at `max_bytes` (`path.1` is the newest old one).
    File,
    /// JSON lines POSTed to `url` in batches (`Content-Type: application/x-ndjson`).
    Webhook,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLag {
    /// Keep serving; warn in the log and the metrics.
    #[default]
    Serve,
    /// Refuse admin writes on this node (UNAVAILABLE, naming the sink) until it catches up.
    RefuseWrites,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Names the cursor file; letters, digits, '-' and '_'.
    pub name: String,
    pub kind: SinkKind,
    /// File sinks: where the lines go (relative to the node's data_dir unless absolute).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// File sinks: rotate at this size.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// File sinks: rotated files kept.
    #[serde(default = "default_keep_files")]
    pub keep_files: u32,
    /// Webhook sinks: `http://` or `https://` URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Webhook sinks: PEM roots for an `https://` URL (default: the Web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Records per delivery.
    #[serde(default = "default_batch")]
    pub batch_records: usize,
    /// How far behind the head the sink may fall before `on_lag` applies.
    #[serde(default = "default_max_lag")]
    pub max_lag_records: u64,
    #[serde(default)]
    pub on_lag: OnLag,
}

fn default_max_bytes() -> u64 {
    100 << 20
}
fn default_keep_files() -> u32 {
    10
}
fn default_batch() -> usize {
    500
}
fn default_max_lag() -> u64 {
    100_000
}

pub fn validate(sinks: &[SinkConfig]) -> anyhow::Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for s in sinks {
        if s.name.is_empty()
            || s.name.len() > 64
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!(
                "audit sink name {:?}: 1 to 64 letters, digits, '-' or '_'",
                s.name
            );
        }
        if !names.insert(&s.name) {
            bail!("audit sink name {:?} is used twice", s.name);
        }
        if !(1..=10_000).contains(&s.batch_records) {
            bail!("audit sink {}: batch_records must be 1 to 10000", s.name);
        }
        match s.kind {
            SinkKind::File => {
                if s.path.is_none() {
                    bail!("audit sink {}: a file sink needs path", s.name);
                }
                if s.max_bytes < 4096 {
                    bail!("audit sink {}: max_bytes must be at least 4096", s.name);
                }
            }
            SinkKind::Webhook => {
                let url = s
                    .url
                    .as_deref()
                    .with_context(|| format!("audit sink {}: a webhook sink needs url", s.name))?;
                split_url(url).map_err(|e| anyhow::anyhow!("audit sink {}: {e}", s.name))?;
            }
        }
    }
    Ok(())
}

/// `(https, host, port, path)` of an `http://` or `https://` URL.
fn split_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("url {url:?} must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| format!("url {url:?}: bad port {p:?}"))?,
        ),
        None if !authority.is_empty() => (authority, if https { 443 } else { 80 }),
        _ => return Err(format!("url {url:?} has no host")),
    };
    Ok((https, host.to_owned(), port, path.to_owned()))
}

/// Which sinks hold writes back, shared with every write path of the node.
#[derive(Debug, Default)]
pub struct Gate {
    lagging: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Gate {
    /// `Some(reason)` while a `refuse_writes` sink is too far behind.
    pub fn refusal(&self) -> Option<String> {
        let l = self.lagging.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().next().map(|(name, lag)| {
            if *lag == u64::MAX {
                format!("audit sink {name} could not start (see the node's log) and has on_lag = refuse_writes; fix it and restart the node")
            } else {
                format!("audit sink {name} is {lag} records behind (on_lag = refuse_writes); this node takes writes again once it catches up")
            }
        })
    }

    fn set(&self, name: &str, lag: Option<u64>) {
        let mut l = self.lagging.lock().unwrap_or_else(|p| p.into_inner());
        match lag {
            Some(n) => {
                l.insert(name.to_owned(), n);
            }
            None => {
                l.remove(name);
            }
        }
    }
}

/// Per sink, for `/metrics`: its name, acknowledged sequence and lag.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub sinks: Mutex<Vec<(String, u64, u64)>>,
}

impl SinkStats {
    /// The last sequence sink `name` acknowledged, once it has started.
    pub fn acked(&self, name: &str) -> Option<u64> {
        let v = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().find(|s| s.0 == name).map(|s| s.1)
    }

    fn set(&self, name: &str, acked: u64, lag: u64) {
        let mut v = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        match v.iter_mut().find(|s| s.0 == name) {
            Some(s) => (s.1, s.2) = (acked, lag),
            None => v.push((name.to_owned(), acked, lag)),
        }
    }
}

fn cursor_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("audit-sinks").join(format!("{name}.cursor"))
}

/// The last sequence `name` acknowledged (0: none).
pub fn read_cursor(data_dir: &Path, name: &str) -> anyhow::Result<u64> {
    let p = cursor_path(data_dir, name);
    match std::fs::read_to_string(&p) {
        Ok(t) => t
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a sequence", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

/// Write the cursor durably: a temporary file, synced, renamed over the old one, and the
/// directory synced.
fn write_cursor(data_dir: &Path, name: &str, seq: u64) -> anyhow::Result<()> {
    let p = cursor_path(data_dir, name);
    let dir = p.parent().context("cursor directory")?;
    std::fs::create_dir_all(dir)?;
    let tmp = p.with_extension("cursor.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{seq}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Lines for records `from..` (at most `limit`), and the last sequence included.
fn lines(
    reader: &authsec_storage::Reader,
    from: u64,
    limit: usize,
) -> Result<(Vec<u8>, u64, usize), String> {
    let recs = reader
        .records(from, limit, 4 << 20)
        .map_err(|e| e.to_string())?;
    let mut prev: Hash32 = crate::audit::chain_hash(reader, from - 1)?;
    let (mut out, mut last, mut n) = (Vec::new(), from - 1, 0);
    for rec in recs {
        if rec.sequence != last + 1 {
            return Err(format!("the archive skips from {last} to {}", rec.sequence));
        }
        match rec.elided() {
            Some(remnant) => out.extend_from_slice(
                crate::audit::render_elided_line(rec.sequence, &remnant, &prev, &rec.hash)
                    .as_bytes(),
            ),
            None => {
                let r = AuditRecord::from_bytes(&rec.bytes)
                    .map_err(|e| format!("record {} does not decode: {e}", rec.sequence))?;
                out.extend_from_slice(
                    crate::audit::render_line(&r, &prev, &rec.hash, &rec.bytes)?.as_bytes(),
                );
            }
        }
        out.push(b'\n');
        prev = rec.hash;
        last = rec.sequence;
        n += 1;
    }
    Ok((out, last, n))
}

/// Run one sink until shutdown.
pub async fn run(
    ctx: Arc<Ctx>,
    mut cfg: SinkConfig,
    data_dir: PathBuf,
    gate: Arc<crate::sink::Gate>,
    stats: Arc<SinkStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Some(p) = cfg.path.as_mut() {
        if p.is_relative() {
            *p = data_dir.join(&*p);
        }
    }
    let mut head_rx = ctx.head_rx.clone();
    // A sink that cannot start is as far behind as a sink can be: with refuse_writes the
    // node holds writes back until it is fixed (and restarted); it never silently goes on.
    let cannot_start = |e: anyhow::Error| {
        tracing::error!(sink = %cfg.name, error = format!("{e:#}"), "audit sink cannot start");
        if cfg.on_lag == OnLag::RefuseWrites {
            gate.set(&cfg.name, Some(u64::MAX));
        }
    };
    let mut acked = match read_cursor(&data_dir, &cfg.name) {
        Ok(c) => c,
        Err(e) => return cannot_start(e),
    };
    let mut out = match Output::open(&cfg).await {
        Ok(o) => o,
        Err(e) => return cannot_start(e),
    };
    let mut failures = 0u32;
    // How far behind the sink is, for the metrics and the write gate: on every turn and on
    // every new record while a delivery waits to be retried.
    let judge = |head: u64, acked: u64| {
        let lag = head.saturating_sub(acked);
        stats.set(&cfg.name, acked, lag);
        let behind = lag > cfg.max_lag_records;
        gate.set(
            &cfg.name,
            (behind && cfg.on_lag == OnLag::RefuseWrites).then_some(lag),
        );
        behind.then_some(lag)
    };
    loop {
        let head = head_rx.borrow_and_update().sequence;
        // Retention on another node (or one not waiting for this sink) pruned records this
        // sink never delivered: say so loudly, and go on from the first record kept.
        match ctx.reader.pruned() {
            Ok(p) if acked < p.through_sequence => {
                tracing::error!(
                    sink = %cfg.name,
                    acked,
                    pruned_through = p.through_sequence,
                    missed = p.through_sequence - acked,
                    "audit records were pruned by retention before this sink delivered them; list it in [audit.retention] after_sinks on the node that prunes"
                );
                if let Err(e) = write_cursor(&data_dir, &cfg.name, p.through_sequence) {
                    tracing::error!(sink = %cfg.name, error = format!("{e:#}"), "saving the sink cursor failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                acked = p.through_sequence;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(sink = %cfg.name, error = %e, "reading where the archive starts failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        if let Some(lag) = judge(head, acked) {
            tracing::warn!(sink = %cfg.name, lag, max = cfg.max_lag_records, "audit sink is behind");
        }
        if acked >= head {
            tokio::select! {
                r = head_rx.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            continue;
        }
        let reader = ctx.reader.clone();
        let (from, limit) = (acked + 1, cfg.batch_records);
        let batch = tokio::task::spawn_blocking(move || lines(&reader, from, limit)).await;
        let (body, last, n) = match batch {
            Ok(Ok(b)) if b.2 > 0 => b,
            Ok(Ok(_)) => {
                // A snapshot installation is replacing the archive: look again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Err(e)) => {
                tracing::error!(sink = %cfg.name, error = %e, "reading the archive for a sink failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(sink = %cfg.name, error = %e, "sink batch task failed");
                return;
            }
        };
        let delivered = tokio::select! {
            r = out.deliver(ctx.node_id, &cfg, &body, from, last) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match delivered {
            Ok(()) => {
                if let Err(e) = write_cursor(&data_dir, &cfg.name, last) {
                    tracing::error!(sink = %cfg.name, error = format!("{e:#}"), "saving the sink cursor failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                failures = 0;
                acked = last;
                tracing::debug!(sink = %cfg.name, records = n, through = last, "audit records delivered");
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(200 * 2u64.pow(failures.min(6)));
                tracing::warn!(sink = %cfg.name, error = format!("{e:#}"), failures, retry_in_ms = wait.as_millis() as u64, "audit sink delivery failed");
                let retry = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(retry) => break,
                        r = head_rx.changed() => {
                            if r.is_err() {
                                return;
                            }
                            judge(head_rx.borrow_and_update().sequence, acked);
                        }
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
}

enum Output {
    File {
        file: tokio::fs::File,
        size: u64,
    },
    Webhook {
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

impl Output {
    async fn open(cfg: &SinkConfig) -> anyhow::Result<Self> {
        match cfg.kind {
            SinkKind::File => {
                let path = cfg.path.as_ref().context("path")?;
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir).await.ok();
                }
                let file = open_append(path).await?;
                let size = file.metadata().await?.len();
                Ok(Output::File { file, size })
            }
            SinkKind::Webhook => {
                let (https, ..) = split_url(cfg.url.as_deref().unwrap_or_default())
                    .map_err(anyhow::Error::msg)?;
                let tls = if https {
                    let mut roots = rustls::RootCertStore::empty();
                    match &cfg.ca_file {
                        Some(p) => {
                            use rustls::pki_types::pem::PemObject;
                            for c in rustls::pki_types::CertificateDer::pem_file_iter(p)
                                .with_context(|| format!("read {}", p.display()))?
                            {
                                roots.add(c.with_context(|| format!("parse {}", p.display()))?)?;
                            }
                        }
                        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                    }
                    let c = rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::aws_lc_rs::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                    Some(Arc::new(c))
                } else {
                    None
                };
                Ok(Output::Webhook { tls })
            }
        }
    }

    async fn deliver(
        &mut self,
        node_id: u64,
        cfg: &SinkConfig,
        body: &[u8],
        first: u64,
        last: u64,
    ) -> anyhow::Result<()> {
        match self {
            Output::File { file, size } => {
                let path = cfg.path.as_ref().context("path")?;
                if *size > 0 && *size + body.len() as u64 > cfg.max_bytes {
                    file.sync_all().await?;
                    rotate(path, cfg.keep_files).await?;
                    *file = open_append(path).await?;
                    *size = 0;
                }
                file.write_all(body).await?;
                file.sync_data().await?;
                *size += body.len() as u64;
                Ok(())
            }
            Output::Webhook { tls } => {
                post(
                    cfg.url.as_deref().unwrap_or_default(),
                    tls.clone(),
                    body,
                    (first, last),
                    node_id,
                )
                .await
            }
        }
    }
}

async fn open_append(path: &Path) -> anyhow::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| format!("open {}", path.display()))
}

/// `path` -> `path.1` -> `path.2` ..., dropping the oldest beyond `keep`.
async fn rotate(path: &Path, keep: u32) -> anyhow::Result<()> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        tokio::fs::remove_file(path).await.ok();
        return Ok(());
    }
    tokio::fs::remove_file(numbered(keep)).await.ok();
    for n in (1..keep).rev() {
        if tokio::fs::try_exists(numbered(n)).await.unwrap_or(false) {
            tokio::fs::rename(numbered(n), numbered(n + 1)).await?;
        }
    }
    tokio::fs::rename(path, numbered(1)).await?;
    Ok(())
}

/// One POST of a batch, saying which sequences it carries and which node sent it; `Ok` only
/// on a 2xx answer. A new connection per batch: batches are
/// large and a webhook behind a load balancer may move.
async fn post(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    body: &[u8],
    (first, last): (u64, u64),
    node_id: u64,
) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Full};
    let (_, host, port, path) = split_url(url).map_err(anyhow::Error::msg)?;
    let req = http::Request::post(&path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .header("x-authsec-sequence-first", first)
        .header("x-authsec-sequence-last", last)
        .header("x-authsec-node", node_id)
        .body(Full::new(bytes_of(body)))?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connect {host}:{port}"))?;
        tcp.set_nodelay(true).ok();
        let status = match tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS with {host}:{port}"))?;
                send(hyper_util::rt::TokioIo::new(stream), req).await?
            }
            None => send(hyper_util::rt::TokioIo::new(tcp), req).await?,
        };
        if !status.is_success() {
            bail!("the webhook answered {status}");
        }
        Ok(())
    };
    async fn send<T>(
        io: T,
        req: http::Request<Full<bytes::Bytes>>,
    ) -> anyhow::Result<http::StatusCode>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        let driver = tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        // Read (and drop) a bounded answer so the exchange completes.
        let _ = http_body_util::Limited::new(resp.into_body(), 64 << 10)
            .collect()
            .await;
        driver.abort();
        Ok(status)
    }
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 30 s"))?
}

fn bytes_of(b: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9000/ingest").expect("ok"),
            (false, "127.0.0.1".into(), 9000, "/ingest".into())
        );
        assert_eq!(
            split_url("https://siem.example").expect("ok"),
            (true, "siem.example".into(), 443, "/".into())
        );
        assert!(split_url("ftp://x").is_err());
        assert!(split_url("http://:80/").is_err());
    }

    #[test]
    fn cursor_survives_rewrites() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(read_cursor(dir.path(), "s").expect("none yet"), 0);
        write_cursor(dir.path(), "s", 41).expect("write");
        write_cursor(dir.path(), "s", 42).expect("write");
        assert_eq!(read_cursor(dir.path(), "s").expect("read"), 42);
    }
}
