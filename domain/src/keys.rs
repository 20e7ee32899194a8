//! Node signing keys as projections (the foundation of issue 6): each node's X.509 intermediate
//! CA (its SVID issuer) and its JWT-SVID signing key are public material published through the
//! log before first use, so every node's trust bundle and JWKS hold a key before any credential
//! it signs exists.
//!
//! Lifecycle: `Published` (in the bundle, not yet signing) -> `Active` (the node signs with it;
//! activating a new key of the same node and kind supersedes the old one) -> `Superseded` (still
//! in the bundle through the overlap, no longer signing) -> `Retired` (out of the bundle).
//! Revoking a node retires all its keys in the same commit.

use serde::{Deserialize, Serialize};

use crate::decide::Rejection;
use crate::event::Event;
use crate::limits;
use crate::state::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyKind {
    /// The node's intermediate CA (pathLen 0): `public` is its certificate's DER.
    X509Ca,
    /// The node's JWT-SVID signing key (ES256): `public` is its SubjectPublicKeyInfo DER.
    Jwt,
    /// The node's OAuth access-token signing key (ES256 or EdDSA, per the node's
    /// configuration): `public` is its SubjectPublicKeyInfo DER. Apart from the JWT-SVID key
    /// so that neither kind of token verifies as the other under a key-only check, and so
    /// the SPIFFE bundle carries only JWT-SVID authorities.
    Token,
    /// The node's Ed25519 audit key (issue 9), which signs checkpoints of the audit chain:
    /// `public` is its certificate's DER followed by the DER of the node intermediate that
    /// signed it, so an export verifies offline against the trust bundle. Never in the bundle.
    Audit,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::X509Ca => "x509-ca",
            KeyKind::Jwt => "jwt",
            KeyKind::Token => "token",
            KeyKind::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Published,
    Active,
    Superseded,
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Published => "published",
            KeyState::Active => "active",
            KeyState::Superseded => "superseded",
            KeyState::Retired => "retired",
        }
    }

    /// Whether verifiers must know the key: everything but retired keys.
    pub fn in_bundle(self) -> bool {
        self != KeyState::Retired
    }
}

/// One node's public key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKey {
    /// Unique cluster-wide: the JWK `kid`, or the CA certificate's fingerprint.
    pub kid: String,
    pub node_id: u64,
    pub kind: KeyKind,
    pub public: Vec<u8>,
    /// When the key (or its certificate) stops being valid.
    pub not_after_ms: u64,
    pub state: KeyState,
    pub published_at_ms: u64,
    pub changed_at_ms: u64,
}

/// Bundle bookkeeping: `spiffe_sequence` grows with every change of the bundle's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysMeta {
    pub bundle_sequence: u64,
}

/// What a trust bundle holds, from the projections (the node renders it as SPIFFE JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleView<'a> {
    pub sequence: u64,
    /// Root CA certificates (DER): the X.509 trust anchors.
    pub x509_authorities: Vec<&'a [u8]>,
    /// JWT-SVID keys: `(kid, SubjectPublicKeyInfo DER)`.
    pub jwt_authorities: Vec<(&'a str, &'a [u8])>,
}

/// The trust bundle of the cluster's own trust domain.
pub fn bundle(state: &State) -> BundleView<'_> {
    BundleView {
        sequence: state.keys_meta.bundle_sequence,
        x509_authorities: state.roots_meta.bundle(state),
        jwt_authorities: state
            .keys
            .values()
            .filter(|k| k.kind == KeyKind::Jwt && k.state.in_bundle())
            .map(|k| (k.kid.as_str(), k.public.as_slice()))
            .collect(),
    }
}

/// The key a node signs with now, if any.
pub fn active_key(state: &State, node_id: u64, kind: KeyKind) -> Option<&NodeKey> {
    state
        .keys
        .values()
        .find(|k| k.node_id == node_id && k.kind == kind && k.state == KeyState::Active)
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn kid_valid(kid: &str) -> Result<(), Rejection> {
    if kid.is_empty()
        || kid.len() > limits::KEY_ID_BYTES_MAX
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(invalid(
            "kid",
            format!(
                "1 to {} ASCII letters, digits, '.', '-', '_' or ':'",
                limits::KEY_ID_BYTES_MAX
            ),
        ));
    }
    Ok(())
}

