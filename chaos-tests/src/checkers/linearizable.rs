//! Invariant 3: acknowledged writes are linearizable. Every registration is a write to its
//! own key, and the archive puts all of them in one total order. That order must agree with
//! real time: if write A was acknowledged before write B started, A comes first.
//!
//! Writes whose outcome the client never learned may or may not be in the order; when they
//! are, their start still bounds it (they cannot take effect before they were sent), and
//! they have no end. Checked on every node's archive in O(n log n): walking the order, each
//! acknowledged write must end no earlier than the latest start of the writes before it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{History, Violation, REGISTERED, REPORT_MAX};
use crate::oracle::OpResult;

pub const NAME: &str = "writes-linearizable";

pub fn check(h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    let ops: BTreeMap<String, &crate::oracle::Op> = h
        .ops
        .iter()
        .map(|op| (super::subject_of(&op.key), op))
        .collect();
    for (node, archive) in &h.archives {
        // (position, start, end or None, key) in archive order.
        let mut latest: Option<(Duration, &str, u64)> = None;
        let mut found = 0;
        for r in archive.iter().filter(|r| r.kind == REGISTERED) {
            let Some(op) = ops.get(&r.subject) else {
                continue;
            };
            if matches!(op.result, OpResult::Rejected(_)) {
                out.push(Violation {
                    checker: NAME,
                    detail: format!(
                        "node {node}: write {} was refused, yet it is archived at #{}",
                        op.key, r.sequence
                    ),
                });
                continue;
            }
            if let (Some((start, key, seq)), OpResult::Ok { .. }) = (latest, &op.result) {
                if op.end < start {
                    found += 1;
                    if found <= REPORT_MAX {
                        out.push(Violation {
                            checker: NAME,
                            detail: format!(
                                "node {node}: write {} was acknowledged at {:?}, before write {key} \
                                 started at {start:?}, yet it is ordered after it (#{} after #{seq})",
                                op.key, op.end, r.sequence
                            ),
                        });
                    }
                }
            }
            if latest.is_none_or(|(s, _, _)| op.start > s) {
                latest = Some((op.start, op.key.as_str(), r.sequence));
            }
        }
        if found > REPORT_MAX {
            out.push(Violation {
                checker: NAME,
                detail: format!("node {node}: {found} acknowledged writes out of real-time order"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::{subject_of, Rec};
    use crate::oracle::Op;

    fn op(key: &str, start: u64, end: u64, acked: bool) -> Op {
        Op {
            key: key.into(),
            node: 1,
            start: Duration::from_millis(start),
            end: Duration::from_millis(end),
            result: if acked {
                OpResult::Ok {
                    log_index: 1,
                    sequence: 0,
                    leader_id: 1,
                }
            } else {
                OpResult::Unknown("timeout".into())
            },
        }
    }

    fn archive(keys: &[&str]) -> Vec<Rec> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| Rec {
                sequence: i as u64 + 1,
                hash: String::new(),
                kind: REGISTERED.into(),
                subject: subject_of(k),
                bytes: vec![],
            })
            .collect()
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let mut h = History {
            ops: vec![op("a", 0, 10, true), op("b", 5, 8, true)],
            ..Default::default()
        };
        h.archives.insert(1, archive(&["a", "b"]));
        assert!(check(&h).is_empty());
        h.archives.insert(1, archive(&["b", "a"]));
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_write_ordered_after_one_that_started_later_is_a_violation() {
        // a ended at 10; b started at 20; b is ordered first.
        let mut h = History {
            ops: vec![op("a", 0, 10, true), op("b", 20, 30, true)],
            ..Default::default()
        };
        h.archives.insert(1, archive(&["b", "a"]));
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.contains("write a"), "{v:?}");
    }

    #[test]
    fn unknown_writes_bound_by_their_start_only() {
        // u's outcome is unknown; it started at 20, after a ended: a may not follow it.
        let mut h = History {
            ops: vec![op("a", 0, 10, true), op("u", 20, 1000, false)],
            ..Default::default()
        };
        h.archives.insert(1, archive(&["u", "a"]));
        assert_eq!(check(&h).len(), 1);
        // An unknown write placed late is fine whatever its times.
        h.archives.insert(1, archive(&["a", "u"]));
        assert!(check(&h).is_empty());
    }
}
