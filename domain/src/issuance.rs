//! The audit of issued credentials ("no audit, no credential").
//!
//! A node records every credential it issues in its node-local outbox, synced to disk before
//! the credential leaves the node, then proposes the outbox to the log in batches
//! ([`crate::Command::RecordIssuances`]). Each outbox record carries the node's own outbox
//! sequence; the projection keeps, per node, the highest sequence already recorded, so a batch
//! proposed twice (the node crashed after the commit and before clearing its outbox) is
//! recorded once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decide::Rejection;
use crate::event::Event;
use crate::state::State;

/// At most this many records in one `RecordIssuances`.
pub const ISSUANCES_PER_COMMAND_MAX: usize = 512;
/// Bytes of any one text field of a record (ids, subjects, audiences, scopes).
pub const ISSUANCE_TEXT_BYTES_MAX: usize = 2048;
/// Scopes and audiences per record.
pub const ISSUANCE_LIST_MAX: usize = 256;

/// What kind of credential was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CredentialKind {
    /// An OAuth 2.0 access token (RFC 9068 JWT).
    AccessToken,
    X509Svid,
    JwtSvid,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::AccessToken => "access_token",
            CredentialKind::X509Svid => "x509_svid",
            CredentialKind::JwtSvid => "jwt_svid",
        }
    }
}

/// One issued credential, as the audit log keeps it: never the credential itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuance {
    /// The issuing node's outbox sequence (1, 2, ...; per node).
    pub seq: u64,
    pub kind: CredentialKind,
    /// The `jti`, or the certificate serial in hex.
    pub id: String,
    /// Who the credential names: the token's `sub` or the SVID's SPIFFE ID.
    pub subject: String,
    /// The authenticated client (OAuth), or the SVID caller.
    pub client_id: String,
    /// How the client authenticated (`client_secret_basic`, `private_key_jwt`, ...), or the
    /// grant for SVIDs.
    pub method: String,
    pub audience: Vec<String>,
    pub scopes: Vec<String>,
    /// For a delegated token: the delegation id and the acting agent.
    pub delegation: Option<String>,
    pub actor: Option<String>,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// The node's applied index the credential carries.
    pub applied_index: u64,
}

