//! Rotation of the SVID root (issue 6): prepare, activate, retire.
//!
//! The trust domain starts with one root, installed at bootstrap (`SecurityState::root_cert`),
//! which signs the cluster's transport certificates and the nodes' SVID intermediates. Rotating
//! the SVID root adds a new root to the trust bundle first (`PrepareRoot`), then makes it the
//! one that signs node intermediates (`ActivateRoot`; nodes re-issue their intermediates from
//! it), and finally takes the old one out of the bundle (`RetireRoot`), once nothing it signed
//! is still in use. Holders of the bundle see both roots through the overlap, so no SVID fails
//! verification with the bundle its workload holds.
//!
//! The same roots anchor the cluster's own transport: the signing root signs node and admin
//! certificates too, and the nodes trust exactly the bundle's roots, so retiring a root takes
//! it out of their TLS trust as well (the node enforces the waits; see `node/src/bundle.rs`).

use serde::{Deserialize, Serialize};

use crate::decide::Rejection;
use crate::event::Event;
use crate::state::State;

/// Roots besides the bootstrap root, at most.
pub const ROOTS_MAX: usize = 4;
pub const ROOT_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootState {
    /// In the bundle; signs nothing yet.
    Prepared,
    /// Signs the nodes' intermediates.
    Active,
    /// In the bundle through the overlap; signs nothing new.
    Superseded,
}

impl RootState {
    pub fn as_str(self) -> &'static str {
        match self {
            RootState::Prepared => "prepared",
            RootState::Active => "active",
            RootState::Superseded => "superseded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidRoot {
    /// `sha256:<hex>` of the certificate: how commands name it.
    pub fingerprint: String,
    pub cert_der: Vec<u8>,
    pub state: RootState,
    pub changed_at_ms: u64,
}

/// The rotated roots (empty: the bootstrap root is the only one and signs everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootsMeta {
    pub roots: Vec<SvidRoot>,
    /// The bootstrap root left the SPIFFE bundle (and so the cluster's TLS trust).
    pub bootstrap_retired: bool,
}

impl RootsMeta {
    /// The root that signs node intermediates now: the active rotated one, else the bootstrap
    /// root (`None`: the cluster has no root yet).
    pub fn signing<'a>(&'a self, state: &'a State) -> Option<&'a [u8]> {
        self.signing_with(state.security.root_cert.as_deref())
    }

    /// [`RootsMeta::signing`], given the bootstrap root.
    pub fn signing_with<'a>(&'a self, bootstrap: Option<&'a [u8]>) -> Option<&'a [u8]> {
        self.active().map(|r| r.cert_der.as_slice()).or(bootstrap)
    }

    /// The active rotated root, if any.
    pub fn active(&self) -> Option<&SvidRoot> {
        self.roots.iter().find(|r| r.state == RootState::Active)
    }

    /// Every root in the SPIFFE bundle, the signing one first.
    pub fn bundle<'a>(&'a self, state: &'a State) -> Vec<&'a [u8]> {
        self.bundle_with(state.security.root_cert.as_deref())
    }

