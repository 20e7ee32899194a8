//! What nodes send each other, encoded with the domain codec (one tag per message).

use authsec_domain::codec::{self, CodecError, Tag};
use authsec_domain::{Actor, Command, Outcome};
use serde::{Deserialize, Serialize};

pub const TAG_APPEND_REQ: Tag = Tag(0x50);
pub const TAG_APPEND_RES: Tag = Tag(0x51);
pub const TAG_VOTE_REQ: Tag = Tag(0x52);
pub const TAG_VOTE_RES: Tag = Tag(0x53);
pub const TAG_SNAPSHOT_REQ: Tag = Tag(0x54);
pub const TAG_SNAPSHOT_RES: Tag = Tag(0x55);
pub const TAG_FORWARD_REQ: Tag = Tag(0x56);
pub const TAG_FORWARD_RES: Tag = Tag(0x57);
pub const TAG_READ_INDEX_RES: Tag = Tag(0x58);

/// A write a follower hands to the leader: the leader stamps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub actor: Actor,
    pub command: Command,
}

/// The committed outcome of a forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardResponse {
    pub log_index: u64,
    pub leader_id: u64,
    pub outcome: Outcome,
}

/// Why a leader could not take a write or read; the follower may retry elsewhere only for
/// `NotLeader`, which guarantees nothing was proposed.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("not the leader")]
    NotLeader { leader: Option<(u64, String)> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
}

pub fn encode<T: Serialize>(tag: Tag, v: &T) -> Vec<u8> {
    codec::encode(tag, v)
}

pub fn decode<T: serde::de::DeserializeOwned>(tag: Tag, b: &[u8]) -> Result<T, CodecError> {
    codec::decode(tag, b)
}
