//! Permissions: how patterns cover scopes, what a subject holds through its roles, and what a
//! delegation may confer. Issuance calls [`effective`] and nothing else, so the rule that no
//! token ever carries more than requested ∩ delegator ∩ delegate roles ∩ allow-list lives in
//! one place.
//!
//! A permission is `resource:action`; each part is `.`-separated segments. A `*` segment covers
//! exactly one segment, except in last place, where it covers one or more (`orders:*` covers
//! `orders:read` and `orders:read.all`).

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::identity::{Delegation, Delegator, Subject};
use crate::ids::{ClientId, DelegationId, Scope};
use crate::state::{Client, State};

/// The resource of every admin permission (`authsec.admin:clients.write`, ...).
pub const ADMIN_RESOURCE: &str = "authsec.admin";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Star,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    resource: Vec<Seg>,
    action: Vec<Seg>,
}

fn segs(part: &str) -> Vec<Seg> {
    part.split('.')
        .map(|s| {
            if s == "*" {
                Seg::Star
            } else {
                Seg::Lit(s.to_owned())
            }
        })
        .collect()
}

impl Pattern {
    fn of(s: &Scope) -> Self {
        let (r, a) = s.as_str().split_once(':').unwrap_or((s.as_str(), "")); // a Scope always holds one ':'
        Pattern {
            resource: segs(r),
            action: segs(a),
        }
    }
}

/// Does `q` cover every string `p` matches? (`p` may hold stars too.)
fn part_covers(q: &[Seg], p: &[Seg]) -> bool {
    for (i, ps) in p.iter().enumerate() {
        let Some(qs) = q.get(i) else {
            return false;
        };
        let q_last = i + 1 == q.len();
        let p_last = i + 1 == p.len();
        match qs {
            Seg::Star if q_last => return true,
            // A middle star covers one segment: not a last-place star of `p`, which may
            // stand for several.
            Seg::Star => {
                if *ps == Seg::Star && p_last {
                    return false;
                }
            }
            Seg::Lit(a) => match ps {
                Seg::Lit(b) if a == b => {}
                _ => return false,
            },
        }
    }
    p.len() == q.len()
}

/// Concrete segments of `s` matched against `q` without allocating.
fn part_matches<'a>(q: &[Seg], mut s: impl Iterator<Item = &'a str>) -> bool {
    for (i, qs) in q.iter().enumerate() {
        let q_last = i + 1 == q.len();
        let Some(seg) = s.next() else {
            return false;
        };
        match qs {
            Seg::Star if q_last => return true,
            Seg::Star => {}
            Seg::Lit(a) => {
                if a != seg {
                    return false;
                }
            }
        }
    }
    s.next().is_none()
}

/// True when `pattern` covers everything `scope` (concrete or a pattern) stands for.
pub fn covers(pattern: &Scope, scope: &Scope) -> bool {
    let (q, p) = (Pattern::of(pattern), Pattern::of(scope));
    part_covers(&q.resource, &p.resource) && part_covers(&q.action, &p.action)
}

/// True when `scope` could stand for an admin permission (`authsec.admin:*`, `*:*`,
/// `authsec.*:x`, ...): such a scope is never delegated and never put in a token.
pub fn touches_admin(scope: &Scope) -> bool {
    let r = Pattern::of(scope).resource;
    let is = |s: &Seg, lit: &str| matches!(s, Seg::Star) || matches!(s, Seg::Lit(x) if x == lit);
    match r.as_slice() {
        [only] => matches!(only, Seg::Star),
        [first, second, ..] => is(first, "authsec") && is(second, "admin"),
        [] => false,
    }
}

/// A set of permission patterns compiled for fast checks: concrete ones in a hash set, the
/// rest pre-split.
#[derive(Debug, Clone, Default)]
pub struct PermissionSet {
    exact: HashSet<String>,
    patterns: Vec<Pattern>,
    all: BTreeSet<Scope>,
}

