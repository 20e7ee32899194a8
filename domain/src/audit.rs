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

use std::collections::BTreeMap;

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
    /// revocation endpoints), `agent_attest` (an agent's join token refused), `node_join`
    /// (a node's join token refused) or `mtls` (a TLS handshake refused for the client's
    /// certificate; the client is the SPIFFE ID it claimed).
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

/// Where the archive begins once retention has pruned it (`proj_meta/audit_pruned`): records
/// `1..=through_sequence` are gone, and a signed checkpoint of `hash` (the chain's hash at
/// `through_sequence`) anchors the first record kept. All zeros: nothing was pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneMeta {
    pub through_sequence: u64,
    pub hash: Hash32,
    /// The record that holds the checkpoint of `through_sequence`.
    pub checkpoint_record: u64,
    /// When the prune was committed (leader time).
    pub time_ms: u64,
    /// Issuance records up to this sequence were elided (the shorter bound for them).
    pub issuance_elided_through: u64,
}

/// At most this many records in one elision's range, so the state machine's check of it
/// (a scan of that range of the archive) stays short.
pub const ELIDE_SPAN_MAX: u64 = 10_000;

/// Retention's shorter bound for issuance records: replace every `credential.issued` record in
/// `from_sequence..=through_sequence` by a remnant ([`crate::record::ElidedRecord`]), committing to
/// their sequences and hashes (`count`, `digest`: [`crate::record::elision_digest`]). The
/// state machine recomputes both from its archive and refuses a mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elision {
    pub node_id: u64,
    pub from_sequence: u64,
    pub through_sequence: u64,
    pub count: u64,
    pub digest: Hash32,
    /// Every elided record is older than this.
    pub older_than_ms: u64,
    pub acked_by: Vec<String>,
}

/// How far one of a node's audit sinks has delivered: every record up to `acked_through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkAck {
    pub name: String,
    pub acked_through: u64,
}

/// What each node last reported of its audit sinks (`proj_meta/sink_acks`): retention's
/// cluster-wide bound. A prune or an elision, whichever node proposes it, never reaches past
/// a record that some member's sink has not acknowledged, so no node's sink loses a record to
/// another node's retention.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkAcks {
    pub by_node: BTreeMap<u64, Vec<SinkAck>>,
}

/// The sink that holds retention back: its node, its name, and what it acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkBound<'a> {
    pub node_id: u64,
    pub name: &'a str,
    pub acked_through: u64,
}

impl SinkAcks {
    /// The least acknowledged point over every sink a member reported (`None`: no member
    /// reports a sink, and nothing bounds retention but the proposer's own sinks). A node no
    /// longer a member bounds nothing (its reports are also dropped when it is removed).
    pub fn bound<V>(&self, members: &BTreeMap<u64, V>) -> Option<SinkBound<'_>> {
        self.by_node
            .iter()
            .filter(|(n, _)| members.contains_key(n))
            .flat_map(|(n, sinks)| {
                sinks.iter().map(|s| SinkBound {
                    node_id: *n,
                    name: &s.name,
                    acked_through: s.acked_through,
                })
            })
            .min_by_key(|b| (b.acked_through, b.node_id))
    }
}

/// Refused unless every member's sinks have acknowledged records up to `through`.
fn within_sink_acks(state: &State, through: u64, what: &str) -> Result<(), Rejection> {
    match state.sink_acks.bound(&state.nodes) {
        Some(b) if through > b.acked_through => Err(invalid(
            "through_sequence",
            format!(
                "node {}'s audit sink {:?} has acknowledged records up to {} only: records it has not delivered are not {what}",
                b.node_id, b.name, b.acked_through
            ),
        )),
        _ => Ok(()),
    }
}

