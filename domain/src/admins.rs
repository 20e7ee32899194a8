//! Admin credentials (`spiffe://<td>/authsec/admin/<name>`): which certificates the cluster
//! signed for its admins, under which root, and until when.
//!
//! A node signs an admin's certificate and records it here (`RecordAdminCertificate`) in the
//! same request, so every node can answer "who holds an admin credential, and would retiring
//! this root lock anyone out?" from its projections. Rotation (`revokes`) refuses the
//! replaced certificate from the same commit on. The rules hash and compare; they parse no
//! X.509: the node that signed reports the root and the expiry of what it signed.
//!
//! The projection holds live certificates only: recording one drops every certificate that
//! has expired by the command's time or was revoked, so it stays bounded by
//! [`ADMINS_MAX`] × [`CERTS_PER_ADMIN_MAX`] without a pruning command.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::decide::Rejection;
use crate::event::Event;
use crate::limits;
use crate::state::State;

/// Admins with a live certificate, at most.
pub const ADMINS_MAX: usize = 256;
/// Live certificates of one admin, at most (each `authsec admin issue` adds one; a rotation
/// replaces one).
pub const CERTS_PER_ADMIN_MAX: usize = 8;

/// One certificate the cluster signed for an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCert {
    /// `sha256:<hex>` of the certificate.
    pub fingerprint: String,
    /// `sha256:<hex>` of the root that signed it.
    pub root: String,
    pub not_after_ms: u64,
    pub issued_at_ms: u64,
}

/// Live admin certificates by admin name (`proj_meta/admins`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admins {
    pub by_name: BTreeMap<String, Vec<AdminCert>>,
}

impl Admins {
    /// Every certificate usable at `now_ms` (unexpired, not revoked), by name.
    pub fn live<'a>(
        &'a self,
        revoked: &'a BTreeSet<String>,
        now_ms: u64,
    ) -> impl Iterator<Item = (&'a str, &'a AdminCert)> + 'a {
        self.by_name.iter().flat_map(move |(name, certs)| {
            certs
                .iter()
                .filter(move |c| c.not_after_ms > now_ms && !revoked.contains(&c.fingerprint))
                .map(move |c| (name.as_str(), c))
        })
    }

    /// Drop what is no longer live at `now_ms`, and names left with nothing.
    fn prune(&mut self, revoked: &BTreeSet<String>, now_ms: u64) {
        for certs in self.by_name.values_mut() {
            certs.retain(|c| c.not_after_ms > now_ms && !revoked.contains(&c.fingerprint));
        }
        self.by_name.retain(|_, certs| !certs.is_empty());
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An admin's name: the last segment of its SPIFFE ID.
pub(crate) fn check_name(name: &str) -> Result<(), Rejection> {
    if name.is_empty()
        || name.len() > limits::ADMIN_NAME_BYTES_MAX
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(invalid(
            "name",
            format!(
                "1 to {} ASCII letters, digits, '-', '_' or '.'",
                limits::ADMIN_NAME_BYTES_MAX
            ),
        ));
    }
    Ok(())
}

/// A certificate pin: `sha256:<64 hex digits>`.
pub(crate) fn check_pin(field: &str, pin: &str) -> Result<(), Rejection> {
    let ok = pin
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "must be sha256:<64 hex digits>"))
    }
}

/// The revocation a rotation commits with the new certificate (none if already revoked).
pub(crate) fn revoke(state: &State, revokes: Option<&str>) -> Result<Option<Event>, Rejection> {
    let Some(r) = revokes else {
        return Ok(None);
    };
    if state.security.revoked_certs.contains(r) {
        return Ok(None);
    }
    if state.security.revoked_certs.len() >= limits::REVOKED_CERTS_MAX {
        return Err(Rejection::LimitReached {
            what: "revoked certificates".into(),
            limit: limits::REVOKED_CERTS_MAX as u64,
        });
    }
    Ok(Some(Event::CertificateRevoked {
        fingerprint: r.to_owned(),
    }))
}