impl PermissionSet {
    pub fn new<'a>(perms: impl IntoIterator<Item = &'a Scope>) -> Self {
        let mut set = PermissionSet::default();
        for p in perms {
            set.insert(p);
        }
        set
    }

    pub fn insert(&mut self, p: &Scope) {
        if !self.all.insert(p.clone()) {
            return;
        }
        if p.is_wildcard() {
            self.patterns.push(Pattern::of(p));
        } else {
            self.exact.insert(p.as_str().to_owned());
        }
    }

    /// Does the set cover the concrete scope `s`? No allocation on this path.
    pub fn allows(&self, s: &str) -> bool {
        if self.exact.contains(s) {
            return true;
        }
        let Some((r, a)) = s.split_once(':') else {
            return false;
        };
        self.patterns.iter().any(|p| {
            part_matches(&p.resource, r.split('.')) && part_matches(&p.action, a.split('.'))
        })
    }

    /// Does some single member cover `scope` (which may be a pattern)?
    pub fn covers(&self, scope: &Scope) -> bool {
        if !scope.is_wildcard() {
            return self.allows(scope.as_str());
        }
        let p = Pattern::of(scope);
        self.exact.contains(scope.as_str())
            || self
                .patterns
                .iter()
                .any(|q| part_covers(&q.resource, &p.resource) && part_covers(&q.action, &p.action))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.all.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

impl PartialEq for PermissionSet {
    fn eq(&self, other: &Self) -> bool {
        self.all == other.all
    }
}

impl Eq for PermissionSet {}

/// What some subjects hold through their roles: the roles' compiled sets, as the state keeps
/// them (no set is built per call).
#[derive(Debug, Clone, Default)]
pub struct Held<'a>(Vec<&'a PermissionSet>);

impl Held<'_> {
    /// Does some role cover the concrete scope `s`?
    pub fn allows(&self, s: &str) -> bool {
        self.0.iter().any(|p| p.allows(s))
    }

    /// Does some single permission of some role cover `scope` (which may be a pattern)?
    pub fn covers(&self, scope: &Scope) -> bool {
        self.0.iter().any(|p| p.covers(scope))
    }
}

/// The roles bound to any of `subjects`, as compiled sets.
pub fn held_by<'a>(state: &'a State, subjects: &[Subject]) -> Held<'a> {
    let mut out = Vec::new();
    for s in subjects {
        if let Some(roles) = state.bindings.get(s) {
            for name in roles {
                if let Some(set) = state.idx.role_sets.get(name) {
                    out.push(set);
                }
            }
        }
    }
    Held(out)
}

/// A client's roles, as compiled sets.
pub fn client_held<'a>(state: &'a State, client_id: &ClientId) -> Held<'a> {
    held_by(state, &client_subjects(state, client_id))
}

/// A client's allow-list, compiled (empty for an unknown client).
fn allow_list<'a>(state: &'a State, client_id: &ClientId) -> &'a PermissionSet {
    static EMPTY: std::sync::OnceLock<PermissionSet> = std::sync::OnceLock::new();
    state
        .idx
        .allow_sets
        .get(client_id)
        .unwrap_or_else(|| EMPTY.get_or_init(PermissionSet::default))
}

/// Union of the permissions of every role bound to any of `subjects`, as roles are now.
pub fn role_permissions(state: &State, subjects: &[Subject]) -> PermissionSet {
    let mut set = PermissionSet::default();
    for s in subjects {
        if let Some(roles) = state.bindings.get(s) {
            for name in roles {
                if let Some(role) = state.roles.get(name) {
                    for p in &role.permissions {
                        set.insert(p);
                    }
                }
            }
        }
    }
    set
}

/// Who a client is, for role bindings: the client itself, its workload entries and their
/// SPIFFE IDs, and the SPIFFE ID bound to it for mTLS.
pub fn client_subjects(state: &State, client_id: &ClientId) -> Vec<Subject> {
    let mut out = vec![Subject::Client(client_id.clone())];
    if let Some(entries) = state.idx.entries_by_client.get(client_id) {
        for e in entries {
            out.push(Subject::Entry(e.clone()));
            if let Some(entry) = state.entries.get(e) {
                out.push(Subject::Spiffe(entry.spiffe_id.clone()));
            }
        }
    }
    if let Some(id) = state
        .client_auth
        .get(client_id)
        .and_then(|a| a.spiffe_id.clone())
    {
        out.push(Subject::Spiffe(id));
    }
    out
}

/// A client's permissions through its roles (before its allow-list).
pub fn client_role_permissions(state: &State, client_id: &ClientId) -> PermissionSet {
    role_permissions(state, &client_subjects(state, client_id))
}

/// Why a request for permissions is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Denial {
    #[error("client {0} does not exist")]
    UnknownClient(String),
    #[error("client {0} is disabled")]
    ClientDisabled(String),
    #[error("{scope} is an admin permission: never delegated and never put in a token")]
    AdminScope { scope: String },
    #[error("{scope} has a '*' segment; a token carries concrete scopes only")]
    WildcardScope { scope: String },
    #[error("{scope} is not allowed: {reason}")]
    NotAllowed { scope: String, reason: String },
    #[error("delegation {0} does not exist")]
    UnknownDelegation(String),
    #[error("delegation {id} was granted to {delegate}, not to {client}")]
    NotTheDelegate {
        id: String,
        delegate: String,
        client: String,
    },
    #[error("delegation {0} was revoked")]
    DelegationRevoked(String),
    #[error("delegation {id} expired at {expires_at_ms} ms since the epoch")]
    DelegationExpired { id: String, expires_at_ms: u64 },
    #[error("the chain of delegation {0} is deeper than any grant allows")]
    ChainTooDeep(String),
}

