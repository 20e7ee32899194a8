//! Federation (issue 6): other trust domains whose bundles this cluster consumes. An admin
//! registers a trust domain with its bundle endpoint and profile; a node fetches the bundle and
//! records it through the log (`RecordFederatedBundle`), so every node holds the same
//! federated bundles and hands them to the entries that federate with that trust domain.
//!
//! The rules never fetch anything: fetching is the node's business, and what it fetched
//! enters the state only as a command every node applies alike.

use serde::{Deserialize, Serialize};

use crate::decide::Rejection;
use crate::event::Event;
use crate::state::State;
use crate::{SpiffeId, TrustDomain};

/// Bounds on what a federated bundle may hold.
pub const URL_BYTES_MAX: usize = 2048;
pub const X509_AUTHORITIES_MAX: usize = 16;
pub const JWT_AUTHORITIES_MAX: usize = 64;
pub const AUTHORITY_BYTES_MAX: usize = 16 * 1024;
pub const FEDERATIONS_MAX: usize = 1024;

/// How the bundle endpoint is authenticated (the SPIFFE federation profiles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Profile {
    /// A certificate that the Web PKI trusts for the URL's host name.
    HttpsWeb,
    /// An X.509-SVID of `endpoint_spiffe_id`, chained to the federated domain's own bundle
    /// (the one registered first, then the one last fetched).
    HttpsSpiffe { endpoint_spiffe_id: SpiffeId },
}

impl Profile {
    pub fn as_str(&self) -> &'static str {
        match self {
            Profile::HttpsWeb => "https_web",
            Profile::HttpsSpiffe { .. } => "https_spiffe",
        }
    }
}

/// A federated trust domain's bundle as fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedBundle {
    /// `spiffe_sequence` of the document.
    pub sequence: u64,
    pub refresh_hint_s: u32,
    /// X.509 authorities (DER).
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWT authorities: `(kid, SubjectPublicKeyInfo DER)`.
    pub jwt_authorities: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Federation {
    pub trust_domain: TrustDomain,
    pub endpoint_url: String,
    pub profile: Profile,
    /// What was last recorded (initially the operator's, for `https_spiffe`).
    pub bundle: Option<FederatedBundle>,
    /// Leader-stamped time of the last recorded bundle.
    pub bundle_at_ms: u64,
    pub created_at_ms: u64,
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_bundle(b: &FederatedBundle) -> Result<(), Rejection> {
    if b.x509_authorities.is_empty() && b.jwt_authorities.is_empty() {
        return Err(invalid("bundle", "holds no authority"));
    }
    if b.x509_authorities.len() > X509_AUTHORITIES_MAX
        || b.jwt_authorities.len() > JWT_AUTHORITIES_MAX
    {
        return Err(invalid(
            "bundle",
            format!(
                "at most {X509_AUTHORITIES_MAX} X.509 and {JWT_AUTHORITIES_MAX} JWT authorities"
            ),
        ));
    }
    let too_big = |v: &[u8]| v.is_empty() || v.len() > AUTHORITY_BYTES_MAX;
    if b.x509_authorities.iter().any(|a| too_big(a))
        || b.jwt_authorities
            .iter()
            .any(|(kid, k)| kid.is_empty() || kid.len() > 128 || too_big(k))
    {
        return Err(invalid(
            "bundle",
            format!("each authority 1 to {AUTHORITY_BYTES_MAX} bytes, each kid 1 to 128"),
        ));
    }
    Ok(())
}

/// `CreateFederation`.
pub(crate) fn create(state: &State, f: &Federation, time_ms: u64) -> Result<Vec<Event>, Rejection> {
    if state.meta.trust_domain.as_ref() == Some(&f.trust_domain) {
        return Err(invalid(
            "trust_domain",
            "is this cluster's own trust domain",
        ));
    }
    if state.federations.contains_key(&f.trust_domain) {
        return Err(Rejection::AlreadyExists {
            kind: "federation".into(),
            id: f.trust_domain.to_string(),
        });
    }
    if state.federations.len() >= FEDERATIONS_MAX {
        return Err(Rejection::LimitReached {
            what: "federated trust domains".into(),
            limit: FEDERATIONS_MAX as u64,
        });
    }
    let url = &f.endpoint_url;
    if !url.starts_with("https://")
        || url.len() > URL_BYTES_MAX
        || url.len() <= "https://".len()
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "endpoint_url",
            format!("an https:// URL of at most {URL_BYTES_MAX} bytes"),
        ));
    }
    if let Profile::HttpsSpiffe { endpoint_spiffe_id } = &f.profile {
        if f.bundle.is_none() {
            return Err(invalid(
                "bundle",
                "https_spiffe needs the federated domain's bundle to authenticate its endpoint first",
            ));
        }
        if endpoint_spiffe_id.trust_domain() != f.trust_domain {
            return Err(invalid(
                "endpoint_spiffe_id",
                format!("must be in {}", f.trust_domain),
            ));
        }
    }
    if let Some(b) = &f.bundle {
        check_bundle(b)?;
    }
    Ok(vec![Event::FederationCreated {
        federation: Federation {
            bundle_at_ms: if f.bundle.is_some() { time_ms } else { 0 },
            created_at_ms: time_ms,
            ..f.clone()
        },
    }])
}

