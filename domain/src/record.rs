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
    fn chain_depends_on_every_byte_and_order() {
        let a = chain_next(&GENESIS_HASH, b"one");
        let b = chain_next(&a, b"two");
        let b_swapped = chain_next(&chain_next(&GENESIS_HASH, b"two"), b"one");
        assert_ne!(b, b_swapped);
        assert_ne!(chain_next(&a, b"twp"), b);
        assert_eq!(chain_next(&a, b"two"), b);
    }
}