/// What a delegator holds now: a client's roles and its allow-list (nothing if disabled or
/// gone); a person's roles, with no allow-list.
fn delegator_permissions<'a>(
    state: &'a State,
    d: &Delegator,
) -> Option<(Held<'a>, Option<&'a PermissionSet>)> {
    match d {
        Delegator::Client(c) => {
            state.clients.get(c).filter(|c| c.enabled)?;
            Some((client_held(state, c), Some(allow_list(state, c))))
        }
        Delegator::Person { .. } => Some((held_by(state, &[d.subject()]), None)),
    }
}

fn not_allowed(scope: &Scope, reason: impl Into<String>) -> Denial {
    Denial::NotAllowed {
        scope: scope.to_string(),
        reason: reason.into(),
    }
}

/// Check one link of a delegation chain against `scope` (a concrete scope at issuance, or a
/// pattern when a re-delegation is granted).
fn link_confers(state: &State, d: &Delegation, scope: &Scope) -> Result<(), Denial> {
    let granted = state.idx.grant_sets.get(&d.delegation_id);
    if !granted.is_some_and(|g| g.covers(scope)) {
        return Err(not_allowed(
            scope,
            format!("delegation {} does not grant it", d.delegation_id),
        ));
    }
    let Some((roles, allow)) = delegator_permissions(state, &d.delegator) else {
        return Err(not_allowed(
            scope,
            format!("the delegator of {} is disabled or gone", d.delegation_id),
        ));
    };
    if !roles.covers(scope) || allow.is_some_and(|a| !a.covers(scope)) {
        return Err(not_allowed(
            scope,
            format!("the delegator of {} no longer holds it", d.delegation_id),
        ));
    }
    Ok(())
}

/// Every link from `id` up to its root: live and in order (the delegation first).
pub fn chain<'a>(
    state: &'a State,
    id: &DelegationId,
    time_ms: u64,
) -> Result<Vec<&'a Delegation>, Denial> {
    let mut out = Vec::new();
    let mut cur = Some(id);
    while let Some(id) = cur {
        let d = state
            .delegations
            .get(id)
            .ok_or_else(|| Denial::UnknownDelegation(id.to_string()))?;
        if d.revoked_at_index.is_some() {
            return Err(Denial::DelegationRevoked(id.to_string()));
        }
        if time_ms >= d.expires_at_ms {
            return Err(Denial::DelegationExpired {
                id: id.to_string(),
                expires_at_ms: d.expires_at_ms,
            });
        }
        out.push(d);
        cur = d.parent.as_ref();
        if cur.is_some() && out.len() > usize::from(crate::limits::DELEGATION_DEPTH_MAX) {
            // decide bounds depth, so only a damaged store gets here: refuse, never truncate.
            return Err(Denial::ChainTooDeep(id.to_string()));
        }
    }
    Ok(out)
}

/// The one rule issuance applies: the scopes a token for `client_id` may carry when it asks for
/// `requested`, optionally under `delegation`, evaluated against the roles as they are now.
/// Returns exactly `requested` or refuses naming the first scope that is not allowed; it never
/// silently cuts.
pub fn effective(
    state: &State,
    client_id: &ClientId,
    requested: &BTreeSet<Scope>,
    delegation: Option<&DelegationId>,
    time_ms: u64,
) -> Result<BTreeSet<Scope>, Denial> {
    let client: &Client = state
        .clients
        .get(client_id)
        .ok_or_else(|| Denial::UnknownClient(client_id.to_string()))?;
    if !client.enabled {
        return Err(Denial::ClientDisabled(client_id.to_string()));
    }
    let roles = client_held(state, client_id);
    let allow = allow_list(state, client_id);
    let links = match delegation {
        Some(id) => {
            let links = chain(state, id, time_ms)?;
            if links[0].delegate != *client_id {
                return Err(Denial::NotTheDelegate {
                    id: id.to_string(),
                    delegate: links[0].delegate.to_string(),
                    client: client_id.to_string(),
                });
            }
            links
        }
        None => Vec::new(),
    };
    for s in requested {
        if touches_admin(s) {
            return Err(Denial::AdminScope {
                scope: s.to_string(),
            });
        }
        if s.is_wildcard() {
            return Err(Denial::WildcardScope {
                scope: s.to_string(),
            });
        }
        if !roles.allows(s.as_str()) {
            return Err(not_allowed(s, format!("no role of {client_id} grants it")));
        }
        if !allow.allows(s.as_str()) {
            return Err(not_allowed(
                s,
                format!("it is outside {client_id}'s allowed scopes"),
            ));
        }
        for link in &links {
            // Each delegate up the chain must still hold it through its own roles too.
            if link.delegate != *client_id {
                let d_roles = client_held(state, &link.delegate);
                let d_allow = state
                    .clients
                    .get(&link.delegate)
                    .filter(|c| c.enabled)
                    .map(|_| allow_list(state, &link.delegate));
                if !d_roles.allows(s.as_str()) || !d_allow.is_some_and(|a| a.allows(s.as_str())) {
                    return Err(not_allowed(
                        s,
                        format!("{} no longer holds it", link.delegate),
                    ));
                }
            }
            link_confers(state, link, s)?;
        }
    }
    Ok(requested.clone())
}