/// `RecordSinkProgress`: a member says how far each of its sinks has delivered. An empty
/// list says it has none (any longer). A sink's point may move back (its cursor was reset to
/// deliver again): the report replaces the last one whole.
pub(crate) fn sink_progress(
    state: &State,
    node_id: u64,
    sinks: &[SinkAck],
) -> Result<Vec<Event>, Rejection> {
    if state.security.revoked_nodes.contains(&node_id) {
        return Err(Rejection::NodeRevoked { node_id });
    }
    if !state.nodes.contains_key(&node_id) {
        return Err(Rejection::NodeNotFound { node_id });
    }
    if sinks.len() > PRUNE_SINKS_MAX {
        return Err(invalid(
            "sinks",
            format!("a node reports at most {PRUNE_SINKS_MAX} sinks"),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for s in sinks {
        if s.name.is_empty() || s.name.len() > PRUNE_SINK_BYTES_MAX {
            return Err(invalid(
                "sinks",
                format!("sink names are 1 to {PRUNE_SINK_BYTES_MAX} bytes"),
            ));
        }
        if !names.insert(s.name.as_str()) {
            return Err(invalid(
                "sinks",
                format!("sink {:?} is named twice", s.name),
            ));
        }
    }
    Ok(vec![Event::SinksAcknowledged {
        node_id,
        sinks: sinks.to_vec(),
    }])
}

pub(crate) fn evolve_sink_progress(state: &mut State, node_id: u64, sinks: &[SinkAck]) {
    if sinks.is_empty() {
        state.sink_acks.by_node.remove(&node_id);
    } else {
        state.sink_acks.by_node.insert(node_id, sinks.to_vec());
    }
}

/// At most this many parts in one [`SplitElision`].
pub const ELIDE_PARTS_MAX: usize = 1024;

/// One part of a [`SplitElision`]: the issuance records from the previous part's end (or the
/// elision's start) through `through_sequence`, counted and digested as [`Elision`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElisionPart {
    pub through_sequence: u64,
    pub count: u64,
    pub digest: Hash32,
}

/// An elision committed part by part, each part ending at a sequence a checkpoint signed.
///
/// A prune ends at a checkpoint's sequence; with [`Elision`]'s single digest over the whole
/// range, a prune that ended inside the range left the rest of its remnants with nothing an
/// export could check them against. Parts end where prunes can, so a pruned export holds each
/// remaining part whole and `verify` checks every remnant in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitElision {
    pub node_id: u64,
    pub from_sequence: u64,
    pub through_sequence: u64,
    /// In order; the last ends at `through_sequence`.
    pub parts: Vec<ElisionPart>,
    /// Every elided record is older than this.
    pub older_than_ms: u64,
    pub acked_by: Vec<String>,
}

impl SplitElision {
    /// Each part's range: `(from, through, count, digest)`.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, u64, &Hash32)> + '_ {
        let mut from = self.from_sequence;
        self.parts.iter().map(move |p| {
            let r = (from, p.through_sequence, p.count, &p.digest);
            from = p.through_sequence.saturating_add(1);
            r
        })
    }

    /// The same range as one [`Elision`] (its count; the digest is the parts' own).
    fn whole(&self) -> Elision {
        Elision {
            node_id: self.node_id,
            from_sequence: self.from_sequence,
            through_sequence: self.through_sequence,
            count: self.parts.iter().map(|p| p.count).sum(),
            digest: [0; 32],
            older_than_ms: self.older_than_ms,
            acked_by: self.acked_by.clone(),
        }
    }
}

/// At most this many sinks named in one prune, each name at most this many bytes.
pub const PRUNE_SINKS_MAX: usize = 16;
pub const PRUNE_SINK_BYTES_MAX: usize = 128;

/// Retention: delete the archive's records up to a signed checkpoint, cluster-wide.
///
/// A node proposes it when every record up to `through_sequence` is older than its retention
/// bound and its required sinks have acknowledged them; the rules check the shape and that
/// the prune moves forward, the state machine that `checkpoint_record` is the checkpoint of
/// exactly `through_sequence` and `head_hash` (it reads the archive, the same on every node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prune {
    pub node_id: u64,
    pub through_sequence: u64,
    pub head_hash: Hash32,
    pub checkpoint_record: u64,
    /// Every pruned record is older than this (the proposer's clock minus its bound).
    pub older_than_ms: u64,
    /// The proposer's sinks that had acknowledged every pruned record (`name`).
    pub acked_by: Vec<String>,
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