/// `DeleteFederation`: refused while an entry federates with it.
pub(crate) fn delete(state: &State, td: &TrustDomain) -> Result<Vec<Event>, Rejection> {
    if !state.federations.contains_key(td) {
        return Err(Rejection::NotFound {
            kind: "federation".into(),
            id: td.to_string(),
        });
    }
    if let Some(e) = state
        .entries
        .values()
        .find(|e| e.federates_with.contains(td))
    {
        return Err(invalid(
            "trust_domain",
            format!("entry {} federates with {td}; change it first", e.entry_id),
        ));
    }
    Ok(vec![Event::FederationDeleted {
        trust_domain: td.clone(),
    }])
}

/// `RecordFederatedBundle`: a fetched bundle. The same bundle again is a no-op; an older
/// sequence is refused (a replayed or stale fetch never rolls a bundle back).
pub(crate) fn record(
    state: &State,
    td: &TrustDomain,
    bundle: &FederatedBundle,
) -> Result<Vec<Event>, Rejection> {
    let f = state
        .federations
        .get(td)
        .ok_or_else(|| Rejection::NotFound {
            kind: "federation".into(),
            id: td.to_string(),
        })?;
    check_bundle(bundle)?;
    if let Some(have) = &f.bundle {
        if have == bundle {
            return Ok(vec![]);
        }
        if bundle.sequence < have.sequence {
            return Err(invalid(
                "bundle",
                format!(
                    "sequence {} is older than the recorded {}",
                    bundle.sequence, have.sequence
                ),
            ));
        }
    }
    Ok(vec![Event::FederatedBundleUpdated {
        trust_domain: td.clone(),
        bundle: bundle.clone(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_support::propose;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).expect("td")
    }

    fn bundle(seq: u64) -> FederatedBundle {
        FederatedBundle {
            sequence: seq,
            refresh_hint_s: 300,
            x509_authorities: vec![vec![0x30, 0x01, seq as u8]],
            jwt_authorities: vec![],
        }
    }

    fn fed(name: &str, profile: Profile, b: Option<FederatedBundle>) -> Federation {
        Federation {
            trust_domain: td(name),
            endpoint_url: format!("https://{name}:8443/bundle"),
            profile,
            bundle: b,
            bundle_at_ms: 0,
            created_at_ms: 0,
        }
    }

    fn cluster() -> State {
        let mut s = State::default();
        propose(
            &mut s,
            1,
            Command::ConfigureTrustDomain {
                trust_domain: td("example.org"),
            },
        )
        .expect("td");
        s
    }

    #[test]
    fn bundles_only_move_forward() {
        let mut s = cluster();
        propose(
            &mut s,
            2,
            Command::CreateFederation {
                federation: fed("partner.org", Profile::HttpsWeb, None),
            },
        )
        .expect("create");
        let p = td("partner.org");
        let rec = |s: &mut State, i, b| {
            propose(
                s,
                i,
                Command::RecordFederatedBundle {
                    trust_domain: p.clone(),
                    bundle: b,
                },
            )
        };
        assert_eq!(rec(&mut s, 3, bundle(5)).expect("first").len(), 1);
        assert_eq!(s.federations[&p].bundle, Some(bundle(5)));
        assert_eq!(s.federations[&p].bundle_at_ms, 1_003);
        assert!(rec(&mut s, 4, bundle(5)).expect("same").is_empty(), "no-op");
        assert!(matches!(
            rec(&mut s, 5, bundle(4)),
            Err(Rejection::InvalidField { .. })
        ));
        rec(&mut s, 6, bundle(6)).expect("newer");
        assert_eq!(s.federations[&p].bundle, Some(bundle(6)));
    }

    #[test]
    fn bad_federations_are_refused() {
        let mut s = cluster();
        let mut create = |f| propose(&mut s, 2, Command::CreateFederation { federation: f });
        assert!(
            create(fed("example.org", Profile::HttpsWeb, None)).is_err(),
            "own"
        );
        let mut plain = fed("p.org", Profile::HttpsWeb, None);
        plain.endpoint_url = "http://p.org/bundle".into();
        assert!(create(plain).is_err(), "http");
        let spiffe = Profile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse("spiffe://p.org/bundle-server").expect("id"),
        };
        assert!(
            create(fed("p.org", spiffe.clone(), None)).is_err(),
            "no bundle"
        );
        let other = Profile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse("spiffe://q.org/x").expect("id"),
        };
        assert!(
            create(fed("p.org", other, Some(bundle(1)))).is_err(),
            "foreign ID"
        );
        create(fed("p.org", spiffe, Some(bundle(1)))).expect("good");
    }

    #[test]
    fn in_use_federations_stay() {
        let mut s = cluster();
        propose(
            &mut s,
            2,
            Command::CreateFederation {
                federation: fed("partner.org", Profile::HttpsWeb, None),
            },
        )
        .expect("create");
        let e = crate::identity::Entry {
            entry_id: crate::EntryId::parse("e-1").expect("id"),
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").expect("id"),
            parent_id: None,
            selectors: Default::default(),
            x509_ttl_s: 3600,
            jwt_ttl_s: 300,
            dns_names: Default::default(),
            client_id: None,
            federates_with: [td("partner.org")].into(),
            revision: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        s.entries.insert(e.entry_id.clone(), e);
        assert!(propose(
            &mut s,
            3,
            Command::DeleteFederation {
                trust_domain: td("partner.org")
            }
        )
        .is_err());
        s.entries.clear();
        propose(
            &mut s,
            4,
            Command::DeleteFederation {
                trust_domain: td("partner.org"),
            },
        )
        .expect("delete");
        assert!(s.federations.is_empty());
    }
}