/// `RecordAdminCertificate`: the certificate must be live, signed by a root of the trust
/// bundle, and within the bounds once the dead ones are dropped.
pub(crate) fn record(
    state: &State,
    name: &str,
    fingerprint: &str,
    root: &str,
    not_after_ms: u64,
    revokes: Option<&str>,
    time_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    check_name(name)?;
    check_pin("fingerprint", fingerprint)?;
    check_pin("root", root)?;
    if let Some(r) = revokes {
        check_pin("revokes", r)?;
        if r == fingerprint {
            return Err(invalid("revokes", "a certificate cannot replace itself"));
        }
    }
    if state.security.revoked_certs.contains(fingerprint) {
        return Err(invalid("fingerprint", "this certificate has been revoked"));
    }
    if not_after_ms <= time_ms {
        return Err(invalid(
            "not_after_ms",
            "the certificate has already expired",
        ));
    }
    let in_bundle = state
        .roots_meta
        .bundle(state)
        .iter()
        .any(|der| crate::fingerprint(der) == root);
    if !in_bundle {
        return Err(invalid(
            "root",
            format!("{root} is not a root of this trust domain's bundle"),
        ));
    }
    let revoked = &state.security.revoked_certs;
    let gone = |c: &AdminCert| Some(c.fingerprint.as_str()) == revokes;
    let mut names = BTreeSet::new();
    let mut mine = 0usize;
    for (n, c) in state.admins.live(revoked, time_ms) {
        if c.fingerprint == fingerprint {
            // Recorded already (a retried request): nothing changes.
            return Ok(Vec::new());
        }
        if gone(c) {
            continue;
        }
        names.insert(n);
        if n == name {
            mine += 1;
        }
    }
    if mine >= CERTS_PER_ADMIN_MAX {
        return Err(Rejection::LimitReached {
            what: format!("live certificates of admin {name:?} (rotate one instead)"),
            limit: CERTS_PER_ADMIN_MAX as u64,
        });
    }
    if !names.contains(name) && names.len() >= ADMINS_MAX {
        return Err(Rejection::LimitReached {
            what: "admins with a live certificate".into(),
            limit: ADMINS_MAX as u64,
        });
    }
    let mut events = Vec::new();
    // The replaced certificate is revoked first, so the record below already leaves it out.
    events.extend(revoke(state, revokes)?);
    events.push(Event::AdminCertificateIssued {
        name: name.to_owned(),
        cert: AdminCert {
            fingerprint: fingerprint.to_owned(),
            root: root.to_owned(),
            not_after_ms,
            issued_at_ms: time_ms,
        },
    });
    Ok(events)
}

