//! The one codec for everything authsec persists or hashes.
//!
//! Envelope: `[version u8][tag u8][bincode 2 payload][crc32 LE of the preceding bytes]`.
//! The payload is bincode 2.0.1's standard configuration (varint integers, little endian) over
//! serde. A later codec swap is a new version byte here and nowhere else; golden files in
//! `domain/tests/golden` pin every persisted shape.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits;

/// The current envelope version.
pub const VERSION: u8 = 1;

/// What a stored value is: decoding with the wrong tag is an error, never a misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag(pub u8);

impl Tag {
    pub const AUDIT_RECORD: Tag = Tag(0x01);
    pub const STATE_META: Tag = Tag(0x02);
    pub const NODE_RECORD: Tag = Tag(0x03);
    pub const CLIENT: Tag = Tag(0x04);
    pub const ARCHIVE_HEAD: Tag = Tag(0x05);
    pub const BATCH: Tag = Tag(0x06);
    pub const BATCH_OUTCOME: Tag = Tag(0x07);
    pub const SECURITY_STATE: Tag = Tag(0x08);
    pub const IDENTITY_META: Tag = Tag(0x09);
    pub const CLIENT_AUTH: Tag = Tag(0x0a);
    pub const ENTRY: Tag = Tag(0x0b);
    pub const ROLE: Tag = Tag(0x0c);
    pub const BINDING: Tag = Tag(0x0d);
    pub const DELEGATION: Tag = Tag(0x0e);
    pub const AGENT: Tag = Tag(0x0f);
    pub const REVOKED_TOKEN: Tag = Tag(0x11);
    pub const REVOKED_SUBJECT: Tag = Tag(0x12);
    pub const NODE_KEY: Tag = Tag(0x13);
    pub const KEYS_META: Tag = Tag(0x14);
    pub const FEDERATION: Tag = Tag(0x15);
    pub const ROOTS_META: Tag = Tag(0x16);
    pub const ISSUANCE_META: Tag = Tag(0x17);
    /// A record in a node's issuance outbox (node-local), and its next sequence.
    pub const ISSUANCE: Tag = Tag(0x18);
    /// The last audit checkpoint (`proj_meta/audit`).
    pub const AUDIT_META: Tag = Tag(0x19);
    /// Where retention pruned the archive to (`proj_meta/audit_pruned`).
    pub const AUDIT_PRUNED: Tag = Tag(0x1a);
    /// What each node last reported of its audit sinks (`proj_meta/sink_acks`).
    pub const SINK_ACKS: Tag = Tag(0x1b);
    /// Live admin certificates (`proj_meta/admins`).
    pub const ADMINS: Tag = Tag(0x1c);
    // 0x40.. are the storage crate's own (raft log entries, votes, membership, ...).
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("value too short ({len} bytes)")]
    TooShort { len: usize },
    #[error("value too large ({len} bytes, limit {limit})")]
    TooLarge { len: usize, limit: usize },
    #[error("unknown codec version {0}")]
    UnknownVersion(u8),
    #[error("wrong value tag {actual:#04x}, expected {expected:#04x}")]
    WrongTag { expected: u8, actual: u8 },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Payload(String),
    #[error("{0} trailing bytes after the payload")]
    TrailingBytes(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ limits::CODEC_BYTES_MAX }>()
}

/// Encode a value under `tag`. Encoding our own in-memory values cannot fail: a failure is a
/// broken invariant (a type that serde cannot represent), so it panics.
pub fn encode<T: Serialize + ?Sized>(tag: Tag, value: &T) -> Vec<u8> {
    // The payload goes straight after the header: no second buffer and no copy of it (an
    // entry of issuance records is half a megabyte).
    let mut out = vec![VERSION, tag.0];
    bincode::serde::encode_into_std_write(value, &mut out, config()).unwrap_or_else(|e| {
        panic!(
            "codec: encoding a value with tag {:#04x} failed: {e}",
            tag.0
        )
    });
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decode a value stored under `tag`, checking version, tag, checksum and exact length.
pub fn decode<T: DeserializeOwned>(tag: Tag, bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < 6 {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    if bytes.len() > limits::CODEC_BYTES_MAX {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit: limits::CODEC_BYTES_MAX,
        });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(body);
    if body[0] != VERSION {
        return Err(CodecError::UnknownVersion(body[0]));
    }
    if body[1] != tag.0 {
        return Err(CodecError::WrongTag {
            expected: tag.0,
            actual: body[1],
        });
    }
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(&body[2..], config())
        .map_err(|e| CodecError::Payload(e.to_string()))?;
    let rest = body.len() - 2 - used;
    if rest != 0 {
        return Err(CodecError::TrailingBytes(rest));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let v: (u64, String) = (42, "hello".into());
        let bytes = encode(Tag(0x10), &v);
        assert_eq!(decode::<(u64, String)>(Tag(0x10), &bytes), Ok(v));
        assert!(matches!(
            decode::<(u64, String)>(Tag(0x11), &bytes),
            Err(CodecError::WrongTag { .. })
        ));
        let mut flipped = bytes.clone();
        flipped[4] ^= 0x01;
        assert!(matches!(
            decode::<(u64, String)>(Tag(0x10), &flipped),
            Err(CodecError::Checksum { .. })
        ));
        assert!(decode::<(u64, String)>(Tag(0x10), &bytes[..bytes.len() - 3]).is_err());
        assert!(matches!(
            decode::<(u64, String)>(Tag(0x10), &bytes[..3]),
            Err(CodecError::TooShort { .. })
        ));
        let mut v2 = bytes.clone();
        v2[0] = 9;
        assert_eq!(
            decode::<(u64, String)>(Tag(0x10), &v2),
            Err(CodecError::UnknownVersion(9))
        );
    }
}
