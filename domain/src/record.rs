//! The audit record format and its hash chain. This format is fixed: records already archived
//! must verify forever, so a change is a new codec version, never an edit.
//!
//! `hash_n = SHA-256(hash_{n-1} || record_bytes_n)`, with `hash_0` all zeros, where
//! `record_bytes_n` is the codec encoding of the record (tag [`Tag::AUDIT_RECORD`]). Exports
//! carry those exact bytes so anyone can re-verify the chain offline.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError, Tag};
use crate::command::Actor;
use crate::event::Event;

pub type Hash32 = [u8; 32];

/// The hash before the first record.
pub const GENESIS_HASH: Hash32 = [0u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, ... with no gaps.
    pub sequence: u64,
    /// The Raft log index of the entry that produced it.
    pub log_index: u64,
    /// Leader-stamped, never decreasing, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub actor: Actor,
    /// `Event::kind`, e.g. `client.registered`.
    pub kind: String,
    /// `Event::subject`, e.g. `client:billing-agent`.
    pub subject: String,
    /// The event itself; events carry no secrets.
    pub event: Event,
}

impl AuditRecord {
    /// The canonical bytes that are archived, hashed and exported.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(Tag::AUDIT_RECORD, self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(Tag::AUDIT_RECORD, bytes)
    }
}

/// What the archive keeps of a `credential.issued` record that retention elided (issue 9's
/// shorter bound for issuance records): its place in the chain (sequence and hash, stored
/// beside it), when, which entry and which node, but none of its content. The chain still
/// links through its hash; an `audit.issuances_elided` record later in the chain commits to
/// the sequence and hash of every record it elided, which is what proves a remnant is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElidedRecord {
    pub time_ms: u64,
    pub log_index: u64,
    pub node_id: u64,
}

/// A remnant's first bytes: never a codec encoding's (those start with the codec version, 1).
const ELIDED_MARK: [u8; 2] = [0x00, b'E'];
const ELIDED_BYTES: usize = 2 + 8 * 3;

impl ElidedRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ELIDED_BYTES);
        b.extend_from_slice(&ELIDED_MARK);
        b.extend_from_slice(&self.time_ms.to_be_bytes());
        b.extend_from_slice(&self.log_index.to_be_bytes());
        b.extend_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// `Some` if `bytes` is a remnant, `None` if it is a record's encoding.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ELIDED_BYTES || bytes[..2] != ELIDED_MARK {
            return None;
        }
        let u = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Self {
            time_ms: u(2),
            log_index: u(10),
            node_id: u(18),
        })
    }
}

/// What an elision commits to: SHA-256 over `sequence (u64 BE) || hash` of every record it
/// elided, in order, and how many there were.
pub fn elision_digest<'a>(items: impl IntoIterator<Item = (u64, &'a Hash32)>) -> (u64, Hash32) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    for (seq, hash) in items {
        h.update(seq.to_be_bytes());
        h.update(hash);
        n += 1;
    }
    (n, h.finalize().into())
}

/// The newest archived record: its sequence (0 when empty) and chain hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHead {
    pub sequence: u64,
    pub hash: Hash32,
}

impl Default for ArchiveHead {
    fn default() -> Self {
        Self {
            sequence: 0,
            hash: GENESIS_HASH,
        }
    }
}

/// One link of the chain.
pub fn chain_next(prev: &Hash32, record_bytes: &[u8]) -> Hash32 {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(record_bytes);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remnants_never_decode_as_records() {
        let s = ElidedRecord {
            time_ms: 1,
            log_index: 2,
            node_id: 3,
        };
        assert_eq!(ElidedRecord::from_bytes(&s.to_bytes()), Some(s));
        let r = AuditRecord {
            sequence: 1,
            log_index: 1,
            time_ms: 1,
            actor: Actor {
                principal: crate::command::Principal::System,
                via_node: 1,
            },
            kind: "audit.pruned".into(),
            subject: "node:1".into(),
            event: Event::AuthFailuresRecorded {
                node_id: 1,
                failures: vec![],
            },
        };
        assert_eq!(ElidedRecord::from_bytes(&r.to_bytes()), None);
        let (n, d) = elision_digest([(1, &[1u8; 32]), (2, &[2u8; 32])]);
        assert_eq!(n, 2);
        assert_ne!(d, elision_digest([(1, &[1u8; 32]), (3, &[2u8; 32])]).1);
    }

    #[test]
    fn chain_depends_on_every_byte_and_order() {
        let a = chain_next(&GENESIS_HASH, b"one");
        let b = chain_next(&a, b"two");
        let b_swapped = chain_next(&chain_next(&GENESIS_HASH, b"two"), b"one");
        assert_ne!(b, b_swapped);
        assert_ne!(chain_next(&a, b"twp"), b);
        assert_eq!(chain_next(&a, b"two"), b);
    }
}