pub(crate) fn evolve(state: &mut State, name: &str, cert: &AdminCert, time_ms: u64) {
    let revoked = &state.security.revoked_certs;
    state.admins.prune(revoked, time_ms);
    state
        .admins
        .by_name
        .entry(name.to_owned())
        .or_default()
        .push(cert.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_support::propose;
    use crate::Sealed;

    const ROOT: [u8; 3] = [1, 1, 1];

    fn cluster() -> State {
        crate::test_support::cluster_with_root(&ROOT)
    }

    fn pin(b: u8) -> String {
        format!("sha256:{}", hex::encode([b; 32]))
    }

    fn cmd(name: &str, cert: u8, root: &str, not_after_ms: u64, revokes: Option<u8>) -> Command {
        Command::RecordAdminCertificate {
            name: name.into(),
            fingerprint: pin(cert),
            root: root.into(),
            not_after_ms,
            revokes: revokes.map(pin),
        }
    }

    fn live(s: &State, now: u64) -> Vec<(String, String)> {
        s.admins
            .live(&s.security.revoked_certs, now)
            .map(|(n, c)| (n.to_owned(), c.fingerprint.clone()))
            .collect()
    }

    #[test]
    fn a_rotation_replaces_the_certificate_and_revokes_the_old_one_in_one_commit() {
        let mut s = cluster();
        let root = crate::fingerprint(&ROOT);
        let e = propose(&mut s, 3, cmd("ops", 10, &root, 1_000_000, None)).expect("issue");
        assert!(
            matches!(&e[..], [Event::AdminCertificateIssued { name, cert }]
            if name == "ops" && cert.root == root && cert.issued_at_ms == 1_003)
        );
        propose(&mut s, 4, cmd("ci", 11, &root, 1_000_000, None)).expect("issue");
        let e = propose(&mut s, 5, cmd("ops", 12, &root, 1_000_000, Some(10))).expect("rotate");
        assert!(
            matches!(&e[..], [Event::CertificateRevoked { fingerprint }, Event::AdminCertificateIssued { .. }]
            if *fingerprint == pin(10))
        );
        assert!(s.security.revoked_certs.contains(&pin(10)));
        assert_eq!(
            live(&s, 2_000),
            vec![("ci".into(), pin(11)), ("ops".into(), pin(12))]
        );
        assert_eq!(
            s.admins.by_name["ops"].len(),
            1,
            "the revoked one is dropped"
        );
        // A retried request changes nothing.
        assert_eq!(
            propose(&mut s, 6, cmd("ops", 12, &root, 1_000_000, Some(10))).expect("retry"),
            vec![]
        );
        // Stored and loaded as one row.
        let row = s.row(&crate::state::ProjectionKey::Admins).expect("row");
        let mut loaded = State::default();
        loaded
            .load_row(row.family, &row.key, row.value.as_deref().expect("value"))
            .expect("load");
        assert_eq!(loaded.admins, s.admins);
    }

    #[test]
    fn expired_certificates_leave_when_the_next_one_is_recorded() {
        let mut s = cluster();
        let root = crate::fingerprint(&ROOT);
        propose(&mut s, 3, cmd("old", 10, &root, 1_010, None)).expect("issue");
        assert_eq!(live(&s, 1_005).len(), 1);
        assert!(live(&s, 1_010).is_empty(), "expired at not_after");
        propose(&mut s, 20, cmd("new", 11, &root, 9_000, None)).expect("issue");
        assert_eq!(s.admins.by_name.keys().collect::<Vec<_>>(), vec!["new"]);
    }

    #[test]
    fn bad_records_are_refused_and_change_nothing() {
        let mut s = cluster();
        let root = crate::fingerprint(&ROOT);
        let before = s.clone();
        let field = |r: Result<Vec<Event>, Rejection>| match r {
            Err(Rejection::InvalidField { field, .. }) => field,
            other => panic!("expected InvalidField, got {other:?}"),
        };
        assert_eq!(
            field(propose(&mut s, 3, cmd("a b", 10, &root, 9_000, None))),
            "name"
        );
        assert_eq!(
            field(propose(&mut s, 4, cmd("ops", 10, "sha256:00", 9_000, None))),
            "root"
        );
        assert_eq!(
            field(propose(&mut s, 5, cmd("ops", 10, &pin(7), 9_000, None))),
            "root",
            "not in the bundle"
        );
        assert_eq!(
            field(propose(&mut s, 6, cmd("ops", 10, &root, 1_000, None))),
            "not_after_ms"
        );
        assert_eq!(
            field(propose(&mut s, 7, cmd("ops", 10, &root, 9_000, Some(10)))),
            "revokes"
        );
        assert_eq!(s.admins, before.admins);
        assert_eq!(s.security, before.security);
    }

    #[test]
    fn one_admin_holds_a_bounded_number_of_live_certificates() {
        let mut s = cluster();
        let root = crate::fingerprint(&ROOT);
        for i in 0..CERTS_PER_ADMIN_MAX as u8 {
            propose(
                &mut s,
                3 + u64::from(i),
                cmd("ops", 10 + i, &root, 99_000, None),
            )
            .expect("issue");
        }
        assert!(matches!(
            propose(&mut s, 50, cmd("ops", 100, &root, 99_000, None)),
            Err(Rejection::LimitReached { .. })
        ));
        // A rotation replaces one, so it fits.
        propose(&mut s, 51, cmd("ops", 100, &root, 99_000, Some(10))).expect("rotate");
        assert_eq!(live(&s, 2_000).len(), CERTS_PER_ADMIN_MAX);
    }

    #[test]
    fn a_certificate_under_a_rotated_root_is_recorded_with_that_root() {
        let mut s = cluster();
        propose(
            &mut s,
            3,
            Command::PrepareRoot {
                cert_der: vec![2, 2, 2],
                sealed_key: Sealed(vec![9; 40]),
            },
        )
        .expect("prepare");
        let new = crate::fingerprint(&[2, 2, 2]);
        propose(&mut s, 4, cmd("ops", 10, &new, 99_000, None)).expect("issue");
        assert_eq!(s.admins.by_name["ops"][0].root, new);
    }
}
