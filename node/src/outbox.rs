//! "No audit, no credential": every credential this node issues is recorded in its outbox,
//! synced, before the credential is returned (group commit: one fsync covers every issuance
//! waiting at that moment), then proposed to the log in batches by [`flush_loop`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use authsec_domain::issuance::{Issuance, IssuanceBatch, BATCH_ITEMS_MAX};
use authsec_domain::{Actor, Command, Principal};
use authsec_storage::outbox::{Cursor, Frame, OutboxLog, OutboxWriter};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::services::Ctx;

/// Issuances waiting for the outbox writer; beyond this, issuance waits (backpressure).
const QUEUE_MAX: usize = 16 * 1024;
/// Records per synced write.
const GROUP_MAX: usize = 4096;
/// How long a sync waits for company when the previous one was shared. Measured with the
/// outbox in its own files (64 connections, tokens/s): no wait 13.6k-15.8k (a sync per
/// handful of tokens costs more CPU than it saves in latency), 100 µs 17.1k-17.4k, 200 µs
/// 17.0k-17.9k, 400 µs 18.1k-19.8k, 800 µs 18.2k-21.0k, 1.6 ms 17.2k-17.8k. Spread over three
/// nodes a node sees a third of the load: at 400 µs it synced 6.5 tokens at a time and a
/// token cost 88-95 µs of CPU; at 1 ms, 12.6 and 79 µs, with more throughput on one node and
/// on three; at 2 ms one node lost a third of its throughput (docs/benchmarks.md).
const LINGER: Duration = Duration::from_millis(1);
/// Encoded bytes per proposal (the log's batches hold 1 MiB).
const PROPOSAL_BYTES_MAX: usize = 512 * 1024;
/// How often the outbox is proposed when nothing wakes the flusher sooner.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Records waiting that wake the flusher before its tick. Fewer, larger proposals cost every
/// node less: 3,500 gave 21.3k-22.3k tokens/s against 19.9k-21.5k at 1,024 (64 connections,
/// one node answering).
const WAKE_AT: u64 = 3072;

#[derive(Debug, thiserror::Error)]
#[error("the issuance could not be recorded in the outbox: {0}")]
pub struct RecordError(String);

struct Pending {
    rec: Issuance,
    done: oneshot::Sender<Result<u64, String>>,
}

/// What the writer thread receives (all but the last message are records, so not boxed).
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Pending),
    /// Finish what is queued, then exit (dropping its handle on the database).
    Stop,
}

/// The handle issuance records through.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<PendingBox>,
    log: OutboxLog,
    wake: Arc<Notify>,
    pub stats: Arc<OutboxStats>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

#[derive(Debug, Default)]
pub struct OutboxStats {
    pub recorded: AtomicU64,
    pub syncs: AtomicU64,
    pub proposed: AtomicU64,
}

impl OutboxStats {
    /// Records recorded by this process and not yet proposed. The flusher also proposes the
    /// backlog a restarted node finds in its outbox, which this process never recorded, so
    /// `proposed` may pass `recorded`: then nothing of this process's waits.
    fn waiting(&self) -> u64 {
        self.recorded
            .load(Ordering::Relaxed)
            .saturating_sub(self.proposed.load(Ordering::Relaxed))
    }
}

struct PendingBox(Msg);

impl std::fmt::Debug for PendingBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Recorder {
    /// Start the writer thread over `outbox`, numbering from `next`.
    pub fn start(outbox: OutboxWriter, log: OutboxLog, next: u64) -> Self {
        let (tx, rx) = mpsc::channel::<PendingBox>(QUEUE_MAX);
        let stats = Arc::new(OutboxStats::default());
        let wake = Arc::new(Notify::new());
        let (s, w) = (stats.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer(outbox, next, rx, s, w))
            .expect("spawn the outbox writer thread");
        Self {
            tx,
            log,
            wake,
            stats,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        }
    }

