//! `/healthz`, `/readyz` and Prometheus `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::services::Ctx;
use crate::writer::WriteMetrics;

#[derive(Debug, Clone)]
pub struct HttpState {
    pub ctx: Arc<Ctx>,
    pub writes: Arc<WriteMetrics>,
    pub outbox: Arc<crate::outbox::OutboxStats>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when a leader is known and this node is a voter or learner in good standing.
async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let m = s.ctx.writer.raft().metrics().borrow().clone();
    if m.running_state.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "raft stopped\n".to_string(),
        );
    }
    match m.current_leader {
        Some(l) => (
            StatusCode::OK,
            format!(
                "ready: leader {l}, applied {}\n",
                m.last_applied.map_or(0, |x| x.index)
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader known\n".to_string(),
        ),
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let m = s.ctx.writer.raft().metrics().borrow().clone();
    let head = *s.ctx.head_rx.borrow();
    let id = s.ctx.node_id;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node_id=\"{id}\"}} {v}"
        );
    };
    gauge("authsec_raft_term", "Current Raft term.", m.current_term);
    gauge(
        "authsec_raft_is_leader",
        "1 if this node is the leader.",
        u64::from(m.current_leader == Some(id)),
    );
    gauge(
        "authsec_raft_last_log_index",
        "Index of the last log entry.",
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        "authsec_raft_applied_index",
        "Index of the last applied entry.",
        m.last_applied.map_or(0, |l| l.index),
    );
    gauge(
        "authsec_raft_snapshot_index",
        "Index the latest snapshot covers.",
        m.snapshot.map_or(0, |l| l.index),
    );
    gauge(
        "authsec_archive_head_sequence",
        "Sequence of the newest audit record.",
        head.sequence,
    );
    let pruned = s.ctx.reader.pruned().unwrap_or_default();
    gauge(
        "authsec_archive_first_sequence",
        "Sequence of the oldest audit record kept (retention pruned those before it).",
        pruned.through_sequence + 1,
    );
    gauge(
        "authsec_archive_issuance_elided_through",
        "Issuance records up to this sequence were elided by retention (0: none).",
        pruned.issuance_elided_through,
    );
    let w = &s.writes;
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node_id=\"{id}\"}} {v}"
        );
    };
    counter(
        "authsec_write_batches_total",
        "Log entries proposed by this node as leader.",
        w.batches.load(Ordering::Relaxed),
    );
    counter(
        "authsec_write_proposals_total",
        "Commands proposed by this node as leader.",
        w.proposals.load(Ordering::Relaxed),
    );
    counter(
        "authsec_writes_accepted_total",
        "Proposals committed and accepted.",
        w.accepted.load(Ordering::Relaxed),
    );
    counter(
        "authsec_writes_rejected_total",
        "Proposals committed and rejected by the rules.",
        w.rejected.load(Ordering::Relaxed),
    );
    counter(
        "authsec_writes_failed_total",
        "Proposals whose outcome is unknown.",
        w.failed.load(Ordering::Relaxed),
    );
    counter(
        "authsec_writes_forwarded_total",
        "Writes forwarded to the leader.",
        w.forwarded.load(Ordering::Relaxed),
    );
    let o = &s.outbox;
    counter(
        "authsec_issuances_recorded_total",
        "Credentials recorded in this node's outbox (synced) before they were returned.",
        o.recorded.load(Ordering::Relaxed),
    );
    counter(
        "authsec_outbox_syncs_total",
        "Synced outbox writes (each covers every issuance waiting at that moment).",
        o.syncs.load(Ordering::Relaxed),
    );
    counter(
        "authsec_issuances_proposed_total",
        "Outbox records committed to the log by this node.",
        o.proposed.load(Ordering::Relaxed),
    );
    let sinks = s
        .ctx
        .sink_stats
        .sinks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    type Pick = fn(&(String, u64, u64)) -> u64;
    let per_sink: [(&str, &str, Pick); 2] = [
        (
            "authsec_audit_sink_acked_sequence",
            "Last audit record the sink acknowledged.",
            |s| s.1,
        ),
        (
            "authsec_audit_sink_lag_records",
            "Records committed but not yet acknowledged by the sink.",
            |s| s.2,
        ),
    ];
    for (metric, help, pick) in per_sink.iter().filter(|_| !sinks.is_empty()) {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for s in &sinks {
            let _ = writeln!(
                out,
                "{metric}{{node_id=\"{id}\",sink=\"{}\"}} {}",
                s.0,
                pick(s)
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
