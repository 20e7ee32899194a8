//! Credential invariant 1: no node issues a credential beyond its freshness bound. A node cut
//! off from the majority at `from` last heard from a leader with a quorum no later than
//! `from`, so from `from + max_staleness` on it must refuse; any credential it hands out after
//! that (plus a margin for the partition taking hold) and before the cut heals is a
//! violation. Judged twice: from what clients received (the whole request inside the window)
//! and from the node's own issuance records in the audit log (their issue time inside it).

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
    let wall = |d: Duration| c.t0_wall_ms + d.as_millis() as u64;
    for rec in &c.export {
        let Event::IssuanceBatchRecorded { node_id, batch } = &rec.event else {
            continue;
        };
        for item in &batch.items {
            // A skewed node stamped its own clock: undo the skew it ran with.
            let mut at = item.issued_at_ms as i64;
            for (span, off) in c.faults.skews.iter().filter(|(s, _)| s.node == *node_id) {
                let real = at - off;
                if real >= wall(span.from) as i64 - 1000 && real <= wall(span.to) as i64 + 1000 {
                    at = real;
                }
            }
            let at = at.max(0) as u64;
            for cut in c.faults.cuts.iter().filter(|s| s.node == *node_id) {
                if at >= wall(cut.from + bound) && at <= wall(cut.to) {
                    out.push(Violation {
                        checker: NAME,
                        detail: format!(
                            "node {node_id}'s issuance record (audit sequence {}) shows credential {} issued {} ms into its cut from the majority (bound {} ms)",
                            rec.sequence,
                            item.id,
                            at.saturating_sub(wall(cut.from)),
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