/// `PruneAudit`: by an unrevoked member, forward only, behind a checkpoint already recorded.
/// The event carries the audit keys that can still sign (their certificate chains), so an
/// export that starts after the keys' publication records were pruned still verifies its
/// checkpoints from the trust bundle alone.
pub(crate) fn prune(state: &State, p: &Prune, time_ms: u64) -> Result<Vec<Event>, Rejection> {
    if state.security.revoked_nodes.contains(&p.node_id) {
        return Err(Rejection::NodeRevoked { node_id: p.node_id });
    }
    if !state.nodes.contains_key(&p.node_id) {
        return Err(Rejection::NodeNotFound { node_id: p.node_id });
    }
    let done = state.audit_pruned.through_sequence;
    if p.through_sequence <= done {
        return Err(invalid(
            "through_sequence",
            format!(
                "records up to {done} are already pruned; {} does not move forward",
                p.through_sequence
            ),
        ));
    }
    if p.through_sequence > state.audit_meta.checkpoint_sequence {
        return Err(invalid(
            "through_sequence",
            format!(
                "{} is past the last signed checkpoint ({}): only records a checkpoint covers can be pruned",
                p.through_sequence, state.audit_meta.checkpoint_sequence
            ),
        ));
    }
    if p.checkpoint_record <= p.through_sequence {
        return Err(invalid(
            "checkpoint_record",
            "a checkpoint's record follows the sequence it covers",
        ));
    }
    if p.older_than_ms > time_ms {
        return Err(invalid(
            "older_than_ms",
            "the retention cutoff is in the future",
        ));
    }
    sinks_named(&p.acked_by)?;
    within_sink_acks(state, p.through_sequence, "pruned")?;
    let audit_keys = state
        .keys
        .values()
        .filter(|k| {
            k.kind == KeyKind::Audit
                && k.state != KeyState::Retired
                && !state.security.revoked_nodes.contains(&k.node_id)
        })
        .cloned()
        .collect();
    Ok(vec![Event::AuditPruned {
        prune: p.clone(),
        audit_keys,
    }])
}

pub(crate) fn evolve_prune(state: &mut State, p: &Prune, time_ms: u64) {
    state.audit_pruned = PruneMeta {
        through_sequence: p.through_sequence,
        hash: p.head_hash,
        checkpoint_record: p.checkpoint_record,
        time_ms,
        issuance_elided_through: state.audit_pruned.issuance_elided_through,
    };
}