    /// [`RootsMeta::bundle`], given the bootstrap root.
    pub fn bundle_with<'a>(&'a self, bootstrap: Option<&'a [u8]>) -> Vec<&'a [u8]> {
        let mut out: Vec<&[u8]> = Vec::new();
        if let Some(s) = self.signing_with(bootstrap) {
            out.push(s);
        }
        if !self.bootstrap_retired {
            if let Some(b) = bootstrap {
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
        for r in &self.roots {
            if !out.contains(&r.cert_der.as_slice()) {
                out.push(&r.cert_der);
            }
        }
        out
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `PrepareRoot`: one prepared root at a time, bounded; its fingerprint is the hash of the
/// certificate (checked here: the rules hash, they do not parse X.509).
pub(crate) fn prepare(
    state: &State,
    cert_der: &[u8],
    time_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    if state.security.root_cert.is_none() {
        return Err(invalid("root", "the cluster has no root to rotate yet"));
    }
    if cert_der.is_empty() || cert_der.len() > ROOT_BYTES_MAX {
        return Err(invalid(
            "cert_der",
            format!("must be 1 to {ROOT_BYTES_MAX} bytes"),
        ));
    }
    let fp = crate::fingerprint(cert_der);
    let m = &state.roots_meta;
    if m.roots.iter().any(|r| r.fingerprint == fp)
        || state.security.root_cert.as_deref() == Some(cert_der)
    {
        return Err(Rejection::AlreadyExists {
            kind: "root".into(),
            id: fp,
        });
    }
    if m.roots.iter().any(|r| r.state == RootState::Prepared) {
        return Err(invalid(
            "root",
            "a prepared root is waiting: activate or retire it first",
        ));
    }
    if m.roots.len() >= ROOTS_MAX {
        return Err(Rejection::LimitReached {
            what: "rotated roots in the bundle".into(),
            limit: ROOTS_MAX as u64,
        });
    }
    Ok(vec![Event::RootPrepared {
        root: SvidRoot {
            fingerprint: fp,
            cert_der: cert_der.to_vec(),
            state: RootState::Prepared,
            changed_at_ms: time_ms,
        },
    }])
}

/// `ActivateRoot`: the prepared root signs intermediates from now on.
pub(crate) fn activate(state: &State, fingerprint: &str) -> Result<Vec<Event>, Rejection> {
    match state
        .roots_meta
        .roots
        .iter()
        .find(|r| r.fingerprint == fingerprint)
    {
        None => Err(Rejection::NotFound {
            kind: "root".into(),
            id: fingerprint.into(),
        }),
        Some(r) if r.state == RootState::Active => Ok(vec![]),
        Some(r) if r.state == RootState::Prepared => Ok(vec![Event::RootActivated {
            fingerprint: fingerprint.into(),
        }]),
        Some(r) => Err(invalid(
            "fingerprint",
            format!(
                "{fingerprint} is {}; only a prepared root is activated",
                r.state.as_str()
            ),
        )),
    }
}

/// `RetireRoot`: out of the bundle. Never the signing root.
pub(crate) fn retire(state: &State, fingerprint: &str) -> Result<Vec<Event>, Rejection> {
    let m = &state.roots_meta;
    let bootstrap = state.security.root_cert.as_deref().map(crate::fingerprint);
    if bootstrap.as_deref() == Some(fingerprint) {
        if !m.roots.iter().any(|r| r.state == RootState::Active) {
            return Err(invalid(
                "fingerprint",
                "the bootstrap root still signs: activate its successor first",
            ));
        }
        if m.bootstrap_retired {
            return Ok(vec![]);
        }
        return Ok(vec![Event::RootRetired {
            fingerprint: fingerprint.into(),
        }]);
    }
    match m.roots.iter().find(|r| r.fingerprint == fingerprint) {
        None => Err(Rejection::NotFound {
            kind: "root".into(),
            id: fingerprint.into(),
        }),
        Some(r) if r.state == RootState::Active => Err(invalid(
            "fingerprint",
            "the active root signs: activate its successor first",
        )),
        Some(_) => Ok(vec![Event::RootRetired {
            fingerprint: fingerprint.into(),
        }]),
    }
}

/// Apply a root event to the state.
pub(crate) fn evolve(state: &mut State, event: &Event, time_ms: u64) {
    let bootstrap = state.security.root_cert.as_deref().map(crate::fingerprint);
    let m = &mut state.roots_meta;
    match event {
        Event::RootPrepared { root } => m.roots.push(root.clone()),
        Event::RootActivated { fingerprint } => {
            for r in &mut m.roots {
                if r.state == RootState::Active {
                    r.state = RootState::Superseded;
                    r.changed_at_ms = time_ms;
                }
                if r.fingerprint == *fingerprint {
                    r.state = RootState::Active;
                    r.changed_at_ms = time_ms;
                }
            }
        }
        Event::RootRetired { fingerprint } => {
            if bootstrap.as_deref() == Some(fingerprint.as_str()) {
                m.bootstrap_retired = true;
            } else {
                m.roots.retain(|r| r.fingerprint != *fingerprint);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_support::propose;
    use crate::Sealed;

    fn cluster() -> State {
        crate::test_support::cluster_with_root(&[1, 1, 1])
    }

    fn prepare_cmd(cert: &[u8]) -> Command {
        Command::PrepareRoot {
            cert_der: cert.to_vec(),
            sealed_key: Sealed(vec![9; 40]),
        }
    }

    #[test]
    fn prepare_activate_retire_keeps_both_roots_through_the_overlap() {
        let mut s = cluster();
        let old = crate::fingerprint(&[1, 1, 1]);
        let new = crate::fingerprint(&[2, 2, 2]);
        let seq = crate::keys::bundle(&s).sequence;
        propose(&mut s, 3, prepare_cmd(&[2, 2, 2])).expect("prepare");
        assert_eq!(s.roots_meta.bundle(&s).len(), 2, "both in the bundle");
        assert_eq!(
            s.roots_meta.signing(&s),
            Some(&[1u8, 1, 1][..]),
            "old still signs"
        );
        assert!(crate::keys::bundle(&s).sequence > seq);
        assert!(
            propose(&mut s, 4, prepare_cmd(&[3, 3, 3])).is_err(),
            "one at a time"
        );
        assert!(
            propose(
                &mut s,
                5,
                Command::RetireRoot {
                    fingerprint: old.clone()
                }
            )
            .is_err(),
            "the signing root stays"
        );
        propose(
            &mut s,
            6,
            Command::ActivateRoot {
                fingerprint: new.clone(),
            },
        )
        .expect("activate");
        assert_eq!(s.roots_meta.signing(&s), Some(&[2u8, 2, 2][..]));
        assert_eq!(s.roots_meta.bundle(&s).len(), 2, "still both");
        propose(&mut s, 7, Command::RetireRoot { fingerprint: old }).expect("retire");
        assert_eq!(s.roots_meta.bundle(&s), vec![&[2u8, 2, 2][..]]);
        assert!(
            propose(&mut s, 8, Command::RetireRoot { fingerprint: new }).is_err(),
            "the active root stays"
        );
    }

    #[test]
    fn a_second_rotation_supersedes_the_first() {
        let mut s = cluster();
        let (a, b) = (crate::fingerprint(&[2]), crate::fingerprint(&[3]));
        propose(&mut s, 3, prepare_cmd(&[2])).expect("prepare a");
        propose(
            &mut s,
            4,
            Command::ActivateRoot {
                fingerprint: a.clone(),
            },
        )
        .expect("activate a");
        propose(&mut s, 5, prepare_cmd(&[3])).expect("prepare b");
        propose(&mut s, 6, Command::ActivateRoot { fingerprint: b }).expect("activate b");
        assert_eq!(s.roots_meta.signing(&s), Some(&[3u8][..]));
        let sa = s
            .roots_meta
            .roots
            .iter()
            .find(|r| r.fingerprint == a)
            .map(|r| r.state);
        assert_eq!(sa, Some(RootState::Superseded));
        propose(&mut s, 7, Command::RetireRoot { fingerprint: a }).expect("retire a");
        assert_eq!(s.roots_meta.bundle(&s).len(), 2, "b and the bootstrap root");
    }
}
