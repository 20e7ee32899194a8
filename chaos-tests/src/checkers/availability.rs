//! Credential figure (not an invariant): issuance availability on the majority side. Of the
//! credential requests sent to nodes that were neither cut off from the majority nor down
//! while the request ran, the share that returned a credential; and the share of one-second
//! windows in which at least one such request did. A refusal by policy (a scope the roles no
//! longer grant, say) is an answer, not an outage: such requests are counted apart.
//!
//! The same requests are also tallied by the fault in progress when each began (faults run
//! one at a time: a fault, its heal, the recovery, then the next), so a report shows which
//! faults cost the majority side its credentials, and a kind of fault that should cost
//! nothing (slow links, a skewed clock on one node) stands out when it does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use super::History;
use crate::nemesis::Fault;

/// What happened to majority-side requests while one kind of fault was in progress.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClassTally {
    /// Faults of this kind injected.
    pub faults: usize,
    pub requests: usize,
    pub issued: usize,
    /// Refused as "not now" (unavailable, beyond the freshness bound).
    pub refused: usize,
    /// No answer.
    pub failed: usize,
}

/// The row of requests sent before the first fault.
pub const BEFORE_FAULTS: &str = "(before the first fault)";

#[derive(Debug, Default, Clone)]
pub struct Figure {
    pub requests: usize,
    pub issued: usize,
    pub refused: usize,
    pub failed: usize,
    /// Refused by policy (4xx, permission): not counted in `requests`.
    pub denied: usize,
    pub windows: usize,
    pub windows_with_issue: usize,
    /// By the kind of fault in progress when the request began.
    pub by_fault: BTreeMap<&'static str, ClassTally>,
}

impl Figure {
    pub fn request_share(&self) -> f64 {
        self.issued as f64 / self.requests.max(1) as f64
    }
    pub fn window_share(&self) -> f64 {
        self.windows_with_issue as f64 / self.windows.max(1) as f64
    }

    /// A markdown table: per kind of fault, the majority-side requests and how they ended,
    /// the kinds that cost the most first.
    pub fn by_fault_table(&self) -> String {
        let mut rows: Vec<(&&str, &ClassTally)> = self.by_fault.iter().collect();
        rows.sort_by_key(|(name, t)| (std::cmp::Reverse(t.refused + t.failed), **name));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nissuance on the majority side, by the fault in progress when each request began:\n"
        );
        let _ = writeln!(
            s,
            "| fault | faults | requests | issued | unavailable | no answer |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for (name, t) in rows {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {:.1} % | {} | {} |",
                t.faults,
                t.requests,
                t.issued as f64 * 100.0 / t.requests.max(1) as f64,
                t.refused,
                t.failed
            );
        }
        s
    }
}

/// The kind of fault in progress at `t`: the last one begun at or before it.
fn fault_at(faults: &[(Duration, Fault)], t: Duration) -> &'static str {
    let i = faults.partition_point(|(at, _)| *at <= t);
    match i {
        0 => BEFORE_FAULTS,
        i => faults[i - 1].1.class(),
    }
}

/// `faults`: each fault as it began, in order.
pub fn figure(h: &History, faults: &[(Duration, Fault)]) -> Option<Figure> {
    let c = h.creds.as_ref()?;
    let mut f = Figure::default();
    for (_, fault) in faults {
        f.by_fault.entry(fault.class()).or_default().faults += 1;
    }
    let mut asked = BTreeSet::new();
    let mut hit = BTreeSet::new();
    for r in &c.log.requests {
        if c.faults.excused(r.node).any(|s| s.overlaps(r.start, r.end)) {
            continue;
        }
        if let crate::creds::Outcome::Refused(why) = &r.outcome {
            if !unavailable(why) {
                f.denied += 1;
                continue;
            }
        }
        f.requests += 1;
        asked.insert(r.start.as_secs());
        let class = f.by_fault.entry(fault_at(faults, r.start)).or_default();
        class.requests += 1;
        match &r.outcome {
            crate::creds::Outcome::Issued(_) => {
                f.issued += 1;
                class.issued += 1;
                hit.insert(r.end.as_secs());
            }
            crate::creds::Outcome::Refused(_) => {
                f.refused += 1;
                class.refused += 1;
            }
            crate::creds::Outcome::Failed(_) => {
                f.failed += 1;
                class.failed += 1;
            }
        }
    }
    f.windows = asked.len();
    f.windows_with_issue = asked.intersection(&hit).count();
    Some(f)
}

/// Whether a refusal says "not now" (the node cannot issue) rather than "not allowed".
pub fn unavailable(why: &str) -> bool {
    why.starts_with("503")
        || why.starts_with("429")
        || why.contains("Unavailable")
        || why.contains("freshness")
        || why.contains("temporarily_unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::{CredHistory, FaultLog, Span};
    use crate::creds::{CredKind, Outcome, Request};

    fn req(node: u64, start_ms: u64, outcome: Outcome) -> Request {
        Request {
            kind: CredKind::Access,
            node,
            start: Duration::from_millis(start_ms),
            end: Duration::from_millis(start_ms + 5),
            outcome,
        }
    }

    #[test]
    fn requests_are_tallied_under_the_fault_in_progress_when_they_began() {
        let refused = || Outcome::Refused("503 temporarily_unavailable: freshness".into());
        let h = History {
            creds: Some(CredHistory {
                log: crate::creds::CredLog {
                    requests: vec![
                        req(1, 500, Outcome::Failed("connection refused".into())),
                        req(1, 1_500, refused()),
                        req(2, 1_600, refused()),
                        // Node 3 was cut off then: excused, in no row.
                        req(3, 1_700, refused()),
                        // A refusal by policy is an answer: in no row.
                        req(1, 5_000, Outcome::Refused("400 invalid_scope".into())),
                        req(2, 6_000, Outcome::Failed("timeout".into())),
                    ],
                    ..Default::default()
                },
                faults: FaultLog {
                    cuts: vec![Span {
                        node: 3,
                        from: Duration::from_millis(1_000),
                        to: Duration::from_millis(2_000),
                    }],
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let faults = [
            (
                Duration::from_millis(1_000),
                Fault::KillLeader { down_ms: 2_000 },
            ),
            (Duration::from_millis(4_000), Fault::RollingRestart),
            (Duration::from_millis(6_000), Fault::RollingRestart),
            (
                Duration::from_millis(9_000),
                Fault::SlowLinks {
                    ms: 1_000,
                    delay_ms: 10,
                    jitter_ms: 5,
                },
            ),
        ];
        let f = figure(&h, &faults).expect("a credential run");
        let row = |name: &str| f.by_fault.get(name).copied().unwrap_or_default();
        assert_eq!(
            row(BEFORE_FAULTS),
            ClassTally {
                faults: 0,
                requests: 1,
                issued: 0,
                refused: 0,
                failed: 1
            }
        );
        assert_eq!(
            row("kill -9 leader"),
            ClassTally {
                faults: 1,
                requests: 2,
                issued: 0,
                refused: 2,
                failed: 0
            }
        );
        assert_eq!(
            row("rolling restart"),
            ClassTally {
                faults: 2,
                requests: 1,
                issued: 0,
                refused: 0,
                failed: 1
            }
        );
        // A kind injected but with no request in its time still has its row.
        assert_eq!(row("slow links").faults, 1);
        assert_eq!((f.requests, f.refused, f.failed, f.denied), (4, 2, 2, 1));
        let table = f.by_fault_table();
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            lines[1], "| kill -9 leader | 1 | 2 | 0.0 % | 2 | 0 |",
            "the costliest first: {table}"
        );
    }
}