fn sinks_named(acked_by: &[String]) -> Result<(), Rejection> {
    if acked_by.is_empty() || acked_by.len() > PRUNE_SINKS_MAX {
        return Err(invalid(
            "acked_by",
            format!("records are pruned only once 1 to {PRUNE_SINKS_MAX} sinks acknowledged them"),
        ));
    }
    if acked_by
        .iter()
        .any(|s| s.is_empty() || s.len() > PRUNE_SINK_BYTES_MAX)
    {
        return Err(invalid(
            "acked_by",
            format!("sink names are 1 to {PRUNE_SINK_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// `ElideIssuances`: by an unrevoked member, forward only (past what was pruned and elided),
/// a bounded range behind the last checkpoint. (The count and digest are checked against the
/// archive by the state machine.)
pub(crate) fn elide(state: &State, e: &Elision, time_ms: u64) -> Result<Vec<Event>, Rejection> {
    if state.security.revoked_nodes.contains(&e.node_id) {
        return Err(Rejection::NodeRevoked { node_id: e.node_id });
    }
    if !state.nodes.contains_key(&e.node_id) {
        return Err(Rejection::NodeNotFound { node_id: e.node_id });
    }
    let done = state
        .audit_pruned
        .through_sequence
        .max(state.audit_pruned.issuance_elided_through);
    if e.from_sequence <= done {
        return Err(invalid(
            "from_sequence",
            format!("records up to {done} are already pruned or elided; start after them"),
        ));
    }
    if e.through_sequence < e.from_sequence
        || e.through_sequence - e.from_sequence >= ELIDE_SPAN_MAX
    {
        return Err(invalid(
            "through_sequence",
            format!("an elision spans 1 to {ELIDE_SPAN_MAX} records"),
        ));
    }
    if e.through_sequence > state.audit_meta.checkpoint_sequence {
        return Err(invalid(
            "through_sequence",
            format!(
                "{} is past the last signed checkpoint ({}): only records a checkpoint covers can be elided",
                e.through_sequence, state.audit_meta.checkpoint_sequence
            ),
        ));
    }
    if e.older_than_ms > time_ms {
        return Err(invalid(
            "older_than_ms",
            "the retention cutoff is in the future",
        ));
    }
    sinks_named(&e.acked_by)?;
    within_sink_acks(state, e.through_sequence, "elided")?;
    Ok(vec![Event::IssuancesElided { elision: e.clone() }])
}

pub(crate) fn evolve_elide(state: &mut State, e: &Elision) {
    state.audit_pruned.issuance_elided_through = e.through_sequence;
}

/// `ElideIssuanceParts`: as [`elide`], with parts that tile the range in order. (Each part's
/// count and digest are checked against the archive by the state machine.)
pub(crate) fn elide_parts(
    state: &State,
    e: &SplitElision,
    time_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    if e.parts.is_empty() || e.parts.len() > ELIDE_PARTS_MAX {
        return Err(invalid(
            "parts",
            format!("an elision has 1 to {ELIDE_PARTS_MAX} parts"),
        ));
    }
    let mut from = e.from_sequence;
    for p in &e.parts {
        if p.through_sequence < from {
            return Err(invalid(
                "parts",
                "parts follow each other in order, each ending at or after where it starts",
            ));
        }
        from = p.through_sequence.saturating_add(1);
    }
    if e.parts.last().map(|p| p.through_sequence) != Some(e.through_sequence) {
        return Err(invalid(
            "parts",
            "the last part ends where the elision does",
        ));
    }
    elide(state, &e.whole(), time_ms)?;
    Ok(vec![Event::IssuancePartsElided { elision: e.clone() }])
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
    use crate::state::ProjectionKey;

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

    fn key(kid: &str, node_id: u64, kind: KeyKind, state: KeyState) -> crate::keys::NodeKey {
        crate::keys::NodeKey {
            kid: kid.into(),
            node_id,
            kind,
            public: vec![1, 2, 3],
            not_after_ms: 10_000,
            state,
            published_at_ms: 1,
            changed_at_ms: 1,
        }
    }

    #[test]
    fn prunes_move_forward_behind_a_checkpoint_and_carry_the_signing_keys() {
        let mut state = State::default();
        for id in [1, 2] {
            state.nodes.insert(
                id,
                crate::state::NodeRecord {
                    node_id: id,
                    addr: format!("127.0.0.1:{id}"),
                    recorded_at_ms: 1,
                },
            );
        }
        for k in [
            key("a1", 1, KeyKind::Audit, KeyState::Active),
            key("a0", 1, KeyKind::Audit, KeyState::Retired),
            key("a2", 2, KeyKind::Audit, KeyState::Published),
            key("j1", 1, KeyKind::Jwt, KeyState::Active),
        ] {
            state.keys.insert(k.kid.clone(), k);
        }
        state.audit_meta.checkpoint_sequence = 100;
        let p = Prune {
            node_id: 2,
            through_sequence: 90,
            head_hash: [9; 32],
            checkpoint_record: 91,
            older_than_ms: 500,
            acked_by: vec!["siem".into()],
        };
        let field = |r: Result<Vec<Event>, Rejection>| match r {
            Err(Rejection::InvalidField { field, .. }) => field,
            other => panic!("not an invalid field: {other:?}"),
        };
        let events = prune(&state, &p, 1_000).expect("a good prune");
        let [Event::AuditPruned {
            prune: got,
            audit_keys,
        }] = &events[..]
        else {
            panic!("{events:?}")
        };
        assert_eq!(got, &p);
        let kids: Vec<&str> = audit_keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["a1", "a2"], "the audit keys that can still sign");

        // Past the last checkpoint, a checkpoint record not after its sequence, a cutoff in
        // the future, no sink: refused, naming the field.
        let past = Prune {
            through_sequence: 101,
            checkpoint_record: 102,
            ..p.clone()
        };
        assert_eq!(field(prune(&state, &past, 1_000)), "through_sequence");
        let cp = Prune {
            checkpoint_record: 90,
            ..p.clone()
        };
        assert_eq!(field(prune(&state, &cp, 1_000)), "checkpoint_record");
        assert_eq!(field(prune(&state, &p, 499)), "older_than_ms");
        let none = Prune {
            acked_by: vec![],
            ..p.clone()
        };
        assert_eq!(field(prune(&state, &none, 1_000)), "acked_by");
        let stranger = Prune {
            node_id: 7,
            ..p.clone()
        };
        assert!(matches!(
            prune(&state, &stranger, 1_000),
            Err(Rejection::NodeNotFound { node_id: 7 })
        ));

        // Applied, it moves the start; the same prune again does not move it.
        evolve_prune(&mut state, &p, 1_000);
        assert_eq!(state.audit_pruned.through_sequence, 90);
        assert_eq!(state.audit_pruned.hash, [9; 32]);
        assert_eq!(field(prune(&state, &p, 1_000)), "through_sequence");

        // Elisions: past what was pruned, within a span, behind the checkpoint; forward only.
        let e = Elision {
            node_id: 1,
            from_sequence: 91,
            through_sequence: 100,
            count: 3,
            digest: [4; 32],
            older_than_ms: 500,
            acked_by: vec!["siem".into()],
        };
        assert!(matches!(
            &elide(&state, &e, 1_000).expect("a good elision")[..],
            [Event::IssuancesElided { elision }] if elision == &e
        ));
        let pruned_range = Elision {
            from_sequence: 90,
            ..e.clone()
        };
        assert_eq!(field(elide(&state, &pruned_range, 1_000)), "from_sequence");
        let unsigned = Elision {
            through_sequence: 101,
            ..e.clone()
        };
        assert_eq!(field(elide(&state, &unsigned, 1_000)), "through_sequence");
        state.audit_meta.checkpoint_sequence = 1_000_000;
        let wide = Elision {
            through_sequence: 91 + ELIDE_SPAN_MAX,
            ..e.clone()
        };
        assert_eq!(field(elide(&state, &wide, 1_000)), "through_sequence");
        evolve_elide(&mut state, &e);
        assert_eq!(field(elide(&state, &e, 1_000)), "from_sequence");
        let next = Elision {
            from_sequence: 101,
            through_sequence: 101,
            ..e.clone()
        };
        elide(&state, &next, 1_000).expect("the next range");
        // A prune keeps the elision mark.
        evolve_prune(
            &mut state,
            &Prune {
                through_sequence: 95,
                ..p.clone()
            },
            2_000,
        );
        assert_eq!(state.audit_pruned.issuance_elided_through, 100);
    }

    /// A split elision is checked as an elision of its whole range, and its parts tile that
    /// range in order.
    #[test]
    fn split_elisions_tile_their_range() {
        let mut state = State::default();
        state.nodes.insert(
            1,
            crate::state::NodeRecord {
                node_id: 1,
                addr: "127.0.0.1:1".into(),
                recorded_at_ms: 1,
            },
        );
        state.audit_meta.checkpoint_sequence = 500;
        let part = |through_sequence: u64, count: u64| ElisionPart {
            through_sequence,
            count,
            digest: [count as u8; 32],
        };
        let e = SplitElision {
            node_id: 1,
            from_sequence: 1,
            through_sequence: 300,
            parts: vec![part(100, 3), part(250, 0), part(300, 7)],
            older_than_ms: 5,
            acked_by: vec!["siem".into()],
        };
        let events = elide_parts(&state, &e, 10).expect("a good split elision");
        assert!(matches!(&events[..], [Event::IssuancePartsElided { elision }] if elision == &e));
        let ranges: Vec<(u64, u64, u64)> = e.ranges().map(|(f, t, n, _)| (f, t, n)).collect();
        assert_eq!(ranges, [(1, 100, 3), (101, 250, 0), (251, 300, 7)]);
        for e_ in &events {
            crate::evolve::evolve(&mut state, e_, 10);
        }
        assert_eq!(state.audit_pruned.issuance_elided_through, 300);

        let field = |r: Result<Vec<Event>, Rejection>| match r {
            Err(Rejection::InvalidField { field, .. }) => field,
            other => panic!("not an invalid field: {other:?}"),
        };
        let next = |parts: Vec<ElisionPart>, through_sequence: u64| SplitElision {
            from_sequence: 301,
            through_sequence,
            parts,
            ..e.clone()
        };
        elide_parts(&state, &next(vec![part(400, 1)], 400), 10).expect("the next range");
        for (bad, why) in [
            (next(vec![], 400), "no part"),
            (
                next(vec![part(350, 1), part(340, 1), part(400, 1)], 400),
                "out of order",
            ),
            (
                next(vec![part(300, 1), part(400, 1)], 400),
                "a part before the range",
            ),
            (next(vec![part(350, 1)], 400), "ends before the range"),
            (
                next(
                    (301..=301 + ELIDE_PARTS_MAX as u64)
                        .map(|t| part(t, 0))
                        .collect(),
                    301 + ELIDE_PARTS_MAX as u64,
                ),
                "too many parts",
            ),
        ] {
            assert_eq!(field(elide_parts(&state, &bad, 10)), "parts", "{why}");
        }
        // The whole range's own rules hold: forward only, behind the last checkpoint.
        assert_eq!(
            field(elide_parts(
                &state,
                &SplitElision {
                    from_sequence: 300,
                    ..next(vec![part(400, 1)], 400)
                },
                10
            )),
            "from_sequence"
        );
        assert_eq!(
            field(elide_parts(&state, &next(vec![part(600, 1)], 600), 10)),
            "through_sequence"
        );
    }

    fn ack(name: &str, acked_through: u64) -> SinkAck {
        SinkAck {
            name: name.into(),
            acked_through,
        }
    }

    /// Retention never reaches past a record some member's sink has not acknowledged,
    /// whichever node proposes it; a removed node's sinks stop holding it back; the stored
    /// row comes and goes with the reports.
    #[test]
    fn no_node_prunes_or_elides_what_another_nodes_sink_has_not_delivered() {
        let mut state = State::default();
        for id in [1, 2, 3] {
            state.nodes.insert(
                id,
                crate::state::NodeRecord {
                    node_id: id,
                    addr: format!("127.0.0.1:{id}"),
                    recorded_at_ms: 1,
                },
            );
        }
        state.audit_meta.checkpoint_sequence = 1_000;
        let report = |state: &mut State, node_id: u64, sinks: Vec<SinkAck>| {
            let events = sink_progress(state, node_id, &sinks).expect("a good report");
            for e in &events {
                crate::evolve::evolve(state, e, 10);
            }
        };
        let p = Prune {
            node_id: 1,
            through_sequence: 500,
            head_hash: [9; 32],
            checkpoint_record: 501,
            older_than_ms: 5,
            acked_by: vec!["siem".into()],
        };
        let e = Elision {
            node_id: 1,
            from_sequence: 1,
            through_sequence: 500,
            count: 3,
            digest: [4; 32],
            older_than_ms: 5,
            acked_by: vec!["siem".into()],
        };
        // No node reports a sink: only the proposer's own sinks bound it (checked there).
        assert!(state
            .row(&ProjectionKey::SinkAcks)
            .expect("a row of this module")
            .value
            .is_none());
        prune(&state, &p, 10).expect("nothing reported, nothing bounds");

        report(&mut state, 1, vec![ack("siem", 900)]);
        report(&mut state, 3, vec![ack("file", 950), ack("archive", 120)]);
        let refused = |r: Result<Vec<Event>, Rejection>| match r {
            Err(Rejection::InvalidField { field, reason }) => {
                assert_eq!(field, "through_sequence");
                reason
            }
            other => panic!("not refused: {other:?}"),
        };
        let why = refused(prune(&state, &p, 10));
        assert!(
            why.contains("node 3's audit sink \"archive\" has acknowledged records up to 120"),
            "{why}"
        );
        refused(elide(&state, &e, 10));
        prune(
            &state,
            &Prune {
                through_sequence: 120,
                checkpoint_record: 121,
                ..p.clone()
            },
            10,
        )
        .expect("up to the slowest sink");

        // The sink delivers; the report replaces the last one whole (and may move back).
        report(&mut state, 3, vec![ack("archive", 700)]);
        prune(&state, &p, 10).expect("every sink has the records now");
        report(&mut state, 1, vec![ack("siem", 40)]);
        refused(prune(&state, &p, 10));

        // Stored and loaded back as one row of `proj_meta`.
        let row = state
            .row(&ProjectionKey::SinkAcks)
            .expect("a row of this module");
        let mut loaded = State::default();
        loaded
            .load_row(
                row.family,
                &row.key,
                row.value.as_deref().expect("a stored row"),
            )
            .expect("loads back");
        assert_eq!(loaded.sink_acks, state.sink_acks);

        // A node removed from the cluster bounds nothing; a node that says it has no sinks
        // any longer neither; with no report left, the row goes.
        crate::evolve::evolve(&mut state, &Event::NodeMemberRemoved { node_id: 1 }, 10);
        let by_2 = Prune {
            node_id: 2,
            ..p.clone()
        };
        prune(&state, &by_2, 10).expect("node 1 left");
        report(&mut state, 3, vec![]);
        assert!(state.sink_acks.by_node.is_empty());
        assert!(state
            .row(&ProjectionKey::SinkAcks)
            .expect("a row of this module")
            .value
            .is_none());

        // Bad reports: a stranger, too many sinks, a name twice or empty.
        assert!(matches!(
            sink_progress(&state, 9, &[]),
            Err(Rejection::NodeNotFound { node_id: 9 })
        ));
        let many: Vec<SinkAck> = (0..=PRUNE_SINKS_MAX)
            .map(|i| ack(&format!("s{i}"), 1))
            .collect();
        for bad in [many, vec![ack("a", 1), ack("a", 2)], vec![ack("", 1)]] {
            assert!(matches!(
                sink_progress(&state, 2, &bad),
                Err(Rejection::InvalidField { field, .. }) if field == "sinks"
            ));
        }
    }
}