/// `PublishNodeKey`: the node must be a recorded, unrevoked member; the kid new; the material
/// bounded; the node holds a bounded number of keys in the bundle.
pub(crate) fn publish(state: &State, key: &NodeKey, time_ms: u64) -> Result<Vec<Event>, Rejection> {
    kid_valid(&key.kid)?;
    if state.security.revoked_nodes.contains(&key.node_id) {
        return Err(Rejection::NodeRevoked {
            node_id: key.node_id,
        });
    }
    if !state.nodes.contains_key(&key.node_id) {
        return Err(Rejection::NodeNotFound {
            node_id: key.node_id,
        });
    }
    if state.keys.contains_key(&key.kid) {
        return Err(Rejection::AlreadyExists {
            kind: "key".into(),
            id: key.kid.clone(),
        });
    }
    if key.public.is_empty() || key.public.len() > limits::NODE_KEY_BYTES_MAX {
        return Err(invalid(
            "public",
            format!("must be 1 to {} bytes", limits::NODE_KEY_BYTES_MAX),
        ));
    }
    if key.not_after_ms <= time_ms {
        return Err(invalid("not_after", "the key is already expired"));
    }
    let held = state
        .keys
        .values()
        .filter(|k| k.node_id == key.node_id && k.kind == key.kind && k.state.in_bundle())
        .count();
    if held >= limits::NODE_KEYS_PER_KIND_MAX {
        return Err(Rejection::LimitReached {
            what: format!(
                "{} keys of node {} in the bundle",
                key.kind.as_str(),
                key.node_id
            ),
            limit: limits::NODE_KEYS_PER_KIND_MAX as u64,
        });
    }
    Ok(vec![Event::NodeKeyPublished {
        key: NodeKey {
            state: KeyState::Published,
            published_at_ms: time_ms,
            changed_at_ms: time_ms,
            ..key.clone()
        },
    }])
}

fn existing<'a>(state: &'a State, kid: &str) -> Result<&'a NodeKey, Rejection> {
    state.keys.get(kid).ok_or_else(|| Rejection::NotFound {
        kind: "key".into(),
        id: kid.into(),
    })
}

/// `ActivateNodeKey`: a published key starts signing; the node's active key of that kind, if
/// any, is superseded (it stays in the bundle until retired).
pub(crate) fn activate(state: &State, kid: &str, time_ms: u64) -> Result<Vec<Event>, Rejection> {
    let k = existing(state, kid)?;
    match k.state {
        KeyState::Active => return Ok(vec![]),
        KeyState::Published => {}
        other => {
            return Err(invalid(
                "kid",
                format!(
                    "{kid} is {}; only a published key can be activated",
                    other.as_str()
                ),
            ))
        }
    }
    if k.not_after_ms <= time_ms {
        return Err(invalid("kid", format!("{kid} has expired")));
    }
    let mut out = Vec::new();
    if let Some(old) = active_key(state, k.node_id, k.kind) {
        out.push(Event::NodeKeySuperseded {
            kid: old.kid.clone(),
        });
    }
    out.push(Event::NodeKeyActivated { kid: kid.into() });
    Ok(out)
}

/// `RetireNodeKey`: out of the bundle. An active key is retired only with its node (a node
/// must not be left without a key it is signing with).
pub(crate) fn retire(state: &State, kid: &str) -> Result<Vec<Event>, Rejection> {
    let k = existing(state, kid)?;
    match k.state {
        KeyState::Retired => Ok(vec![]),
        KeyState::Active => Err(invalid(
            "kid",
            format!("{kid} is active; activate its successor first, or revoke the node"),
        )),
        _ => Ok(vec![Event::NodeKeyRetired { kid: kid.into() }]),
    }
}

