//! Credential invariant 1: no node issues a credential beyond its freshness bound. Judged
//! three ways:
//!
//! - **From the view a credential was decided on.** A credential carries the log index of the
//!   state its node decided on. If a write at a higher index had already been acknowledged to
//!   a client more than `max_staleness` before the credential was asked for, the node's view
//!   was older than the bound, whatever the reason (cut off, restarted and replaying, lagging):
//!   a violation. Only client-side times, on the run's one clock: no node clock involved.
//! - **From partitions.** A node cut off from the majority at `from` last heard from a leader
//!   with a quorum no later than `from`, so from `from + max_staleness` on it must refuse; a
//!   credential it hands out after that (plus a margin for the partition taking hold) and
//!   before the cut heals is a violation (the whole request inside the window).
//! - **From the node's own issuance records** in the audit log, for credentials no client saw
//!   (answers lost in a fault): their issue time inside such a window.

use std::time::Duration;

use authsec_domain::Event;

use super::{History, Violation, REPORT_MAX};

pub const NAME: &str = "freshness-bound";

/// For the partition to take hold and clocks to be read: in-flight bytes, timer granularity.
pub const MARGIN: Duration = Duration::from_millis(300);

pub fn check(h: &History) -> Vec<Violation> {
    let Some(c) = &h.creds else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let bound = c.max_staleness + MARGIN;
    // Acknowledged writes by end time, with the highest log index acknowledged by then.
    let mut acked: Vec<(Duration, u64)> = h
        .ops
        .iter()
        .filter_map(|o| match o.result {
            crate::oracle::OpResult::Ok { log_index, .. } => Some((o.end, log_index)),
            _ => None,
        })
        .collect();
    acked.sort();
    let mut top = 0;
    for a in &mut acked {
        top = top.max(a.1);
        a.1 = top;
    }
    for r in &c.log.requests {
        let Some(i) = r.issued() else { continue };
        if i.index == 0 || r.start < bound {
            continue;
        }
        let known = acked.partition_point(|(end, _)| *end <= r.start - bound);
        if let Some((end, index)) = known.checked_sub(1).map(|k| acked[k]) {
            if index > i.index {
                out.push(Violation {
                    checker: NAME,
                    detail: format!(
                        "node {} issued a {} ({}) at {:.3}s on its view at log index {}, but index {index} had been acknowledged at {:.3}s, {} ms earlier (bound {} ms)",
                        i.issuer_node.unwrap_or(r.node),
                        r.kind.name(),
                        i.id,
                        r.start.as_secs_f64(),
                        i.index,
                        end.as_secs_f64(),
                        (r.start - end).as_millis(),
                        c.max_staleness.as_millis()
                    ),
                });
            }
        }
    }
    for r in &c.log.requests {
        let Some(i) = r.issued() else { continue };
        let node = i.issuer_node.unwrap_or(r.node);
        for cut in c.faults.cuts.iter().filter(|s| s.node == node) {
            if r.start >= cut.from + bound && r.end <= cut.to {
                out.push(Violation {
                    checker: NAME,
                    detail: format!(
                        "node {node} issued a {} ({}) {} ms after it was cut off from the majority (bound {} ms): asked at {:.3}s, cut {:.3}s-{:.3}s",
                        r.kind.name(),
                        i.id,
                        (r.start - cut.from).as_millis(),
                        c.max_staleness.as_millis(),
                        r.start.as_secs_f64(),
                        cut.from.as_secs_f64(),
                        cut.to.as_secs_f64()
                    ),
                });
                break;
            }
        }
    }
    // The issuance records cover what clients never saw (answers lost in a fault). What a
    // client did see was judged above on the run's own clock; the rest is judged on the
    // node's stamp, unless the node's clock was skewed around then (which clock stamped it
    // cannot be told apart then).
    let seen: std::collections::BTreeSet<&str> = c
        .log
        .requests
        .iter()
        .filter_map(|r| r.issued().map(|i| i.id.as_str()))
        .collect();
    let wall = |d: Duration| (c.t0_wall_ms + d.as_millis() as u64) as i64;
    for rec in &c.export {
        let Event::IssuanceBatchRecorded { node_id, batch } = &rec.event else {
            continue;
        };
        for item in &batch.items {
            if seen.contains(item.id.as_str()) {
                continue;
            }
            let at = item.issued_at_ms as i64;
            let skewed = c.faults.skews.iter().any(|(span, off)| {
                span.node == *node_id
                    && (at - off) >= wall(span.from) - 2_000
                    && (at - off) <= wall(span.to) + 2_000
            });
            if skewed {
                continue;
            }
            for cut in c.faults.cuts.iter().filter(|s| s.node == *node_id) {
                if at >= wall(cut.from + bound) && at <= wall(cut.to) {
                    out.push(Violation {
                        checker: NAME,
                        detail: format!(
                            "node {node_id}'s issuance record (audit sequence {}) shows credential {} issued {} ms into its cut from the majority (bound {} ms)",
                            rec.sequence,
                            item.id,
                            at - wall(cut.from),
                            c.max_staleness.as_millis()
                        ),
                    });
                    break;
                }
            }
        }
    }
    out.truncate(REPORT_MAX);
    out
}
