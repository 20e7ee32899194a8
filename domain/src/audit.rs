//! Signed checkpoints of the audit chain, and authentication failures recorded in aggregate
//! (issue 9).
//!
//! A checkpoint says "the chain's record `sequence` hashes to `head_hash`", signed with a node's
//! Ed25519 audit key. The key's certificate chain (leaf, then the node's intermediate CA) is in
//! the log as a [`crate::keys::KeyKind::Audit`] key, so an auditor holding only the trust
//! bundle can check a whole export offline: the chain recomputes, every checkpoint's hash is
//! the chain's hash at its sequence, and every signature verifies with a key the bundle
//! certifies.
//!
//! The rules cannot sign (they read no key), and cannot see the archive (storage holds it):
//! they check who signs and that checkpoints move forward; the state machine checks the hash
//! against the archive before it accepts the command, so the log never holds a checkpoint of a
//! chain other than its own.

use serde::{Deserialize, Serialize};

use crate::decide::Rejection;
use crate::event::Event;
use crate::keys::{KeyKind, KeyState};
use crate::record::Hash32;
use crate::state::State;

/// Domain separation of the signed bytes: no other authsec signature can be taken for one.
pub const CHECKPOINT_CONTEXT: &[u8] = b"authsec audit checkpoint v1\0";
/// Ed25519 signatures are 64 bytes.
pub const SIGNATURE_BYTES: usize = 64;
/// At most this many aggregates in one `RecordAuthFailures`.
pub const AUTH_FAILURES_PER_COMMAND_MAX: usize = 1000;
/// Bytes of a text field of an aggregate (client id, source, reason).
pub const AUTH_FAILURE_TEXT_BYTES_MAX: usize = 256;

/// The bytes a checkpoint signature covers:
/// `CHECKPOINT_CONTEXT || len(td) u16 BE || td || sequence u64 BE || head_hash`.
pub fn checkpoint_message(trust_domain: &str, sequence: u64, head_hash: &Hash32) -> Vec<u8> {
    let td = trust_domain.as_bytes();
    let mut m = Vec::with_capacity(CHECKPOINT_CONTEXT.len() + 2 + td.len() + 8 + 32);
    m.extend_from_slice(CHECKPOINT_CONTEXT);
    m.extend_from_slice(&(td.len().min(u16::MAX as usize) as u16).to_be_bytes());
    m.extend_from_slice(td);
    m.extend_from_slice(&sequence.to_be_bytes());
    m.extend_from_slice(head_hash);
    m
}

/// A signed statement of the chain's hash at `sequence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub node_id: u64,
    /// The audit key that signed, an [`KeyKind::Audit`] key of `node_id`.
    pub kid: String,
    pub sequence: u64,
    pub head_hash: Hash32,
    /// Ed25519 over [`checkpoint_message`].
    pub signature: Vec<u8>,
}

/// Failed authentications of one client from one source in one interval, counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFailure {
    /// The client id the caller claimed (`-` when it named none).
    pub client_id: String,
    /// Where the attempts came from (the peer's IP address).
    pub source: String,
    /// Where they failed: `oauth` (client authentication at the token, introspection and
    /// revocation endpoints), `agent_attest` (an agent's join token refused) or `node_join`
    /// (a node's join token refused).
    pub endpoint: String,
    /// The last reason given.
    pub reason: String,
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// The last checkpoint in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditMeta {
    pub checkpoint_sequence: u64,
    pub checkpoint_hash: Hash32,
    pub checkpoint_time_ms: u64,
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// `RecordCheckpoint`: signed by an active audit key of an unrevoked member, past the last
/// checkpoint. (The hash is checked against the archive by the state machine.)
pub(crate) fn checkpoint(state: &State, c: &Checkpoint) -> Result<Vec<Event>, Rejection> {
    if state.security.revoked_nodes.contains(&c.node_id) {
        return Err(Rejection::NodeRevoked { node_id: c.node_id });
    }
    if !state.nodes.contains_key(&c.node_id) {
        return Err(Rejection::NodeNotFound { node_id: c.node_id });
    }
    let key = state.keys.get(&c.kid).ok_or_else(|| Rejection::NotFound {
        kind: "key".into(),
        id: c.kid.clone(),
    })?;
    if key.kind != KeyKind::Audit || key.node_id != c.node_id || key.state != KeyState::Active {
        return Err(invalid(
            "kid",
            format!("{} is not an active audit key of node {}", c.kid, c.node_id),
        ));
    }
    if c.signature.len() != SIGNATURE_BYTES {
        return Err(invalid(
            "signature",
            format!("an Ed25519 signature is {SIGNATURE_BYTES} bytes"),
        ));
    }
    let last = state.audit_meta.checkpoint_sequence;
    if c.sequence <= last {
        return Err(invalid(
            "sequence",
            format!(
                "checkpoint at {} is not past the last one, at {last}",
                c.sequence
            ),
        ));
    }
    Ok(vec![Event::CheckpointRecorded {
        checkpoint: c.clone(),
    }])
}

/// `RecordAuthFailures`: bounded aggregates from a member.
pub(crate) fn auth_failures(
    state: &State,
    node_id: u64,
    failures: &[AuthFailure],
) -> Result<Vec<Event>, Rejection> {
    if !state.nodes.contains_key(&node_id) {
        return Err(Rejection::NodeNotFound { node_id });
    }
    if failures.is_empty() || failures.len() > AUTH_FAILURES_PER_COMMAND_MAX {
        return Err(invalid(
            "failures",
            format!("1 to {AUTH_FAILURES_PER_COMMAND_MAX} aggregates per command"),
        ));
    }
    for f in failures {
        for (field, s) in [
            ("client_id", &f.client_id),
            ("source", &f.source),
            ("endpoint", &f.endpoint),
            ("reason", &f.reason),
        ] {
            if s.len() > AUTH_FAILURE_TEXT_BYTES_MAX {
                return Err(invalid(
                    field,
                    format!("at most {AUTH_FAILURE_TEXT_BYTES_MAX} bytes"),
                ));
            }
        }
        if f.count == 0 || f.first_ms > f.last_ms {
            return Err(invalid(
                "failures",
                "an aggregate counts at least one failure, first before last",
            ));
        }
    }
    Ok(vec![Event::AuthFailuresRecorded {
        node_id,
        failures: failures.to_vec(),
    }])
}

pub(crate) fn evolve_checkpoint(state: &mut State, c: &Checkpoint, time_ms: u64) {
    state.audit_meta = AuditMeta {
        checkpoint_sequence: c.sequence,
        checkpoint_hash: c.head_hash,
        checkpoint_time_ms: time_ms,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_binds_every_field() {
        let h = [7u8; 32];
        let m = checkpoint_message("example.org", 5, &h);
        assert!(m.starts_with(CHECKPOINT_CONTEXT));
        assert_ne!(m, checkpoint_message("example.org", 6, &h));
        assert_ne!(m, checkpoint_message("example.com", 5, &h));
        assert_ne!(m, checkpoint_message("example.org", 5, &[8u8; 32]));
        // The trust domain's length is bound, so a shifted boundary cannot collide.
        assert_ne!(
            checkpoint_message("a", 0x0100_0000_0000_0000, &h),
            checkpoint_message("a\x01", 0, &h)
        );
    }
}