/// Per node, the highest outbox sequence already in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuanceMeta {
    pub recorded: BTreeMap<u64, u64>,
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn check_text(field: &str, s: &str) -> Result<(), Rejection> {
    if s.len() > ISSUANCE_TEXT_BYTES_MAX {
        return Err(invalid(
            field,
            format!("at most {ISSUANCE_TEXT_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// The bounds of the fields credentials share: `[subject, client_id, method]`,
/// `[delegation, actor]`, `[audience, scopes]`.
fn check_shared(
    what: &str,
    texts: [&String; 3],
    optional: [&Option<String>; 2],
    lists: [&Vec<String>; 2],
) -> Result<(), Rejection> {
    for (f, s) in ["subject", "client_id", "method"].into_iter().zip(texts) {
        check_text(f, s)?;
    }
    for (f, s) in ["delegation", "actor"].into_iter().zip(optional) {
        if let Some(s) = s {
            check_text(f, s)?;
        }
    }
    if lists.iter().any(|l| l.len() > ISSUANCE_LIST_MAX) {
        return Err(invalid(
            what,
            format!("at most {ISSUANCE_LIST_MAX} audiences and scopes per credential"),
        ));
    }
    for s in lists.into_iter().flatten() {
        check_text("audience/scope", s)?;
    }
    Ok(())
}

/// `RecordIssuances`: the records this node has not recorded yet, in order. A batch already
/// recorded is accepted with no event.
pub(crate) fn record(
    state: &State,
    node_id: u64,
    issuances: &[Issuance],
) -> Result<Vec<Event>, Rejection> {
    if !state.nodes.contains_key(&node_id) {
        return Err(Rejection::NodeNotFound { node_id });
    }
    if issuances.is_empty() || issuances.len() > ISSUANCES_PER_COMMAND_MAX {
        return Err(invalid(
            "issuances",
            format!("1 to {ISSUANCES_PER_COMMAND_MAX} records per command"),
        ));
    }
    let mut last = 0;
    for i in issuances {
        if i.seq <= last {
            return Err(invalid(
                "issuances",
                "outbox sequences must be strictly increasing",
            ));
        }
        last = i.seq;
        check_text("id", &i.id)?;
        check_shared(
            "issuances",
            [&i.subject, &i.client_id, &i.method],
            [&i.delegation, &i.actor],
            [&i.audience, &i.scopes],
        )?;
    }
    let done = state
        .issuance_meta
        .recorded
        .get(&node_id)
        .copied()
        .unwrap_or(0);
    let fresh: Vec<Issuance> = issuances.iter().filter(|i| i.seq > done).cloned().collect();
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Event::IssuancesRecorded {
        node_id,
        issuances: fresh,
    }])
}

/// At most this many credentials in one `RecordIssuanceBatch`.
pub const BATCH_ITEMS_MAX: usize = 4096;

/// An [`IssuanceProfile`] borrowed from an [`Issuance`]: kind, [subject, client, method],
/// [audience, scopes], [delegation, actor].
type ProfileKey<'a> = (
    CredentialKind,
    [&'a str; 3],
    [&'a [String]; 2],
    [Option<&'a str>; 2],
);

/// What credentials of one batch share: recorded once per batch, not once per credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuanceProfile {
    pub kind: CredentialKind,
    pub subject: String,
    pub client_id: String,
    pub method: String,
    pub audience: Vec<String>,
    pub scopes: Vec<String>,
    pub delegation: Option<String>,
    pub actor: Option<String>,
}

/// One issued credential of a batch: its own fields, and the index of its profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedItem {
    pub seq: u64,
    pub profile: u32,
    /// The `jti`, or the certificate serial in hex.
    pub id: String,
    pub issued_at_ms: u64,
    /// `expires_at_ms - issued_at_ms`.
    pub lifetime_ms: u64,
    pub applied_index: u64,
}

/// A node's issued credentials in the compact form the log keeps (issue 9): the fields many
/// credentials share (client, subject, method, audience, scopes, delegation) once per batch.
/// The same facts as a list of [`Issuance`], at a fraction of the bytes and allocations every
/// node spends replicating, applying and archiving them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuanceBatch {
    pub profiles: Vec<IssuanceProfile>,
    pub items: Vec<IssuedItem>,
}

impl IssuanceBatch {
    /// Pack records (in outbox order).
    pub fn pack(records: &[Issuance]) -> Self {
        // Profiles are looked up by the record's own fields, borrowed: a record whose profile
        // the batch already has costs no copy of them (this runs for every credential).
        let mut index: std::collections::HashMap<ProfileKey<'_>, u32> = Default::default();
        let mut b = IssuanceBatch::default();
        for r in records {
            let key = (
                r.kind,
                [r.subject.as_str(), r.client_id.as_str(), r.method.as_str()],
                [r.audience.as_slice(), r.scopes.as_slice()],
                [r.delegation.as_deref(), r.actor.as_deref()],
            );
            let profile = match index.get(&key) {
                Some(i) => *i,
                None => {
                    let i = b.profiles.len() as u32;
                    b.profiles.push(IssuanceProfile {
                        kind: r.kind,
                        subject: r.subject.clone(),
                        client_id: r.client_id.clone(),
                        method: r.method.clone(),
                        audience: r.audience.clone(),
                        scopes: r.scopes.clone(),
                        delegation: r.delegation.clone(),
                        actor: r.actor.clone(),
                    });
                    index.insert(key, i);
                    i
                }
            };
            b.items.push(IssuedItem {
                seq: r.seq,
                profile,
                id: r.id.clone(),
                issued_at_ms: r.issued_at_ms,
                lifetime_ms: r.expires_at_ms.saturating_sub(r.issued_at_ms),
                applied_index: r.applied_index,
            });
        }
        b
    }

    /// The records again, one per credential.
    pub fn unpack(&self) -> Vec<Issuance> {
        self.items
            .iter()
            .filter_map(|i| {
                let p = self.profiles.get(i.profile as usize)?;
                Some(Issuance {
                    seq: i.seq,
                    kind: p.kind,
                    id: i.id.clone(),
                    subject: p.subject.clone(),
                    client_id: p.client_id.clone(),
                    method: p.method.clone(),
                    audience: p.audience.clone(),
                    scopes: p.scopes.clone(),
                    delegation: p.delegation.clone(),
                    actor: p.actor.clone(),
                    issued_at_ms: i.issued_at_ms,
                    expires_at_ms: i.issued_at_ms.saturating_add(i.lifetime_ms),
                    applied_index: i.applied_index,
                })
            })
            .collect()
    }
}

/// `RecordIssuanceBatch`: like [`record`], for the compact form.
pub(crate) fn record_batch(
    state: &State,
    node_id: u64,
    batch: &IssuanceBatch,
) -> Result<Vec<Event>, Rejection> {
    if !state.nodes.contains_key(&node_id) {
        return Err(Rejection::NodeNotFound { node_id });
    }
    if batch.items.is_empty() || batch.items.len() > BATCH_ITEMS_MAX {
        return Err(invalid(
            "items",
            format!("1 to {BATCH_ITEMS_MAX} credentials per batch"),
        ));
    }
    if batch.profiles.len() > batch.items.len() {
        return Err(invalid("profiles", "more profiles than credentials"));
    }
    for p in &batch.profiles {
        check_shared(
            "profiles",
            [&p.subject, &p.client_id, &p.method],
            [&p.delegation, &p.actor],
            [&p.audience, &p.scopes],
        )?;
    }
    let mut last = 0;
    for i in &batch.items {
        if i.seq <= last {
            return Err(invalid(
                "items",
                "outbox sequences must be strictly increasing",
            ));
        }
        last = i.seq;
        check_text("id", &i.id)?;
        if i.profile as usize >= batch.profiles.len() {
            return Err(invalid("items", "an item names a profile the batch lacks"));
        }
    }
    let done = state
        .issuance_meta
        .recorded
        .get(&node_id)
        .copied()
        .unwrap_or(0);
    if last <= done {
        return Ok(Vec::new());
    }
    let batch = if batch.items[0].seq > done {
        batch.clone()
    } else {
        IssuanceBatch {
            profiles: batch.profiles.clone(),
            items: batch
                .items
                .iter()
                .filter(|i| i.seq > done)
                .cloned()
                .collect(),
        }
    };
    Ok(vec![Event::IssuanceBatchRecorded { node_id, batch }])
}

pub(crate) fn evolve_batch(state: &mut State, node_id: u64, batch: &IssuanceBatch) {
    if let Some(last) = batch.items.last() {
        let mark = state.issuance_meta.recorded.entry(node_id).or_default();
        *mark = (*mark).max(last.seq);
    }
}

pub(crate) fn evolve(state: &mut State, node_id: u64, issuances: &[Issuance]) {
    if let Some(last) = issuances.last() {
        let mark = state.issuance_meta.recorded.entry(node_id).or_default();
        *mark = (*mark).max(last.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::propose;
    use crate::Command;

    fn issuance(seq: u64) -> Issuance {
        Issuance {
            seq,
            kind: CredentialKind::AccessToken,
            id: format!("jti-{seq}"),
            subject: "c1".into(),
            client_id: "c1".into(),
            method: "client_secret_basic".into(),
            audience: vec!["https://api".into()],
            scopes: vec!["orders:read".into()],
            delegation: None,
            actor: None,
            issued_at_ms: 1,
            expires_at_ms: 2,
            applied_index: 3,
        }
    }

    fn cluster() -> State {
        let mut s = State::default();
        propose(
            &mut s,
            1,
            Command::RecordNodeMember {
                node_id: 1,
                addr: "127.0.0.1:1".into(),
            },
        )
        .expect("member");
        s
    }

    #[test]
    fn a_batch_proposed_twice_is_recorded_once() {
        let mut s = cluster();
        let cmd = |seqs: &[u64]| Command::RecordIssuances {
            node_id: 1,
            issuances: seqs.iter().map(|n| issuance(*n)).collect(),
        };
        let e = propose(&mut s, 2, cmd(&[1, 2, 3])).expect("first");
        assert_eq!(e.len(), 1);
        assert_eq!(s.issuance_meta.recorded.get(&1), Some(&3));
        // The node crashed before clearing its outbox: the same records, and one more.
        let e = propose(&mut s, 3, cmd(&[2, 3, 4])).expect("again");
        let Event::IssuancesRecorded { issuances, .. } = &e[0] else {
            panic!("{e:?}")
        };
        assert_eq!(issuances.iter().map(|i| i.seq).collect::<Vec<_>>(), [4]);
        assert!(propose(&mut s, 4, cmd(&[4])).expect("noop").is_empty());
    }

    #[test]
    fn compact_batches_pack_unpack_and_are_recorded_once() {
        let mut recs: Vec<Issuance> = (1..=5).map(issuance).collect();
        recs[2].client_id = "c2".into();
        let b = IssuanceBatch::pack(&recs);
        assert_eq!(b.profiles.len(), 2, "two clients, two profiles");
        assert_eq!(b.unpack(), recs);
        let mut s = cluster();
        let e = propose(
            &mut s,
            2,
            Command::RecordIssuanceBatch {
                node_id: 1,
                batch: IssuanceBatch::pack(&recs[..3]),
            },
        )
        .expect("first");
        assert_eq!(e.len(), 1);
        assert_eq!(s.issuance_meta.recorded.get(&1), Some(&3));
        let e = propose(
            &mut s,
            3,
            Command::RecordIssuanceBatch {
                node_id: 1,
                batch: b.clone(),
            },
        )
        .expect("again");
        let Event::IssuanceBatchRecorded { batch, .. } = &e[0] else {
            panic!("{e:?}")
        };
        assert_eq!(
            batch.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
            [4, 5]
        );
        let mut bad = b.clone();
        bad.items[0].profile = 9;
        assert!(propose(
            &mut s,
            4,
            Command::RecordIssuanceBatch {
                node_id: 1,
                batch: bad
            }
        )
        .is_err());
    }

    #[test]
    fn bad_batches_are_refused() {
        let mut s = cluster();
        let cmd = |node_id, issuances| Command::RecordIssuances { node_id, issuances };
        assert!(propose(&mut s, 2, cmd(9, vec![issuance(1)])).is_err());
        assert!(propose(&mut s, 2, cmd(1, vec![])).is_err());
        assert!(propose(&mut s, 2, cmd(1, vec![issuance(2), issuance(2)])).is_err());
        let mut big = issuance(1);
        big.id = "x".repeat(ISSUANCE_TEXT_BYTES_MAX + 1);
        assert!(propose(&mut s, 2, cmd(1, vec![big])).is_err());
        assert!(s.issuance_meta.recorded.is_empty());
    }
}

#[cfg(test)]
mod prune_tests {
    use crate::command::RevocationTarget;
    use crate::test_support::propose;
    use crate::{Command, Event, State};

    #[test]
    fn expired_token_revocations_are_forgotten_and_live_ones_kept() {
        let mut s = State::default();
        // propose() stamps 1000 + index ms.
        for (i, (jti, exp)) in [("gone", 1_010u64), ("alive", 60_000)].iter().enumerate() {
            propose(
                &mut s,
                1 + i as u64,
                Command::Revoke(RevocationTarget::Token {
                    jti: (*jti).into(),
                    expires_at_ms: *exp,
                }),
            )
            .expect("revoke");
        }
        assert_eq!(s.revoked_tokens.len(), 2);
        let e = propose(&mut s, 20, Command::PruneRevocations).expect("prune");
        assert_eq!(
            e,
            vec![Event::RevocationsPruned {
                jtis: vec!["gone".into()]
            }]
        );
        assert!(s.revoked_tokens.contains_key("alive"));
        assert!(!s.revoked_tokens.contains_key("gone"));
        assert!(
            propose(&mut s, 21, Command::PruneRevocations)
                .expect("again")
                .is_empty(),
            "nothing left to prune is no event"
        );
    }
}
