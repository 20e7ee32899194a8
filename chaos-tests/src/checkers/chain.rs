//! Invariant 4: the archive's hash chain verifies on every node. Sequences run from 1 with
//! no gap, each hash is SHA-256(previous hash || record bytes) from a zero genesis, and the
//! last record is the head the node reports. Recomputed here, independently of the node.

use sha2::{Digest, Sha256};

use super::{History, Violation};

pub const NAME: &str = "archive-chain-verifies";

pub fn check(h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    for (node, archive) in &h.archives {
        let mut prev = [0u8; 32];
        let mut broken = None;
        for (i, r) in archive.iter().enumerate() {
            let expected_seq = i as u64 + 1;
            if r.sequence != expected_seq {
                broken = Some(format!(
                    "record at position {expected_seq} has sequence {} (a gap or a reorder)",
                    r.sequence
                ));
                break;
            }
            let mut d = Sha256::new();
            d.update(prev);
            d.update(&r.bytes);
            let hash: [u8; 32] = d.finalize().into();
            if hex::encode(hash) != r.hash {
                broken = Some(format!(
                    "record #{} hashes to {}, but carries {}",
                    r.sequence,
                    &hex::encode(hash)[..16],
                    &r.hash[..r.hash.len().min(16)]
                ));
                break;
            }
            prev = hash;
        }
        if broken.is_none() {
            if let Some(head) = h.statuses.get(node).and_then(|s| s.archive_head.as_ref()) {
                let last = archive.last().map(|r| (r.sequence, r.hash.as_str()));
                if last.unwrap_or((0, &hex::encode([0u8; 32])))
                    != (head.sequence, head.hash.as_str())
                {
                    broken = Some(format!(
                        "the node reports head #{} {}, but its archive ends at {:?}",
                        head.sequence,
                        &head.hash[..head.hash.len().min(16)],
                        last.map(|(s, _)| s)
                    ));
                }
            }
        }
        if let Some(detail) = broken {
            out.push(Violation {
                checker: NAME,
                detail: format!("node {node}: {detail}"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::Rec;

    fn chain(records: &[&[u8]]) -> Vec<Rec> {
        let mut prev = [0u8; 32];
        records
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut d = Sha256::new();
                d.update(prev);
                d.update(b);
                prev = d.finalize().into();
                Rec {
                    sequence: i as u64 + 1,
                    hash: hex::encode(prev),
                    kind: String::new(),
                    subject: String::new(),
                    bytes: b.to_vec(),
                }
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_passes_and_any_edit_or_gap_fails() {
        let good = chain(&[b"one", b"two", b"three"]);
        let mut h = History::default();
        h.archives.insert(1, good.clone());
        assert!(check(&h).is_empty());

        let mut edited = good.clone();
        edited[1].bytes = b"tw0".to_vec();
        h.archives.insert(1, edited);
        let v = check(&h);
        assert!(v.len() == 1 && v[0].detail.contains("#2"), "{v:?}");

        let mut gap = good.clone();
        gap.remove(1);
        h.archives.insert(1, gap);
        let v = check(&h);
        assert!(v.len() == 1 && v[0].detail.contains("gap"), "{v:?}");
    }
}
