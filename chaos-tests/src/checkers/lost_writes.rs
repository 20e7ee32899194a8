//! Invariant 1: no acknowledged write is lost. Every write the cluster acknowledged is in
//! every node's projection and archive, and the receipt's sequence names that very write.

use std::collections::BTreeMap;

use super::{subject_of, History, Violation, REGISTERED, REPORT_MAX};
use crate::oracle::OpResult;

pub const NAME: &str = "no-acknowledged-write-lost";

pub fn check(h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    for (node, archive) in &h.archives {
        let by_subject: BTreeMap<&str, u64> = archive
            .iter()
            .filter(|r| r.kind == REGISTERED)
            .map(|r| (r.subject.as_str(), r.sequence))
            .collect();
        let by_seq: BTreeMap<u64, &str> = archive
            .iter()
            .map(|r| (r.sequence, r.subject.as_str()))
            .collect();
        let projection = h.projections.get(node);
        let mut found = 0;
        for op in &h.ops {
            let OpResult::Ok { sequence, .. } = op.result else {
                continue;
            };
            let subject = subject_of(&op.key);
            let mut problems = Vec::new();
            if !by_subject.contains_key(subject.as_str()) {
                problems.push("not in its archive".to_owned());
            }
            if let Some(p) = projection {
                if !p.contains(&op.key) {
                    problems.push("not in its projection".to_owned());
                }
            }
            if sequence > 0 {
                match by_seq.get(&sequence) {
                    Some(s) if *s == subject => {}
                    Some(s) => problems.push(format!(
                        "receipt names sequence {sequence}, which is about {s}"
                    )),
                    None => problems.push(format!(
                        "receipt names sequence {sequence}, which it does not hold"
                    )),
                }
            }
            if !problems.is_empty() {
                found += 1;
                if found <= REPORT_MAX {
                    out.push(Violation {
                        checker: NAME,
                        detail: format!(
                            "write {} acknowledged via node {} at {:?}: on node {node} {}",
                            op.key,
                            op.node,
                            op.end,
                            problems.join("; ")
                        ),
                    });
                }
            }
        }
        if found > REPORT_MAX {
            out.push(Violation {
                checker: NAME,
                detail: format!(
                    "node {node}: {found} acknowledged writes missing or misplaced in all"
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::Rec;
    use crate::oracle::Op;
    use std::time::Duration;

    fn rec(sequence: u64, key: &str) -> Rec {
        Rec {
            sequence,
            hash: String::new(),
            kind: REGISTERED.into(),
            subject: subject_of(key),
            bytes: vec![],
        }
    }

    fn acked(key: &str, sequence: u64) -> Op {
        Op {
            key: key.into(),
            node: 1,
            start: Duration::ZERO,
            end: Duration::from_millis(1),
            result: OpResult::Ok {
                log_index: 1,
                sequence,
                leader_id: 1,
            },
        }
    }

    #[test]
    fn missing_and_misplaced_writes_are_violations() {
        let mut h = History {
            ops: vec![acked("a", 1), acked("b", 2), acked("c", 0)],
            ..Default::default()
        };
        h.archives
            .insert(1, vec![rec(1, "a"), rec(2, "b"), rec(3, "c")]);
        h.projections
            .insert(1, ["a", "b", "c"].iter().map(|s| s.to_string()).collect());
        assert!(check(&h).is_empty());

        h.archives.insert(2, vec![rec(1, "a"), rec(2, "c")]);
        h.projections
            .insert(2, ["a", "c"].iter().map(|s| s.to_string()).collect());
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].detail.contains("write b") && v[0].detail.contains("node 2"),
            "{v:?}"
        );
    }

    #[test]
    fn unacknowledged_writes_may_be_missing() {
        let mut h = History::default();
        let mut op = acked("x", 0);
        op.result = OpResult::Unknown("timeout".into());
        h.ops.push(op);
        h.archives.insert(1, vec![]);
        assert!(check(&h).is_empty());
    }
}
