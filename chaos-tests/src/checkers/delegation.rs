//! Credential invariant 3: no delegated token carries a permission outside its delegation as
//! the log stood at issuance. The token names its delegation (`authsec_delegation`) and the
//! log index its node decided on (`authsec_index`); this checker replays the audit export up
//! to that index with its own small model (roles, bindings, delegations) and requires, for
//! every scope the token carries: the delegation exists there and is not revoked, its grant
//! covers the scope, and a role bound to the delegate and one bound to the delegator both
//! grant it.

use std::collections::{BTreeMap, BTreeSet};

use authsec_domain::Event;

use super::{History, Violation, REPORT_MAX};
use crate::creds::CredKind;

pub const NAME: &str = "delegation-bounded";

#[derive(Debug, Default)]
struct Model {
    roles: BTreeMap<String, BTreeSet<String>>,
    /// subject key -> roles
    bindings: BTreeMap<String, BTreeSet<String>>,
    /// id -> (delegator subject key, delegate client id, granted patterns, revoked)
    delegations: BTreeMap<String, (String, String, BTreeSet<String>, bool)>,
}

fn covers(pattern: &str, scope: &str) -> bool {
    pattern == scope
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| scope.starts_with(prefix))
}

impl Model {
    fn apply(&mut self, e: &Event) {
        match e {
            Event::RoleCreated { role } | Event::RoleUpdated { role } => {
                self.roles.insert(
                    role.name.to_string(),
                    role.permissions
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect(),
                );
            }
            Event::RoleDeleted { name } => {
                self.roles.remove(&name.to_string());
            }
            Event::RoleBound { role, subject } => {
                self.bindings
                    .entry(subject.key())
                    .or_default()
                    .insert(role.to_string());
            }
            Event::RoleUnbound { role, subject } => {
                if let Some(b) = self.bindings.get_mut(&subject.key()) {
                    b.remove(&role.to_string());
                }
            }
            Event::DelegationCreated { delegation: d } => {
                self.delegations.insert(
                    d.delegation_id.to_string(),
                    (
                        d.delegator.subject().key(),
                        d.delegate.to_string(),
                        d.permissions
                            .iter()
                            .map(|p| p.as_str().to_owned())
                            .collect(),
                        false,
                    ),
                );
            }
            Event::DelegationRevoked { delegation_id, .. } => {
                if let Some(d) = self.delegations.get_mut(&delegation_id.to_string()) {
                    d.3 = true;
                }
            }
            _ => {}
        }
    }

    fn holds(&self, subject: &str, scope: &str) -> bool {
        self.bindings.get(subject).is_some_and(|roles| {
            roles.iter().any(|r| {
                self.roles
                    .get(r)
                    .is_some_and(|p| p.iter().any(|p| covers(p, scope)))
            })
        })
    }

    /// Why `scope` is outside delegation `id` for `client`, if it is.
    fn outside(&self, id: &str, client: &str, scope: &str) -> Option<String> {
        let Some((delegator, delegate, granted, revoked)) = self.delegations.get(id) else {
            return Some(format!("the log holds no delegation {id}"));
        };
        if *revoked {
            return Some(format!("delegation {id} was revoked"));
        }
        if delegate != client {
            return Some(format!("delegation {id} is to {delegate}, not {client}"));
        }
        if !granted.iter().any(|p| covers(p, scope)) {
            return Some(format!(
                "delegation {id} grants only {}",
                granted.iter().cloned().collect::<Vec<_>>().join(" ")
            ));
        }
        if !self.holds(&format!("client:{client}"), scope) {
            return Some(format!("no role bound to the delegate {client} grants it"));
        }
        if !self.holds(delegator, scope) {
            return Some(format!(
                "no role bound to the delegator {delegator} grants it"
            ));
        }
        None
    }
}

pub fn check(h: &History) -> Vec<Violation> {
    let Some(c) = &h.creds else {
        return Vec::new();
    };
    let mut tokens: Vec<_> = c
        .log
        .requests
        .iter()
        .filter(|r| r.kind == CredKind::Delegated)
        .filter_map(|r| r.issued().map(|i| (i.index, r, i)))
        .collect();
    tokens.sort_by_key(|t| t.0);
    let mut model = Model::default();
    let mut records = c.export.iter().peekable();
    let mut out = Vec::new();
    for (index, r, i) in tokens {
        while let Some(rec) = records.next_if(|rec| rec.log_index <= index) {
            model.apply(&rec.event);
        }
        let Some(d) = &i.delegation else {
            out.push(Violation {
                checker: NAME,
                detail: format!(
                    "node {}'s delegated token {} names no delegation",
                    r.node, i.id
                ),
            });
            continue;
        };
        for scope in &i.scopes {
            if let Some(why) = model.outside(d, &i.client_id, scope) {
                out.push(Violation {
                    checker: NAME,
                    detail: format!(
                        "node {} issued delegated token {} to {} carrying {scope} at log index {index}, but there {why}",
                        r.node, i.id, i.client_id
                    ),
                });
            }
        }
    }
    out.truncate(REPORT_MAX);
    out
}