    /// Stop the writer thread once what is queued is written, and wait for it. Called when
    /// the node stops: the thread holds the database open, and RocksDB must be closed before
    /// the process exits (its static teardown aborts under a database still in use).
    pub async fn stop(&self) {
        let _ = self.tx.send(PendingBox(Msg::Stop)).await;
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Record `rec` (its `seq` is assigned here); returns once it is synced to disk.
    pub async fn record(&self, rec: Issuance) -> Result<u64, RecordError> {
        // The baseline of the issuance-audit benchmark only (scripts/bench-audit.sh): a build
        // with this feature issues credentials that are never recorded. Never ship it.
        if cfg!(feature = "unaudited-bench") {
            return Ok(rec.seq);
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(PendingBox(Msg::Record(Pending { rec, done })))
            .await
            .map_err(|_| RecordError("the outbox writer stopped".into()))?;
        rx.await
            .map_err(|_| RecordError("the outbox writer stopped".into()))?
            .map_err(RecordError)
    }
}

fn writer(
    mut outbox: OutboxWriter,
    mut next: u64,
    mut rx: mpsc::Receiver<PendingBox>,
    stats: Arc<OutboxStats>,
    wake: Arc<Notify>,
) {
    let mut group: Vec<Pending> = Vec::new();
    let mut last_group = 0;
    let mut stopping = false;
    while !stopping {
        let Some(PendingBox(first)) = rx.blocking_recv() else {
            break;
        };
        let first = match first {
            Msg::Record(p) => p,
            Msg::Stop => break,
        };
        // Under load (the last sync covered several), wait a moment for more: one fsync then
        // covers more issuances. Alone, a request is synced at once.
        if last_group > 1 {
            std::thread::sleep(LINGER);
        }
        group.push(first);
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(PendingBox(Msg::Record(p))) => group.push(p),
                Ok(PendingBox(Msg::Stop)) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        last_group = group.len();
        let mut frames = Vec::with_capacity(group.len());
        let mut ready = Vec::with_capacity(group.len());
        for mut p in group.drain(..) {
            p.rec.seq = next;
            next += 1;
            match Frame::encode(&p.rec) {
                Ok(f) => {
                    frames.push(f);
                    ready.push(p);
                }
                Err(e) => {
                    let _ = p.done.send(Err(e.to_string()));
                }
            }
        }
        let result = outbox.append(&frames).map_err(|e| e.to_string());
        if let Err(e) = &result {
            // No credential of this group leaves. After a failed write or sync, what reached
            // the disk is unknown and the outbox takes nothing more until the node restarts
            // and reads it again; a segment that could not be made (a full disk) is tried
            // again by the next group.
            tracing::error!(error = %e, "the issuance outbox could not be written; refusing to issue");
        } else {
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            stats
                .recorded
                .fetch_add(ready.len() as u64, Ordering::Relaxed);
        }
        for p in ready {
            let _ = p.done.send(result.clone().map(|()| p.rec.seq));
        }
        // Wake the flusher early only for a full proposal: under load, fewer and larger
        // entries cost the log (and every node applying it) far less than many small ones.
        let waiting = stats.waiting();
        if waiting >= WAKE_AT {
            wake.notify_one();
        }
    }
}

/// Propose the outbox to the log, oldest first, and drop the segments the log has. A batch
/// that commits and is proposed again after a crash is recorded once (the log keeps each
/// node's last recorded sequence, and the flusher starts after it).
pub async fn flush_loop(ctx: Arc<Ctx>, recorder: Recorder, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = FLUSH_EVERY;
    let mut cursor: Option<Cursor> = None;
    // Read from the outbox, not yet in the log.
    let mut pending: VecDeque<Issuance> = VecDeque::new();
    loop {
        // Woken for a full proposal, only full proposals go; the tick takes the rest.
        let full_only = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = recorder.wake.notified() => true,
            _ = tokio::time::sleep(backoff) => false,
        };
        loop {
            if pending.len() < BATCH_ITEMS_MAX {
                let (log, reader, node_id) =
                    (recorder.log.clone(), ctx.reader.clone(), ctx.node_id);
                let want = BATCH_ITEMS_MAX - pending.len();
                let cur = cursor.take();
                let read_after = pending.back().map_or(0, |r| r.seq);
                let read = tokio::task::spawn_blocking(move || {
                    let mut cur = match cur {
                        Some(c) => c,
                        None => match reader.issuance_recorded(node_id) {
                            Ok(mark) => Cursor::after(mark.max(read_after)),
                            Err(e) => return (None, Err(e)),
                        },
                    };
                    let got = log.read(&mut cur, want);
                    (Some(cur), got)
                })
                .await;
                let Ok((cur, got)) = read else { break };
                cursor = cur;
                match got {
                    Ok(got) => pending.extend(got),
                    Err(e) => {
                        tracing::error!(error = %e, "reading the issuance outbox failed");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        break;
                    }
                }
            }
            if pending.is_empty() || (full_only && (pending.len() as u64) < WAKE_AT) {
                backoff = FLUSH_EVERY;
                break;
            }
            // An item costs its id and a few varints; a profile, its text (counted per item,
            // an overestimate that keeps the proposal under its bound without encoding it).
            let mut size = 0;
            let take = pending
                .iter()
                .take_while(|r| {
                    size += r.id.len() + 40;
                    size <= PROPOSAL_BYTES_MAX
                })
                .count()
                .max(1);
            // Packed straight from the queue: no copy of each record's strings.
            let issuances = &pending.make_contiguous()[..take];
            let last = issuances.last().map_or(0, |r| r.seq);
            let n = issuances.len() as u64;
            let actor = Actor {
                principal: Principal::System,
                via_node: ctx.node_id,
            };
            let command = Command::RecordIssuanceBatch {
                node_id: ctx.node_id,
                batch: IssuanceBatch::pack(issuances),
            };
            match ctx.write(actor, command).await {
                Ok(_) => {
                    recorder.stats.proposed.fetch_add(n, Ordering::Relaxed);
                    pending.drain(..take);
                    let log = recorder.log.clone();
                    let released = tokio::task::spawn_blocking(move || {
                        log.release_through(last)?;
                        log.ensure_spare()
                    })
                    .await;
                    if !matches!(released, Ok(Ok(()))) {
                        // The records are in the log; their segment stays until a later batch
                        // releases it (or a restart skips it by the log's mark).
                        tracing::warn!(through = last, "dropping logged outbox segments failed");
                    }
                }
                Err(status) => {
                    // No leader, a partition, a rejected batch: keep the records and retry.
                    tracing::warn!(error = %status.message(), pending_through = last, "proposing the issuance outbox failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authsec_domain::issuance::CredentialKind;

    fn issuance() -> Issuance {
        Issuance {
            seq: 0,
            kind: CredentialKind::AccessToken,
            id: "jti".into(),
            subject: "c".into(),
            client_id: "c".into(),
            method: "client_secret_basic".into(),
            audience: vec![],
            scopes: vec![],
            delegation: None,
            actor: None,
            issued_at_ms: 0,
            expires_at_ms: 0,
            applied_index: 0,
        }
    }

    /// A node restarted with a backlog in its outbox proposes more than it records: recording
    /// must go on (the first credentials soak after the outbox moved to its own files found
    /// the writer thread dead of an overflow there, and the node refusing every credential).
    #[tokio::test]
    async fn recording_goes_on_after_the_backlog_of_a_restart_is_proposed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = authsec_storage::open(dir.path()).expect("store");
        let (w, log, next) = authsec_storage::outbox::open(&store).expect("outbox");
        let recorder = Recorder::start(w, log, next);
        recorder.record(issuance()).await.expect("first record");
        // The flusher proposed the first record and four of the process before.
        recorder.stats.proposed.store(5, Ordering::Relaxed);
        for _ in 0..3 {
            recorder.record(issuance()).await.expect("recorded");
        }
        assert_eq!(recorder.stats.recorded.load(Ordering::Relaxed), 4);
        assert_eq!(recorder.stats.waiting(), 0);
        recorder.stop().await;
    }
}