/// Every key of `node_id` still in the bundle, retired: for `RevokeNode`.
pub(crate) fn retire_all_of(state: &State, node_id: u64) -> Vec<Event> {
    state
        .keys
        .values()
        .filter(|k| k.node_id == node_id && k.state.in_bundle())
        .map(|k| Event::NodeKeyRetired { kid: k.kid.clone() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_support::propose;
    use crate::TrustDomain;

    fn key(kid: &str, node_id: u64, kind: KeyKind) -> NodeKey {
        NodeKey {
            kid: kid.into(),
            node_id,
            kind,
            public: vec![0x30, 0x59],
            not_after_ms: 1_000_000,
            state: KeyState::Active, // the rules set it: a caller cannot publish an active key
            published_at_ms: 0,
            changed_at_ms: 0,
        }
    }

    fn cluster() -> State {
        let mut s = State::default();
        let td = TrustDomain::parse("example.org").expect("valid");
        propose(
            &mut s,
            1,
            Command::ConfigureTrustDomain { trust_domain: td },
        )
        .expect("td");
        for n in 1..=2 {
            propose(
                &mut s,
                1 + n,
                Command::RecordNodeMember {
                    node_id: n,
                    addr: format!("10.0.0.{n}:7101"),
                },
            )
            .expect("member");
        }
        s
    }

    #[test]
    fn published_before_use_then_superseded_then_retired() {
        let mut s = cluster();
        propose(
            &mut s,
            10,
            Command::PublishNodeKey {
                key: key("n1-a", 1, KeyKind::Jwt),
            },
        )
        .expect("publish");
        assert_eq!(s.keys["n1-a"].state, KeyState::Published);
        assert_eq!(
            bundle(&s).jwt_authorities.len(),
            1,
            "in the bundle before first use"
        );
        assert_eq!(active_key(&s, 1, KeyKind::Jwt), None, "not signing yet");
        let seq = bundle(&s).sequence;

        propose(&mut s, 11, Command::ActivateNodeKey { kid: "n1-a".into() }).expect("activate");
        assert_eq!(
            active_key(&s, 1, KeyKind::Jwt).map(|k| k.kid.as_str()),
            Some("n1-a")
        );
        assert_eq!(
            bundle(&s).sequence,
            seq,
            "activation does not change the bundle"
        );

        // Rotation: the successor is published, then activated; the old key stays in the
        // bundle until retired.
        propose(
            &mut s,
            12,
            Command::PublishNodeKey {
                key: key("n1-b", 1, KeyKind::Jwt),
            },
        )
        .expect("publish successor");
        let ev = propose(&mut s, 13, Command::ActivateNodeKey { kid: "n1-b".into() })
            .expect("activate successor");
        assert_eq!(
            ev,
            vec![
                Event::NodeKeySuperseded { kid: "n1-a".into() },
                Event::NodeKeyActivated { kid: "n1-b".into() }
            ]
        );
        assert_eq!(
            bundle(&s).jwt_authorities.len(),
            2,
            "both through the overlap"
        );
        assert!(
            propose(&mut s, 14, Command::RetireNodeKey { kid: "n1-b".into() }).is_err(),
            "the key a node signs with is not retired alone"
        );
        propose(&mut s, 15, Command::RetireNodeKey { kid: "n1-a".into() }).expect("retire");
        let b = bundle(&s);
        assert_eq!(b.jwt_authorities, vec![("n1-b", &[0x30u8, 0x59][..])]);
        assert!(b.sequence > seq);
    }

    #[test]
    fn publishing_is_checked() {
        let mut s = cluster();
        let bad = |s: &mut State, k: NodeKey| propose(s, 20, Command::PublishNodeKey { key: k });
        assert!(matches!(
            bad(&mut s, key("x", 9, KeyKind::Jwt)),
            Err(Rejection::NodeNotFound { node_id: 9 })
        ));
        assert!(matches!(
            bad(&mut s, key("bad kid", 1, KeyKind::Jwt)),
            Err(Rejection::InvalidField { .. })
        ));
        let mut expired = key("old", 1, KeyKind::Jwt);
        expired.not_after_ms = 5;
        assert!(bad(&mut s, expired).is_err());
        let mut huge = key("huge", 1, KeyKind::Jwt);
        huge.public = vec![0; limits::NODE_KEY_BYTES_MAX + 1];
        assert!(bad(&mut s, huge).is_err());
        propose(
            &mut s,
            21,
            Command::PublishNodeKey {
                key: key("k", 1, KeyKind::X509Ca),
            },
        )
        .expect("publish");
        assert!(matches!(
            bad(&mut s, key("k", 2, KeyKind::Jwt)),
            Err(Rejection::AlreadyExists { .. })
        ));
        for i in 1..limits::NODE_KEYS_PER_KIND_MAX {
            propose(
                &mut s,
                30 + i as u64,
                Command::PublishNodeKey {
                    key: key(&format!("k{i}"), 1, KeyKind::X509Ca),
                },
            )
            .expect("within the bound");
        }
        assert!(matches!(
            bad(&mut s, key("one-too-many", 1, KeyKind::X509Ca)),
            Err(Rejection::LimitReached { .. })
        ));
    }

    #[test]
    fn revoking_a_node_retires_its_keys_and_bars_new_ones() {
        let mut s = cluster();
        for (kid, node) in [("a", 1), ("b", 1), ("c", 2)] {
            propose(
                &mut s,
                40,
                Command::PublishNodeKey {
                    key: key(kid, node, KeyKind::Jwt),
                },
            )
            .expect("publish");
        }
        propose(&mut s, 41, Command::ActivateNodeKey { kid: "a".into() }).expect("activate");
        propose(&mut s, 42, Command::RevokeNode { node_id: 1 }).expect("revoke");
        assert_eq!(s.keys["a"].state, KeyState::Retired, "even the active one");
        assert_eq!(s.keys["b"].state, KeyState::Retired);
        assert_eq!(
            s.keys["c"].state,
            KeyState::Published,
            "other nodes keep theirs"
        );
        assert_eq!(bundle(&s).jwt_authorities.len(), 1);
        assert!(matches!(
            propose(
                &mut s,
                43,
                Command::PublishNodeKey {
                    key: key("d", 1, KeyKind::Jwt)
                }
            ),
            Err(Rejection::NodeRevoked { node_id: 1 })
        ));
    }

    #[test]
    fn a_removed_node_takes_its_keys_out_of_the_bundle() {
        let mut s = cluster();
        for (kid, node) in [("x", 2), ("y", 1)] {
            propose(
                &mut s,
                60,
                Command::PublishNodeKey {
                    key: key(kid, node, KeyKind::Jwt),
                },
            )
            .expect("publish");
        }
        propose(&mut s, 61, Command::ActivateNodeKey { kid: "x".into() }).expect("activate");
        let seq = bundle(&s).sequence;
        propose(&mut s, 62, Command::RecordNodeRemoved { node_id: 2 }).expect("remove");
        assert_eq!(s.keys["x"].state, KeyState::Retired, "even the active one");
        assert_eq!(
            s.keys["y"].state,
            KeyState::Published,
            "node 1 keeps its own"
        );
        assert!(bundle(&s).sequence > seq, "the bundle changed");
        assert!(matches!(
            propose(
                &mut s,
                63,
                Command::PublishNodeKey {
                    key: key("z", 2, KeyKind::Jwt)
                }
            ),
            Err(Rejection::NodeNotFound { node_id: 2 })
        ));
    }

    #[test]
    fn rows_reload_to_the_same_state() {
        let mut s = cluster();
        propose(
            &mut s,
            50,
            Command::PublishNodeKey {
                key: key("r", 2, KeyKind::X509Ca),
            },
        )
        .expect("publish");
        let mut fresh = State::default();
        for key in [
            crate::state::ProjectionKey::NodeKey("r".into()),
            crate::state::ProjectionKey::KeysMeta,
        ] {
            let row = s.row(&key).expect("owned here");
            fresh
                .load_row(row.family, &row.key, &row.value.expect("present"))
                .expect("decodes");
        }
        assert_eq!(fresh.keys, s.keys);
        assert_eq!(fresh.keys_meta, s.keys_meta);
    }
}
