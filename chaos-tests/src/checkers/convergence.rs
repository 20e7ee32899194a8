//! Invariant 2: after healing, every node has applied the same index, holds the same
//! projection digest, and has the same archive, ending at the same head hash at the same
//! sequence.

use super::{History, Violation};

pub const NAME: &str = "nodes-converge";

pub fn check(h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut statuses = h.statuses.iter();
    if let Some((first, s0)) = statuses.next() {
        let key = |s: &authsec_api::v1::StatusResponse| {
            let head = s.archive_head.clone().unwrap_or_default();
            (
                s.applied_index,
                s.projection_digest.clone(),
                head.sequence,
                head.hash,
            )
        };
        let k0 = key(s0);
        for (node, s) in statuses {
            let k = key(s);
            if k != k0 {
                out.push(Violation {
                    checker: NAME,
                    detail: format!(
                        "node {node} (applied {}, digest {}, head #{} {}) differs from node {first} \
                         (applied {}, digest {}, head #{} {})",
                        k.0, short(&k.1), k.2, short(&k.3), k0.0, short(&k0.1), k0.2, short(&k0.3)
                    ),
                });
            }
        }
    }
    let mut archives = h.archives.iter();
    if let Some((first, a0)) = archives.next() {
        for (node, a) in archives {
            if a == a0 {
                continue;
            }
            let at = a
                .iter()
                .zip(a0)
                .position(|(x, y)| x != y)
                .unwrap_or_else(|| a.len().min(a0.len()));
            out.push(Violation {
                checker: NAME,
                detail: format!(
                    "archives of node {node} ({} records) and node {first} ({} records) differ from position {} on",
                    a.len(),
                    a0.len(),
                    at + 1
                ),
            });
        }
    }
    out
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use authsec_api::v1;

    fn status(applied: u64, digest: &str, seq: u64) -> v1::StatusResponse {
        v1::StatusResponse {
            applied_index: applied,
            projection_digest: digest.into(),
            archive_head: Some(v1::ArchiveHead {
                sequence: seq,
                hash: format!("h{seq}"),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_different_digest_or_head_is_a_violation() {
        let mut h = History::default();
        h.statuses.insert(1, status(10, "d", 5));
        h.statuses.insert(2, status(10, "d", 5));
        assert!(check(&h).is_empty());
        h.statuses.insert(3, status(10, "e", 5));
        assert_eq!(check(&h).len(), 1);
        h.statuses.insert(3, status(10, "d", 4));
        assert_eq!(check(&h).len(), 1);
    }
}