/// What a new delegation may grant: each requested permission (patterns allowed) must be
/// covered by the delegator's current permissions, the delegate's roles and allow-list, and, for
/// a re-delegation, the parent chain. Used by `decide`.
pub fn check_grant(
    state: &State,
    delegator: &Delegator,
    delegate: &Client,
    parent: Option<&DelegationId>,
    requested: &BTreeSet<Scope>,
    time_ms: u64,
) -> Result<(), Denial> {
    let (g_roles, g_allow) =
        delegator_permissions(state, delegator).ok_or_else(|| match delegator {
            Delegator::Client(c) => {
                if state.clients.contains_key(c) {
                    Denial::ClientDisabled(c.to_string())
                } else {
                    Denial::UnknownClient(c.to_string())
                }
            }
            Delegator::Person { .. } => Denial::UnknownClient(String::new()),
        })?;
    let d_roles = client_held(state, &delegate.client_id);
    let d_allow = allow_list(state, &delegate.client_id);
    let links = match parent {
        Some(p) => chain(state, p, time_ms)?,
        None => Vec::new(),
    };
    for s in requested {
        if touches_admin(s) {
            return Err(Denial::AdminScope {
                scope: s.to_string(),
            });
        }
        if !g_roles.covers(s) || g_allow.is_some_and(|a| !a.covers(s)) {
            return Err(not_allowed(s, "the delegator does not hold it"));
        }
        if !d_roles.covers(s) {
            return Err(not_allowed(
                s,
                format!("no role of the delegate {} grants it", delegate.client_id),
            ));
        }
        if !d_allow.covers(s) {
            return Err(not_allowed(
                s,
                format!(
                    "it is outside the delegate {}'s allowed scopes",
                    delegate.client_id
                ),
            ));
        }
        for link in &links {
            link_confers(state, link, s)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).expect("valid scope")
    }

    #[test]
    fn pattern_coverage() {
        assert!(covers(&s("orders:*"), &s("orders:read.*")));
        assert!(covers(&s("orders:*"), &s("orders:*")));
        assert!(!covers(&s("orders:read.*"), &s("orders:*")));
        assert!(covers(&s("a.*.c:x"), &s("a.*.c:x")));
        assert!(
            !covers(&s("a.*.c:x"), &s("a.*:x")),
            "a last star may stand for many"
        );
        assert!(covers(&s("a.*:x"), &s("a.*.c:x")));
        assert!(!covers(&s("a.b:x"), &s("a.*:x")));
    }

    #[test]
    fn compiled_set_agrees_with_covers() {
        let perms = [s("orders:read"), s("billing.*:read"), s("a.*.c:*")];
        let set = PermissionSet::new(&perms);
        for probe in [
            "orders:read",
            "orders:write",
            "billing.eu:read",
            "billing:read",
            "a.b.c:x.y",
            "a.b.d:x",
        ] {
            let want = perms.iter().any(|p| covers(p, &s(probe)));
            assert_eq!(set.allows(probe), want, "{probe}");
        }
    }

    #[test]
    fn admin_namespace() {
        assert!(touches_admin(&s("authsec.admin:clients.write")));
        assert!(touches_admin(&s("*:*")));
        assert!(touches_admin(&s("authsec.*:x")));
        assert!(touches_admin(&s("*.admin:x")));
        assert!(touches_admin(&s("authsec.admin.sub:x")));
        assert!(!touches_admin(&s("authsec:x")));
        assert!(!touches_admin(&s("orders:*")));
        assert!(!touches_admin(&s("authsec.tokens:x")));
    }
}
