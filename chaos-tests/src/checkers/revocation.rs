//! Credential invariant 2: a revoked token is refused by every node connected to the
//! majority, and by every SDK verifier subscribed to such a node, within 1 s of the
//! revocation's acknowledgement. Every acknowledged revocation is probed after that second
//! through each node's introspection and each node's subscribed verifier; a probe that saw
//! the token honoured is a violation unless its node was cut off or down at some point from
//! the revocation to the probe, or came back less than the bound before it (a node that
//! rejoins gets the same second to catch up). A probe nobody answered judges nothing.

use std::time::Duration;

use crate::creds::ProbeVia;

use super::{History, Violation, REPORT_MAX};

pub const NAME: &str = "revocation-honoured";

pub const BOUND: Duration = Duration::from_secs(1);

/// Probes judged, excused and unanswered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub judged: usize,
    pub excused: usize,
    pub unanswered: usize,
}

pub fn tally(h: &History) -> Tally {
    let mut t = Tally::default();
    let _ = judge(h, &mut t);
    t
}

pub fn check(h: &History) -> Vec<Violation> {
    let mut out = judge(h, &mut Tally::default());
    out.truncate(REPORT_MAX);
    out
}

fn judge(h: &History, t: &mut Tally) -> Vec<Violation> {
    let Some(c) = &h.creds else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let acked: std::collections::BTreeMap<&str, &crate::creds::Revocation> = c
        .log
        .revocations
        .iter()
        .map(|r| (r.jti.as_str(), r))
        .collect();
    for p in &c.log.probes {
        let Some(rev) = acked.get(p.jti.as_str()) else {
            continue;
        };
        if p.start < rev.acked + BOUND {
            continue;
        }
        let excused = c
            .faults
            .excused(p.node)
            .any(|s| s.from <= p.end && s.to + BOUND > p.start && s.to >= rev.start);
        if excused {
            t.excused += 1;
            continue;
        }
        match p.accepted {
            None => t.unanswered += 1,
            Some(false) => t.judged += 1,
            Some(true) => {
                t.judged += 1;
                out.push(Violation {
                    checker: NAME,
                    detail: format!(
                        "node {} {} honoured token {} {} ms after its revocation{} was acknowledged (through node {}, at log index {}): {}",
                        p.node,
                        match p.via {
                            ProbeVia::Introspection => "(introspection)",
                            ProbeVia::Verifier => "(an SDK verifier subscribed to it)",
                        },
                        p.jti,
                        (p.start - rev.acked).as_millis(),
                        rev.subject
                            .as_deref()
                            .map(|s| format!(" (as {s}, every credential below the index)"))
                            .unwrap_or_default(),
                        rev.node,
                        rev.index,
                        p.detail
                    ),
                });
            }
        }
    }
    out
}
