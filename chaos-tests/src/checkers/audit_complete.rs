//! Credential invariant 5: every credential a client received is in the audit export, with
//! the node that issued it. The one exception is named, not hidden: a node whose data
//! directory the nemesis wiped loses the issuance records it had not yet handed to the log;
//! those are reported apart, and only for credentials that node issued in the
//! [`WIPE_WINDOW`] before the wipe.

use std::collections::BTreeMap;

use authsec_domain::Event;

use super::{History, Violation, REPORT_MAX};

pub const NAME: &str = "issuance-audited";

/// How long before a wipe a credential may still sit in its node's outbox: the node is
/// removed from the cluster first (its flushes are refused from then on), then killed.
pub const WIPE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// Credentials missing from the export because their node's disk was wiped.
pub fn lost_with_wipes(h: &History) -> usize {
    judge(h).1
}

pub fn check(h: &History) -> Vec<Violation> {
    let mut v = judge(h).0;
    v.truncate(REPORT_MAX);
    v
}

fn judge(h: &History) -> (Vec<Violation>, usize) {
    let Some(c) = &h.creds else {
        return (Vec::new(), 0);
    };
    let mut recorded: BTreeMap<&str, u64> = BTreeMap::new();
    for rec in &c.export {
        if let Event::IssuanceBatchRecorded { node_id, batch } = &rec.event {
            for item in &batch.items {
                recorded.insert(item.id.as_str(), *node_id);
            }
        }
    }
    let mut out = Vec::new();
    let mut wiped = 0;
    for r in &c.log.requests {
        let Some(i) = r.issued() else { continue };
        let node = i.issuer_node.unwrap_or(r.node);
        match recorded.get(i.id.as_str()) {
            Some(n) if *n == node => {}
            Some(n) => out.push(Violation {
                checker: NAME,
                detail: format!(
                    "{} {} came from node {node} but its issuance record names node {n}",
                    r.kind.name(),
                    i.id
                ),
            }),
            None => {
                if c.faults
                    .wipes
                    .iter()
                    .any(|(n, at)| *n == node && r.end <= *at && *at - r.end <= WIPE_WINDOW)
                {
                    wiped += 1;
                    continue;
                }
                out.push(Violation {
                    checker: NAME,
                    detail: format!(
                        "{} {} issued by node {node} at {:.3}s is not in node {}'s audit export",
                        r.kind.name(),
                        i.id,
                        r.end.as_secs_f64(),
                        c.export_node
                    ),
                })
            }
        }
    }
    (out, wiped)
}
