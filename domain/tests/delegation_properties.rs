//! Delegation properties over random role graphs.
//!
//! Each case builds, only through `apply_proposal` (the real rules), roles with random
//! permissions drawn from a small alphabet (literals, wildcards, admin permissions), clients with
//! random allow-lists, random bindings to clients, their workload entries and SPIFFE IDs and to
//! persons, then runs random operations: binding, role and allow-list changes, enabling,
//! disabling and revoking clients, changing their mTLS SPIFFE ID, deleting entries and clients,
//! delegations and re-delegations, revocations and clock advances. Every outcome is compared
//! with a naive reference written here over the raw `State` maps (no `PermissionSet`, no
//! indexes):
//!
//! - (a) a delegation is accepted exactly when the reference grants it (every permission covered
//!   by the delegator's, the delegate's role and the delegate's allow-list permissions and by
//!   each link of the parent chain), and `effective` allows exactly what the reference allows;
//! - (b) no admin permission is ever conferred, nor granted in a delegation;
//! - (c) re-delegations only narrow (depth, max_depth, expiry, token ttl), and nothing is allowed
//!   under an expired or revoked link;
//! - (d) revoking a delegation revokes it and its whole subtree, and nothing else;
//! - (e) replaying the events gives the same state; the rows written as each proposal applies
//!   (`State::row` of every key its events touch, as the storage crate does) are exactly the rows
//!   of the state, load back (`load_row`, `rebuild_indexes`) into an equal state, and hash to the
//!   same SHA-256 digest as the replayed state's.
//!
//! The second half checks the pattern matchers against brute-force enumeration.
//! `PROPTEST_CASES=20000` runs longer.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use authsec_domain::command::{
    ClientPatch, CreateClient, CredentialChange, DelegationSpec, RevocationTarget,
};
use authsec_domain::decide::scope_covers;
use authsec_domain::identity::{IdentityMeta, AGENT_TEMPLATE_DEFAULT};
use authsec_domain::permissions::{covers, effective, touches_admin, PermissionSet};
use authsec_domain::persist::Row;
use authsec_domain::{
    apply_proposal, evolve, limits, Actor, ClientId, ClientKind, Command, Delegation, DelegationId,
    Delegator, EntryId, Event, Principal, ProjectionKey, Proposal, Rejection, RoleName, Scope,
    SpiffeId, Stamp, State, Subject, TrustDomain,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// The alphabet of a case.

const TD: &str = "example.org";
const T0: u64 = 1_000_000;

/// Role permissions: literals, wildcards in resource and action, and admin permissions.
const PERMS: &[&str] = &[
    "orders:read",
    "orders:write",
    "orders:read.all",
    "orders:*",
    "orders:*.all",
    "billing.eu:read",
    "billing.us:read",
    "billing.eu:write",
    "billing.*:read",
    "billing.*:*",
    "billing:*",
    "*.eu:read",
    "*:read",
    "*:*",
    "reports:read",
    "reports.daily:read",
    "reports.*:read",
    "authsec.admin:clients.write",
    "authsec.admin:*",
    "authsec.*:read",
];

/// Allow-list entries at creation (create_client refuses `authsec.admin...`).
const ALLOW: &[&str] = &[
    "orders:read",
    "orders:write",
    "orders:*",
    "orders:read.all",
    "billing.eu:read",
    "billing.*:read",
    "billing.*:*",
    "*.eu:read",
    "*:read",
    "*:*",
    "reports.*:read",
    "reports:read",
    "authsec.*:read",
    "authsec.tokens:read",
];

/// Allow-lists set later by `UpdateClient` (which takes an admin pattern too).
const ALLOW_UPDATE: &[&str] = &[
    "orders:read",
    "orders:*",
    "billing.*:*",
    "*:read",
    "*:*",
    "reports:read",
    "authsec.admin:*",
];

/// Scopes requested at issuance: concrete ones (admin ones included) and one wildcard.
const PROBES: &[&str] = &[
    "orders:read",
    "orders:write",
    "orders:read.all",
    "orders:write.all",
    "billing.eu:read",
    "billing.us:read",
    "billing.eu:write",
    "billing:read",
    "billing.eu.x:read",
    "reports:read",
    "reports.daily:read",
    "x.eu:read",
    "authsec.admin:clients.write",
    "authsec.admin:read",
    "authsec.tokens:read",
    "orders:*",
];

const CLIENTS: &[(&str, ClientKind)] = &[
    ("svc0", ClientKind::Service),
    ("svc1", ClientKind::Service),
    ("ci0", ClientKind::Ci),
    ("a0", ClientKind::AiAgent),
    ("a1", ClientKind::AiAgent),
    ("a2", ClientKind::AiAgent),
    ("a3", ClientKind::AiAgent),
];
const FIRST_AGENT: usize = 3;
const SVC0_SPIFFE: &str = "spiffe://example.org/svc/svc0";
const PERSONS: &[(&str, &str)] = &[
    ("https://idp.example", "alice"),
    ("https://idp.example", "bob"),
];
const ROLES: usize = 6;

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn cid(s: &str) -> ClientId {
    ClientId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn spiffe(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn role(i: usize) -> RoleName {
    RoleName::parse(&format!("r{i}")).expect("valid role name")
}

fn person(i: usize) -> Delegator {
    let (issuer, subject) = PERSONS[i];
    Delegator::Person {
        issuer: issuer.into(),
        subject: subject.into(),
    }
}

/// Everything a role can be bound to: clients, agents' entries and SPIFFE IDs, svc0's mTLS
/// SPIFFE ID, persons.
fn subjects() -> Vec<Subject> {
    let mut v: Vec<Subject> = CLIENTS
        .iter()
        .map(|(c, _)| Subject::Client(cid(c)))
        .collect();
    for (c, _) in &CLIENTS[FIRST_AGENT..] {
        v.push(Subject::Entry(
            EntryId::parse(&format!("{c}-entry")).expect("valid entry id"),
        ));
        v.push(Subject::Spiffe(spiffe(&format!("spiffe://{TD}/agent/{c}"))));
    }
    v.push(Subject::Spiffe(spiffe(SVC0_SPIFFE)));
    for i in 0..PERSONS.len() {
        v.push(person(i).subject());
    }
    v
}

fn nsubjects() -> usize {
    CLIENTS.len() + 2 * (CLIENTS.len() - FIRST_AGENT) + 1 + PERSONS.len()
}

// ---------------------------------------------------------------------------------------------
// The naive reference, over the raw maps of `State`.

fn segs(part: &str) -> Vec<&str> {
    part.split('.').collect()
}

fn parts(s: &str) -> (Vec<&str>, Vec<&str>) {
    let (r, a) = s.split_once(':').expect("a scope holds a ':'");
    (segs(r), segs(a))
}

/// A pattern part against concrete segments: a last-place `*` takes one or more, any other `*`
/// exactly one.
fn part_match(p: &[&str], s: &[&str]) -> bool {
    match (p.split_first(), s.split_first()) {
        (None, None) => true,
        (Some((&"*", [])), Some(_)) => true,
        (Some((ph, pt)), Some((sh, st))) => (*ph == "*" || ph == sh) && part_match(pt, st),
        _ => false,
    }
}

/// Does `pattern` match the concrete scope `s`? Written independently of the crate.
fn ref_matches(pattern: &str, s: &str) -> bool {
    let ((pr, pa), (sr, sa)) = (parts(pattern), parts(s));
    part_match(&pr, &sr) && part_match(&pa, &sa)
}

fn ref_wildcard(s: &str) -> bool {
    s.split([':', '.']).any(|x| x == "*")
}

/// A concrete scope in the admin namespace: resource `authsec.admin` or below it.
fn ref_admin_concrete(s: &str) -> bool {
    let (r, _) = parts(s);
    r.len() >= 2 && r[0] == "authsec" && r[1] == "admin"
}

/// Could the pattern `p` stand for an admin permission? Tries `authsec.admin` followed by up
/// to two segments drawn from the pattern's own literals and one other: exhaustive for patterns
/// of up to four resource segments.
fn ref_could_be_admin(p: &str) -> bool {
    let (r, _) = parts(p);
    let mut fill: Vec<&str> = r.iter().copied().filter(|x| *x != "*").collect();
    fill.push("other");
    let mut candidates = vec!["authsec.admin".to_owned()];
    for a in &fill {
        candidates.push(format!("authsec.admin.{a}"));
        for b in &fill {
            candidates.push(format!("authsec.admin.{a}.{b}"));
        }
    }
    candidates.iter().any(|c| part_match(&r, &segs(c)))
}

fn ref_subjects(st: &State, c: &ClientId) -> Vec<Subject> {
    let mut v = vec![Subject::Client(c.clone())];
    for e in st.entries.values() {
        if e.client_id.as_ref() == Some(c) {
            v.push(Subject::Entry(e.entry_id.clone()));
            v.push(Subject::Spiffe(e.spiffe_id.clone()));
        }
    }
    if let Some(id) = st.client_auth.get(c).and_then(|a| a.spiffe_id.clone()) {
        v.push(Subject::Spiffe(id));
    }
    v
}

fn ref_role_perms(st: &State, subjects: &[Subject]) -> Vec<Scope> {
    let mut out = Vec::new();
    for s in subjects {
        for name in st.bindings.get(s).into_iter().flatten() {
            if let Some(r) = st.roles.get(name) {
                out.extend(r.permissions.iter().cloned());
            }
        }
    }
    out
}

/// The sets a scope must be covered by, each of them, for an enabled client to hold it: its
/// role permissions and its allow-list. `None` if the client is gone or disabled.
fn ref_client_sets(st: &State, c: &ClientId) -> Option<Vec<Vec<Scope>>> {
    let client = st.clients.get(c).filter(|c| c.enabled)?;
    Some(vec![
        ref_role_perms(st, &ref_subjects(st, c)),
        client.allowed_scopes.iter().cloned().collect(),
    ])
}

fn ref_delegator_sets(st: &State, d: &Delegator) -> Option<Vec<Vec<Scope>>> {
    match d {
        Delegator::Client(c) => ref_client_sets(st, c),
        Delegator::Person { .. } => Some(vec![ref_role_perms(st, &[d.subject()])]),
    }
}

fn all_cover(sets: &[Vec<Scope>], s: &Scope, cov: impl Fn(&Scope, &Scope) -> bool) -> bool {
    sets.iter().all(|set| set.iter().any(|p| cov(p, s)))
}

fn matches(p: &Scope, s: &Scope) -> bool {
    ref_matches(p.as_str(), s.as_str())
}

/// The chain from `id` to its root, every link live at `t`.
fn ref_chain<'a>(st: &'a State, id: &DelegationId, t: u64) -> Result<Vec<&'a Delegation>, String> {
    let mut out: Vec<&Delegation> = Vec::new();
    let mut cur = Some(id.clone());
    while let Some(id) = cur {
        let d = st.delegations.get(&id).ok_or(format!("{id} unknown"))?;
        if d.revoked_at_index.is_some() {
            return Err(format!("{id} revoked"));
        }
        if t >= d.expires_at_ms {
            return Err(format!("{id} expired"));
        }
        assert!(out.len() < 20, "delegation parents form a cycle at {id}");
        out.push(d);
        cur = d.parent.clone();
    }
    Ok(out)
}

fn ref_effective(
    st: &State,
    c: &ClientId,
    requested: &BTreeSet<Scope>,
    via: Option<&DelegationId>,
    t: u64,
) -> Result<(), String> {
    let own = ref_client_sets(st, c).ok_or("client gone or disabled")?;
    let links = match via {
        Some(id) => {
            let links = ref_chain(st, id, t)?;
            if links[0].delegate != *c {
                return Err("not the delegate".into());
            }
            links
        }
        None => Vec::new(),
    };
    for s in requested {
        if ref_admin_concrete(s.as_str()) {
            return Err(format!("{s} is admin"));
        }
        if ref_wildcard(s.as_str()) {
            return Err(format!("{s} is a wildcard"));
        }
        if !all_cover(&own, s, matches) {
            return Err(format!("{c} does not hold {s}"));
        }
        for l in &links {
            if !l.permissions.iter().any(|p| matches(p, s)) {
                return Err(format!("{} does not grant {s}", l.delegation_id));
            }
            let g = ref_delegator_sets(st, &l.delegator).ok_or("delegator gone or disabled")?;
            if !all_cover(&g, s, matches) {
                return Err(format!("the delegator of {} lacks {s}", l.delegation_id));
            }
            let d = ref_client_sets(st, &l.delegate).ok_or("a delegate is gone or disabled")?;
            if !all_cover(&d, s, matches) {
                return Err(format!("the delegate of {} lacks {s}", l.delegation_id));
            }
        }
    }
    Ok(())
}

/// Should `CreateDelegation(spec)` at time `t` be accepted?
fn ref_grant(st: &State, spec: &DelegationSpec, t: u64) -> Result<(), String> {
    if st.delegations.contains_key(&spec.delegation_id) {
        return Err("id taken".into());
    }
    let delegate = st.clients.get(&spec.delegate).ok_or("no delegate")?;
    if delegate.kind != ClientKind::AiAgent || !delegate.enabled {
        return Err("delegate not an enabled ai_agent".into());
    }
    if let Delegator::Client(c) = &spec.delegator {
        if !st.clients.contains_key(c) || *c == spec.delegate {
            return Err("delegator missing or self".into());
        }
    }
    if spec.permissions.is_empty()
        || spec.max_token_ttl_s == 0
        || spec.max_token_ttl_s > limits::DELEGATION_TOKEN_TTL_S_MAX
        || spec.ttl_ms == 0
        || spec.ttl_ms > limits::DELEGATION_LIFETIME_MS_MAX
        || spec.max_depth > limits::DELEGATION_DEPTH_MAX
    {
        return Err("out of bounds".into());
    }
    let expires = t.saturating_add(spec.ttl_ms);
    let links = match &spec.parent {
        Some(pid) => {
            let p = st.delegations.get(pid).ok_or("no parent")?;
            if spec.delegator != Delegator::Client(p.delegate.clone())
                || p.max_depth == 0
                || spec.max_depth >= p.max_depth
                || expires > p.expires_at_ms
                || spec.max_token_ttl_s > p.max_token_ttl_s
            {
                return Err("does not narrow its parent".into());
            }
            ref_chain(st, pid, t)?
        }
        None => Vec::new(),
    };
    let g = ref_delegator_sets(st, &spec.delegator).ok_or("delegator disabled")?;
    let d = ref_client_sets(st, &spec.delegate).ok_or("delegate disabled")?;
    for s in &spec.permissions {
        if ref_could_be_admin(s.as_str()) {
            return Err(format!("{s} is admin"));
        }
        if !all_cover(&g, s, covers) {
            return Err(format!("the delegator lacks {s}"));
        }
        if !all_cover(&d, s, covers) {
            return Err(format!("the delegate lacks {s}"));
        }
        for l in &links {
            let lg = ref_delegator_sets(st, &l.delegator).ok_or("a link's delegator is gone")?;
            if !l.permissions.iter().any(|p| covers(p, s)) || !all_cover(&lg, s, covers) {
                return Err(format!("link {} does not confer {s}", l.delegation_id));
            }
        }
    }
    Ok(())
}

/// `id` and every delegation below it, from the parent pointers.
fn ref_subtree(st: &State, id: &DelegationId) -> BTreeSet<DelegationId> {
    let mut out = BTreeSet::from([id.clone()]);
    loop {
        let more: Vec<DelegationId> = st
            .delegations
            .values()
            .filter(|d| d.parent.as_ref().is_some_and(|p| out.contains(p)))
            .map(|d| d.delegation_id.clone())
            .filter(|d| !out.contains(d))
            .collect();
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}

/// The earliest expiry on the chain from `id` up, and whether some link is revoked.
fn chain_limits(st: &State, id: &DelegationId) -> (u64, bool) {
    let (mut exp, mut revoked) = (u64::MAX, false);
    let mut cur = st.delegations.get(id);
    while let Some(d) = cur {
        exp = exp.min(d.expires_at_ms);
        revoked |= d.revoked_at_index.is_some();
        cur = d.parent.as_ref().and_then(|p| st.delegations.get(p));
    }
    (exp, revoked)
}

// ---------------------------------------------------------------------------------------------
// Random cases.

#[derive(Debug, Clone)]
struct Setup {
    /// Per role: indices into PERMS.
    roles: Vec<BTreeSet<usize>>,
    /// Per client: indices into ALLOW.
    allowed: Vec<BTreeSet<usize>>,
    /// (role, index into subjects()).
    bindings: Vec<(usize, usize)>,
}

#[derive(Debug, Clone)]
struct Grant {
    /// Index into CLIENTS, then PERSONS.
    delegator: usize,
    /// Index into CLIENTS.
    delegate: usize,
    /// Each permission: where to draw it from (see `Pick`), and which.
    perms: Vec<(Pick, Index)>,
    max_depth: u8,
    ttl_ms: u64,
    token_ttl_s: u32,
    /// A re-delegation of one of the delegations accepted so far (`true`: of one of the last
    /// two, so that chains grow).
    parent: Option<(bool, Index)>,
    /// A re-delegation made by the parent's delegate (otherwise by `delegator`: refused).
    by_parent_delegate: bool,
    /// For a re-delegation: derive depth, lifetime and token ttl from the parent's, cut to
    /// k/8 of them (k = 1..=8), instead of the raw values above.
    narrow: Option<u8>,
}

/// Where a requested permission comes from. The first two only bias the generator towards
/// grants that can succeed; the reference still decides.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// A permission of the alphabet that every party holds now, per the reference.
    Grantable,
    /// What the granter holds: its role permissions, or the parent's grant.
    Held,
    /// Anything in the alphabet (admin permissions included).
    Any,
}

#[derive(Debug, Clone)]
enum Op {
    Bind(usize, usize),
    Unbind(usize, usize),
    UpdateRole(usize, BTreeSet<usize>),
    SetAllowed(usize, BTreeSet<usize>),
    SetEnabled(usize, bool),
    Delegate(Grant),
    Revoke(Index),
    DeleteClient(usize),
    /// Delete an agent's workload entry (index into the agents).
    DeleteEntry(usize),
    /// Set (or clear) a client's mTLS SPIFFE ID: roles bound to that ID then apply to it.
    SetSpiffeId(usize, Option<Index>),
    /// `Revoke(Client)`: disabled, its credentials revoked.
    RevokeClient(usize),
    Advance(u64),
    Check(Index),
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    let role = proptest::collection::btree_set(0..PERMS.len(), 1..6);
    let allowed = prop_oneof![
        1 => Just(BTreeSet::from([ALLOW.iter().position(|a| *a == "*:*").expect("in ALLOW")])),
        3 => proptest::collection::btree_set(0..ALLOW.len(), 1..5),
    ];
    (
        proptest::collection::vec(role, ROLES),
        proptest::collection::vec(allowed, CLIENTS.len()),
        proptest::collection::vec((0..ROLES, 0..nsubjects()), 12..32),
    )
        .prop_map(|(roles, allowed, bindings)| Setup {
            roles,
            allowed,
            bindings,
        })
}

fn grant_strategy() -> impl Strategy<Value = Grant> {
    let n = CLIENTS.len();
    let pick = prop_oneof![7 => Just(Pick::Grantable), 2 => Just(Pick::Held), 1 => Just(Pick::Any)];
    (
        (
            prop_oneof![3 => 0..FIRST_AGENT, 2 => n..n + PERSONS.len(), 2 => FIRST_AGENT..n],
            prop_oneof![6 => FIRST_AGENT..n, 1 => 0..n],
            proptest::collection::vec((pick, any::<Index>()), 1..3),
        ),
        prop_oneof![1 => Just(0u8), 3 => 1u8..5],
        prop_oneof![9 => 1u64..200_000, 1 => Just(0u64)],
        1u32..7200,
        proptest::option::weighted(0.6, (proptest::bool::weighted(0.6), any::<Index>())),
        proptest::bool::weighted(0.9),
        proptest::option::weighted(0.8, 1u8..=8),
    )
        .prop_map(
            |(
                (delegator, delegate, perms),
                max_depth,
                ttl_ms,
                token_ttl_s,
                parent,
                by_parent_delegate,
                narrow,
            )| Grant {
                delegator,
                delegate,
                perms,
                max_depth,
                ttl_ms,
                token_ttl_s,
                parent,
                by_parent_delegate,
                narrow,
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let n = CLIENTS.len();
    prop_oneof![
        6 => (0..ROLES, 0..nsubjects()).prop_map(|(r, s)| Op::Bind(r, s)),
        1 => (0..ROLES, 0..nsubjects()).prop_map(|(r, s)| Op::Unbind(r, s)),
        3 => (0..ROLES, proptest::collection::btree_set(0..PERMS.len(), 0..5))
            .prop_map(|(r, p)| Op::UpdateRole(r, p)),
        1 => (0..n, proptest::collection::btree_set(0..ALLOW_UPDATE.len(), 1..4))
            .prop_map(|(c, a)| Op::SetAllowed(c, a)),
        1 => (0..n, proptest::bool::weighted(0.7)).prop_map(|(c, e)| Op::SetEnabled(c, e)),
        24 => grant_strategy().prop_map(Op::Delegate),
        3 => any::<Index>().prop_map(Op::Revoke),
        1 => (0..n).prop_map(Op::DeleteClient),
        1 => (0..n - FIRST_AGENT).prop_map(Op::DeleteEntry),
        1 => (0..n, proptest::option::of(any::<Index>())).prop_map(|(c, i)| Op::SetSpiffeId(c, i)),
        1 => (0..n).prop_map(Op::RevokeClient),
        4 => (0u64..20_000).prop_map(Op::Advance),
        3 => any::<Index>().prop_map(Op::Check),
    ]
}

fn case_strategy() -> impl Strategy<Value = (Setup, Vec<Op>)> {
    (
        setup_strategy(),
        proptest::collection::vec(op_strategy(), 10..40),
    )
}

/// What a run saw, to show that the properties are not vacuous.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    grants_accepted: u64,
    grants_rejected: u64,
    redelegations_accepted: u64,
    depth2_accepted: u64,
    pattern_grants_accepted: u64,
    admin_grants_refused: u64,
    revocations_with_descendants: u64,
    effective_allowed_via: u64,
    effective_denied_via: u64,
    effective_allowed_direct: u64,
    expired_chains_checked: u64,
    revoked_chains_checked: u64,
    clients_deleted: u64,
}

struct World {
    state: State,
    now: u64,
    index: u64,
    /// Every accepted proposal: its events and its replicated time.
    log: Vec<(Vec<Event>, u64)>,
    /// The rows the storage crate would hold: after every accepted proposal, `State::row` of
    /// each key its events touch (a `None` value deletes).
    disk: BTreeMap<(&'static str, Vec<u8>), Vec<u8>>,
    /// Accepted delegations, in order.
    ids: Vec<DelegationId>,
    attempts: usize,
    subjects: Vec<Subject>,
    /// Compare `effective` with the reference (the expensive part).
    check_effective: bool,
    stats: Stats,
}

impl World {
    fn new(setup: &Setup, check_effective: bool) -> World {
        let mut w = World {
            state: State::default(),
            now: T0,
            index: 0,
            log: Vec::new(),
            disk: BTreeMap::new(),
            ids: Vec::new(),
            attempts: 0,
            subjects: subjects(),
            check_effective,
            stats: Stats::default(),
        };
        w.must(Command::ConfigureTrustDomain {
            trust_domain: TrustDomain::parse(TD).expect("valid"),
        });
        for (i, perms) in setup.roles.iter().enumerate() {
            w.must(Command::CreateRole {
                name: role(i),
                description: String::new(),
                permissions: perms.iter().map(|&p| scope(PERMS[p])).collect(),
            });
        }
        for (i, (name, kind)) in CLIENTS.iter().enumerate() {
            w.must(Command::CreateClient(CreateClient {
                client_id: cid(name),
                kind: *kind,
                display_name: (*name).into(),
                description: String::new(),
                owner: String::new(),
                allowed_scopes: setup.allowed[i].iter().map(|&a| scope(ALLOW[a])).collect(),
                default_scopes: BTreeSet::new(),
                default_audience: String::new(),
                secret_hash: None,
                public_keys: Vec::new(),
                spiffe_id: (*name == "svc0").then(|| spiffe(SVC0_SPIFFE)),
                agent_entry: (*kind == ClientKind::AiAgent).then(|| {
                    (
                        EntryId::parse(&format!("{name}-entry")).expect("valid"),
                        AGENT_TEMPLATE_DEFAULT.to_owned(),
                    )
                }),
            }));
        }
        for &(r, s) in &setup.bindings {
            let subject = w.subjects[s].clone();
            w.must(Command::Bind {
                role: role(r),
                subject,
            });
        }
        w
    }

    fn propose(&mut self, command: Command) -> Result<Vec<Event>, Rejection> {
        self.index += 1;
        let p = Proposal {
            stamp: Stamp {
                time_ms: self.now,
                seed: [0; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 1,
            },
            command,
        };
        let (events, time) = apply_proposal(&mut self.state, &p, self.index)?;
        assert_eq!(time, self.now, "the clock only moves forward here");
        for e in &events {
            for key in [Some(e.touches()), e.also_touches()].into_iter().flatten() {
                if let Some(row) = self.state.row(&key) {
                    match row.value {
                        Some(v) => self.disk.insert((row.family, row.key), v),
                        None => self.disk.remove(&(row.family, row.key)),
                    };
                }
            }
        }
        self.log.push((events.clone(), time));
        Ok(events)
    }

    fn must(&mut self, c: Command) -> Vec<Event> {
        let shown = format!("{c:?}");
        self.propose(c)
            .unwrap_or_else(|r| panic!("setup command {shown} rejected: {r}"))
    }

    fn delegator(&self, i: usize) -> Delegator {
        if i < CLIENTS.len() {
            Delegator::Client(cid(CLIENTS[i].0))
        } else {
            person(i - CLIENTS.len())
        }
    }

    /// The concrete delegation a generated grant stands for in the current state.
    fn resolve(&mut self, g: &Grant) -> DelegationSpec {
        self.attempts += 1;
        let st = &self.state;
        let parent = match g.parent {
            Some((recent, i)) if !self.ids.is_empty() => {
                let from = if recent {
                    self.ids.len().saturating_sub(2)
                } else {
                    0
                };
                let pool = &self.ids[from..];
                Some(&st.delegations[&pool[i.index(pool.len())]])
            }
            _ => None,
        };
        let delegator = match parent {
            Some(p) if g.by_parent_delegate => Delegator::Client(p.delegate.clone()),
            _ => self.delegator(g.delegator),
        };
        let mut delegate = cid(CLIENTS[g.delegate].0);
        if let (Some(p), true) = (parent, g.by_parent_delegate) {
            if p.delegate == delegate {
                // Pass it on to the next agent rather than to itself (refused; tried elsewhere).
                let agents = CLIENTS.len() - FIRST_AGENT;
                delegate = cid(CLIENTS[FIRST_AGENT + (g.delegate - FIRST_AGENT + 1) % agents].0);
            }
        }
        let alphabet: Vec<Scope> = PERMS.iter().chain(PROBES).map(|s| scope(s)).collect();
        let held: Vec<Scope> = match parent {
            Some(p) => p.permissions.iter().cloned().collect(),
            None => match &delegator {
                Delegator::Client(c) => ref_role_perms(st, &ref_subjects(st, c)),
                d => ref_role_perms(st, &[d.subject()]),
            },
        };
        let parties: Vec<Vec<Scope>> = [
            ref_delegator_sets(st, &delegator),
            ref_client_sets(st, &delegate),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .chain(parent.map(|p| p.permissions.iter().cloned().collect()))
        .collect();
        let grantable: Vec<Scope> = alphabet
            .iter()
            .filter(|s| !touches_admin(s) && all_cover(&parties, s, covers))
            .cloned()
            .collect();
        let from = |pool: &[Scope], i: &Index| {
            (!pool.is_empty()).then(|| pool[i.index(pool.len())].clone())
        };
        let permissions = g
            .perms
            .iter()
            .map(|(pick, i)| {
                let picked = match pick {
                    Pick::Grantable => from(&grantable, i),
                    Pick::Held => from(&held, i),
                    Pick::Any => None,
                };
                picked.unwrap_or_else(|| alphabet[i.index(alphabet.len())].clone())
            })
            .collect();
        let (mut max_depth, mut ttl_ms, mut max_token_ttl_s) =
            (g.max_depth, g.ttl_ms, g.token_ttl_s);
        if let (Some(p), Some(k)) = (parent, g.narrow) {
            let k = u64::from(k);
            max_depth = p.max_depth.saturating_sub(if k % 4 == 0 { 2 } else { 1 });
            ttl_ms = (p.expires_at_ms.saturating_sub(self.now) * k / 8).max(1);
            max_token_ttl_s = ((u64::from(p.max_token_ttl_s) * k / 8) as u32).max(1);
        }
        DelegationSpec {
            delegation_id: DelegationId::parse(&format!("d{}", self.attempts)).expect("valid"),
            delegator,
            delegate,
            permissions,
            max_token_ttl_s,
            max_depth,
            ttl_ms,
            parent: parent.map(|p| p.delegation_id.clone()),
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Bind(r, s) | Op::Unbind(r, s) => {
                let (role, subject) = (role(*r), self.subjects[*s].clone());
                let c = if matches!(op, Op::Bind(..)) {
                    Command::Bind { role, subject }
                } else {
                    Command::Unbind { role, subject }
                };
                let _ = self.propose(c);
            }
            Op::UpdateRole(r, perms) => {
                let _ = self.propose(Command::UpdateRole {
                    name: role(*r),
                    description: None,
                    permissions: Some(perms.iter().map(|&p| scope(PERMS[p])).collect()),
                    expected_revision: None,
                });
            }
            Op::SetAllowed(c, allowed) => {
                let _ = self.propose(Command::UpdateClient {
                    client_id: cid(CLIENTS[*c].0),
                    patch: ClientPatch {
                        allowed_scopes: Some(
                            allowed.iter().map(|&a| scope(ALLOW_UPDATE[a])).collect(),
                        ),
                        ..Default::default()
                    },
                    expected_revision: None,
                });
            }
            Op::SetEnabled(c, enabled) => {
                let _ = self.propose(Command::UpdateClient {
                    client_id: cid(CLIENTS[*c].0),
                    patch: ClientPatch {
                        enabled: Some(*enabled),
                        ..Default::default()
                    },
                    expected_revision: None,
                });
            }
            Op::Delegate(g) => self.delegate(g),
            Op::Revoke(i) => {
                if !self.ids.is_empty() {
                    let id = self.ids[i.index(self.ids.len())].clone();
                    self.revoke(&id);
                }
            }
            Op::DeleteClient(c) => self.delete_client(&cid(CLIENTS[*c].0)),
            Op::DeleteEntry(a) => {
                let entry_id = EntryId::parse(&format!("{}-entry", CLIENTS[FIRST_AGENT + a].0))
                    .expect("valid");
                let _ = self.propose(Command::DeleteEntry {
                    entry_id,
                    expected_revision: None,
                });
            }
            Op::SetSpiffeId(c, i) => {
                let ids: Vec<SpiffeId> = self
                    .subjects
                    .iter()
                    .filter_map(|s| match s {
                        Subject::Spiffe(id) => Some(id.clone()),
                        _ => None,
                    })
                    .collect();
                let _ = self.propose(Command::ChangeClientCredentials {
                    client_id: cid(CLIENTS[*c].0),
                    change: CredentialChange::SetSpiffeId(
                        i.map(|i| ids[i.index(ids.len())].clone()),
                    ),
                    expected_revision: None,
                });
            }
            Op::RevokeClient(c) => {
                let _ = self.propose(Command::Revoke(RevocationTarget::Client(
                    cid(CLIENTS[*c].0),
                )));
            }
            Op::Advance(ms) => self.now += ms,
            Op::Check(i) => {
                if self.check_effective {
                    // A window of five probes: the full set runs once at the end.
                    let start = i.index(PROBES.len());
                    let probes: Vec<&str> =
                        (0..5).map(|k| PROBES[(start + k) % PROBES.len()]).collect();
                    self.check_all_effective(&probes);
                }
            }
        }
        check_structure(&self.state);
    }

    fn delegate(&mut self, g: &Grant) {
        let spec = self.resolve(g);
        let before = self.state.clone();
        let want = ref_grant(&before, &spec, self.now);
        let admin = spec.permissions.iter().any(touches_admin);
        let got = self.propose(Command::CreateDelegation(spec.clone()));
        match (&got, &want) {
            (Ok(_), Ok(())) => {
                // (a) accepted: every permission covered at that moment, as asked (never cut).
                let held = ref_delegator_sets(&before, &spec.delegator).expect("delegator holds");
                let own = ref_client_sets(&before, &spec.delegate).expect("delegate enabled");
                for s in &spec.permissions {
                    assert!(
                        all_cover(&held, s, covers),
                        "(a) {s} not held by the delegator"
                    );
                    assert!(
                        all_cover(&own[..1], s, covers),
                        "(a) {s} not in the delegate's roles"
                    );
                    assert!(
                        all_cover(&own[1..], s, covers),
                        "(a) {s} outside the allow-list"
                    );
                }
                let stored = &self.state.delegations[&spec.delegation_id];
                assert_eq!(stored.permissions, spec.permissions, "(a) a grant was cut");
                assert_eq!(stored.delegate, spec.delegate);
                assert_eq!(stored.delegator, spec.delegator);
                assert_eq!(stored.expires_at_ms, self.now + spec.ttl_ms);
                assert!(
                    !admin,
                    "(b) a delegation granting an admin permission was accepted"
                );
                self.ids.push(spec.delegation_id.clone());
                self.stats.grants_accepted += 1;
                if stored.depth >= 1 {
                    self.stats.redelegations_accepted += 1;
                }
                if stored.depth >= 2 {
                    self.stats.depth2_accepted += 1;
                }
                if spec.permissions.iter().any(Scope::is_wildcard) {
                    self.stats.pattern_grants_accepted += 1;
                }
            }
            (Err(_), Err(_)) => {
                self.stats.grants_rejected += 1;
                if admin {
                    self.stats.admin_grants_refused += 1;
                }
                assert_eq!(self.state, before, "a rejected proposal changed the state");
            }
            (Ok(_), Err(why)) => {
                panic!("(a) accepted a delegation the reference refuses ({why}): {spec:?}")
            }
            (Err(r), Ok(())) => {
                panic!("(a) refused a delegation the reference grants ({r}): {spec:?}")
            }
        }
        // (b) whatever else happened, a grant touching the admin namespace never stands.
        if admin {
            assert!(got.is_err(), "(b) admin permission granted: {spec:?}");
        }
    }

    fn revoke(&mut self, id: &DelegationId) {
        let before = self.state.clone();
        let subtree = ref_subtree(&before, id);
        self.propose(Command::Revoke(RevocationTarget::Delegation(id.clone())))
            .unwrap_or_else(|r| panic!("(d) revoking {id} was refused: {r}"));
        if subtree.len() > 1 {
            self.stats.revocations_with_descendants += 1;
        }
        for (did, d) in &self.state.delegations {
            let was = &before.delegations[did];
            if subtree.contains(did) {
                // (d) revoked now, at this index unless it already was.
                let at = was.revoked_at_index.unwrap_or(self.index);
                assert_eq!(
                    d.revoked_at_index,
                    Some(at),
                    "(d) {did} under {id} not revoked"
                );
                if self.check_effective {
                    for p in PROBES {
                        let req = BTreeSet::from([scope(p)]);
                        let r = effective(&self.state, &d.delegate, &req, Some(did), self.now);
                        assert!(r.is_err(), "(d) {p} allowed under revoked {did}");
                    }
                }
            } else {
                assert_eq!(
                    d, was,
                    "(d) revoking {id} changed {did}, outside its subtree"
                );
            }
        }
    }

    fn delete_client(&mut self, c: &ClientId) {
        let before = self.state.clone();
        if self
            .propose(Command::DeleteClient {
                client_id: c.clone(),
                expected_revision: None,
            })
            .is_err()
        {
            assert!(!before.clients.contains_key(c), "deleting {c} was refused");
            return;
        }
        self.stats.clients_deleted += 1;
        // (d) every delegation it gave or held goes, with everything below it.
        let mut gone = BTreeSet::new();
        for d in before.delegations.values() {
            if d.delegate == *c || d.delegator == Delegator::Client(c.clone()) {
                gone.extend(ref_subtree(&before, &d.delegation_id));
            }
        }
        for id in &gone {
            assert!(
                self.state.delegations[id].revoked_at_index.is_some(),
                "(d) {id} survived the removal of {c}"
            );
        }
    }

    /// (a), (b), (c): `effective` against the reference for every client and delegation.
    fn check_all_effective(&mut self, probes: &[&str]) {
        let st = &self.state;
        let t = self.now;
        let mut requests: Vec<BTreeSet<Scope>> =
            probes.iter().map(|p| BTreeSet::from([scope(p)])).collect();
        requests.push(BTreeSet::from([
            scope("orders:read"),
            scope("billing.eu:read"),
        ]));
        requests.push(BTreeSet::from([
            scope("orders:read"),
            scope("authsec.admin:read"),
        ]));
        for (c, _) in CLIENTS {
            let c = cid(c);
            for req in &requests {
                let ok = compare(st, &c, req, None, t);
                self.stats.effective_allowed_direct += u64::from(ok);
            }
        }
        for (i, (id, d)) in st.delegations.iter().enumerate() {
            let other = cid(CLIENTS[i % CLIENTS.len()].0);
            for req in &requests {
                if compare(st, &d.delegate, req, Some(id), t) {
                    self.stats.effective_allowed_via += 1;
                } else {
                    self.stats.effective_denied_via += 1;
                }
                compare(st, &other, req, Some(id), t);
            }
            // (c) at the first expiry on the chain and later: refused; just before: as the
            // reference says.
            let (exp, revoked) = chain_limits(st, id);
            for req in &requests {
                for at in [exp, exp.saturating_add(1), exp.max(t)] {
                    let r = effective(st, &d.delegate, req, Some(id), at);
                    assert!(
                        r.is_err(),
                        "(c) {req:?} allowed under {id} at {at} >= expiry {exp}"
                    );
                }
                if exp > t {
                    compare(st, &d.delegate, req, Some(id), exp - 1);
                }
                if revoked {
                    let r = effective(st, &d.delegate, req, Some(id), t);
                    assert!(
                        r.is_err(),
                        "(c) {req:?} allowed under {id} below a revoked link"
                    );
                }
            }
            self.stats.expired_chains_checked += 1;
            self.stats.revoked_chains_checked += u64::from(revoked);
        }
    }
}

/// `effective` against the reference; returns whether it allowed the request.
fn compare(
    st: &State,
    c: &ClientId,
    req: &BTreeSet<Scope>,
    via: Option<&DelegationId>,
    t: u64,
) -> bool {
    let got = effective(st, c, req, via, t);
    let want = ref_effective(st, c, req, via, t);
    match (&got, &want) {
        (Ok(out), Ok(())) => {
            assert_eq!(out, req, "(a) effective returned other than what was asked");
            for s in out {
                assert!(!touches_admin(s), "(b) {s} conferred to {c} via {via:?}");
            }
            true
        }
        (Err(_), Err(_)) => false,
        (Ok(_), Err(why)) => panic!("(a) effective allowed {req:?} to {c} via {via:?} at {t}; reference: {why}"),
        (Err(e), Ok(())) => panic!("(a) effective refused {req:?} to {c} via {via:?} at {t} ({e}); the reference allows it"),
    }
}

/// (c), (d): the stored delegations narrow along every chain, and revocations reach children.
fn check_structure(st: &State) {
    for (id, d) in &st.delegations {
        match &d.parent {
            None => assert_eq!(d.depth, 0, "(c) {id} is a root with depth {}", d.depth),
            Some(pid) => {
                let p = st
                    .delegations
                    .get(pid)
                    .unwrap_or_else(|| panic!("(c) {pid} missing"));
                assert_eq!(d.depth, p.depth + 1, "(c) depth of {id}");
                assert!(d.max_depth < p.max_depth, "(c) max_depth of {id}");
                assert!(
                    d.expires_at_ms <= p.expires_at_ms,
                    "(c) {id} outlives {pid}"
                );
                assert!(
                    d.max_token_ttl_s <= p.max_token_ttl_s,
                    "(c) token ttl of {id}"
                );
                assert_eq!(
                    d.delegator,
                    Delegator::Client(p.delegate.clone()),
                    "(c) {id}"
                );
                if p.revoked_at_index.is_some() {
                    assert!(
                        d.revoked_at_index.is_some(),
                        "(d) {pid} revoked, child {id} not"
                    );
                }
            }
        }
        assert!(d.depth <= limits::DELEGATION_DEPTH_MAX, "(c) depth of {id}");
        assert!(
            !d.permissions.iter().any(touches_admin),
            "(b) admin in {id}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (e): replay and stored rows.

fn owned_keys(st: &State) -> BTreeSet<ProjectionKey> {
    // The identity row exists once something set it; a default one need not be stored.
    let mut k = BTreeSet::new();
    if st.identity != IdentityMeta::default() {
        k.insert(ProjectionKey::Identity);
    }
    k.extend(
        st.client_auth
            .keys()
            .cloned()
            .map(ProjectionKey::ClientAuth),
    );
    k.extend(st.entries.keys().cloned().map(ProjectionKey::Entry));
    k.extend(st.roles.keys().cloned().map(ProjectionKey::Role));
    for (s, roles) in &st.bindings {
        k.extend(
            roles
                .iter()
                .map(|r| ProjectionKey::Binding(s.clone(), r.clone())),
        );
    }
    k.extend(
        st.delegations
            .keys()
            .cloned()
            .map(ProjectionKey::Delegation),
    );
    k.extend(st.agents.keys().cloned().map(ProjectionKey::Agent));
    k.extend(
        st.revoked_tokens
            .keys()
            .cloned()
            .map(ProjectionKey::RevokedToken),
    );
    k.extend(
        st.revoked_subjects
            .keys()
            .cloned()
            .map(ProjectionKey::RevokedSubject),
    );
    k
}

/// The stored rows of every live key, in family/key order.
fn rows(st: &State) -> Vec<Row> {
    let mut out: Vec<Row> = owned_keys(st).iter().filter_map(|k| st.row(k)).collect();
    for r in &out {
        assert!(r.value.is_some(), "a live key has no row: {:?}", r.key);
    }
    out.sort_by(|a, b| (a.family, &a.key).cmp(&(b.family, &b.key)));
    out
}

fn digest(rows: &[Row]) -> [u8; 32] {
    let mut h = Sha256::new();
    for r in rows {
        let value = r.value.as_deref().unwrap_or_default();
        for part in [r.family.as_bytes(), &r.key, value] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    h.finalize().into()
}

fn check_replay(w: &World) {
    // Events, in order, into a fresh state.
    let mut replayed = State::default();
    for (events, t) in &w.log {
        replayed.meta.clock_ms = replayed.meta.clock_ms.max(*t);
        for e in events {
            evolve(&mut replayed, e, *t);
        }
    }
    assert_eq!(
        replayed, w.state,
        "(e) replaying the events gives another state"
    );

    // What a node holds on disk, written row by row as proposals were applied, is exactly the
    // rows of the state now (no stale row, no two entities under one key)...
    let original = rows(&w.state);
    let disk: Vec<Row> = w
        .disk
        .iter()
        .map(|((family, key), value)| Row {
            family,
            key: key.clone(),
            value: Some(value.clone()),
        })
        .collect();
    if disk != original {
        let show = |rows: &[Row], other: &[Row]| -> Vec<String> {
            rows.iter()
                .filter(|r| !other.contains(r))
                .map(|r| format!("{}/{}", r.family, String::from_utf8_lossy(&r.key)))
                .collect()
        };
        panic!(
            "(e) the rows on disk are not the rows of the state: only on disk {:?}, only in the state {:?}",
            show(&disk, &original),
            show(&original, &disk)
        );
    }

    // ... and loading them (the storage crate's own projections copied over) restores it.
    let mut loaded = State {
        meta: w.state.meta.clone(),
        security: w.state.security.clone(),
        nodes: w.state.nodes.clone(),
        clients: w.state.clients.clone(),
        ..State::default()
    };
    for ((family, key), value) in &w.disk {
        loaded
            .load_row(family, key, value)
            .unwrap_or_else(|e| panic!("(e) row {key:?} does not load: {e}"));
    }
    loaded.rebuild_indexes();
    assert_eq!(
        loaded, w.state,
        "(e) reloading the rows gives another state"
    );

    let d = digest(&disk);
    assert_eq!(
        d,
        digest(&original),
        "(e) digest of the state differs from the disk's"
    );
    assert_eq!(
        d,
        digest(&rows(&replayed)),
        "(e) digest of the replayed state differs"
    );
    assert_eq!(
        d,
        digest(&rows(&loaded)),
        "(e) digest of the reloaded state differs"
    );
}

/// `cases` cases (`PROPTEST_CASES` overrides, for long runs); no regression files (a failure
/// prints its minimal case).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn run_case(setup: &Setup, ops: &[Op], check_effective: bool) -> World {
    let mut w = World::new(setup, check_effective);
    for op in ops {
        w.run(op);
    }
    if check_effective {
        w.check_all_effective(PROBES);
    }
    w
}

proptest! {
    #![proptest_config(config(512))]

    /// (a), (b), (c), (d) at every step of random cases.
    #[test]
    fn delegation_rules_match_the_reference((setup, ops) in case_strategy()) {
        run_case(&setup, &ops, true);
    }

    /// (e) replay and reload.
    #[test]
    fn replay_and_reload_give_the_same_state((setup, ops) in case_strategy()) {
        let w = run_case(&setup, &ops, false);
        check_replay(&w);
    }
}

/// The generator reaches the interesting places: without these the properties above could
/// pass vacuously.
#[test]
fn cases_are_not_vacuous() {
    let total = RefCell::new(Stats::default());
    let mut runner =
        TestRunner::new_with_rng(config(64), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    runner
        .run(&case_strategy(), |(setup, ops)| {
            let w = run_case(&setup, &ops, true);
            let mut t = total.borrow_mut();
            let s = w.stats;
            t.grants_accepted += s.grants_accepted;
            t.grants_rejected += s.grants_rejected;
            t.redelegations_accepted += s.redelegations_accepted;
            t.depth2_accepted += s.depth2_accepted;
            t.pattern_grants_accepted += s.pattern_grants_accepted;
            t.admin_grants_refused += s.admin_grants_refused;
            t.revocations_with_descendants += s.revocations_with_descendants;
            t.effective_allowed_via += s.effective_allowed_via;
            t.effective_denied_via += s.effective_denied_via;
            t.effective_allowed_direct += s.effective_allowed_direct;
            t.expired_chains_checked += s.expired_chains_checked;
            t.revoked_chains_checked += s.revoked_chains_checked;
            t.clients_deleted += s.clients_deleted;
            Ok(())
        })
        .expect("the properties hold");
    let t = *total.borrow();
    eprintln!("{t:#?}");
    for (what, n) in [
        ("accepted delegations", t.grants_accepted),
        ("rejected delegations", t.grants_rejected),
        ("accepted re-delegations", t.redelegations_accepted),
        ("accepted depth-2 re-delegations", t.depth2_accepted),
        ("accepted pattern grants", t.pattern_grants_accepted),
        ("refused admin grants", t.admin_grants_refused),
        (
            "revocations reaching descendants",
            t.revocations_with_descendants,
        ),
        (
            "issuance allowed under a delegation",
            t.effective_allowed_via,
        ),
        ("issuance denied under a delegation", t.effective_denied_via),
        (
            "issuance allowed without delegation",
            t.effective_allowed_direct,
        ),
        ("chains checked past expiry", t.expired_chains_checked),
        ("chains with a revoked link", t.revoked_chains_checked),
        ("client removals", t.clients_deleted),
    ] {
        assert!(n > 0, "64 cases never produced {what}: {t:?}");
    }
}

/// A person's key is `person:<issuer>#<subject>`; were '#' allowed in the issuer, two persons
/// (`https://idp` + `a#b`, `https://idp#a` + `b`) would share one key and one stored binding,
/// and unbinding one would delete the other's row. Such an issuer is refused, and the two
/// bindings that remain possible replay and reload exactly.
#[test]
fn person_keys_do_not_collide_on_disk() {
    let setup = Setup {
        roles: vec![BTreeSet::from([0]); ROLES],
        allowed: vec![BTreeSet::from([0]); CLIENTS.len()],
        bindings: Vec::new(),
    };
    let mut w = World::new(&setup, false);
    let p1 = Subject::Person {
        issuer: "https://idp".into(),
        subject: "a#b".into(),
    };
    let p2 = Subject::Person {
        issuer: "https://idp#a".into(),
        subject: "b".into(),
    };
    let refused = w.propose(Command::Bind {
        role: role(0),
        subject: p2,
    });
    assert!(
        matches!(&refused, Err(Rejection::InvalidField { field, .. }) if field == "subject"),
        "{refused:?}"
    );
    let p3 = Subject::Person {
        issuer: "https://idp".into(),
        subject: "a".into(),
    };
    for (bind, subject) in [(true, &p3), (true, &p1), (false, &p1)] {
        let (role, subject) = (role(0), subject.clone());
        w.must(if bind {
            Command::Bind { role, subject }
        } else {
            Command::Unbind { role, subject }
        });
    }
    assert!(w.state.bindings.contains_key(&p3), "p3 keeps its binding");
    check_replay(&w);
}

// ---------------------------------------------------------------------------------------------
// The matchers against brute force.

const R_ALPHA: &[&str] = &["a", "b", "c", "*"];
const A_ALPHA: &[&str] = &["x", "y", "*"];
/// Concrete segments: the pattern letters and one fresh letter, which stands for any other.
const R_CONC: &[&str] = &["a", "b", "c", "z"];
const A_CONC: &[&str] = &["x", "y", "z"];

fn part_strategy(alpha: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(alpha), 1..=max).prop_map(|v| v.join("."))
}

fn pattern_strategy() -> impl Strategy<Value = Scope> {
    (part_strategy(R_ALPHA, 3), part_strategy(A_ALPHA, 3))
        .prop_map(|(r, a)| scope(&format!("{r}:{a}")))
}

fn concrete_strategy() -> impl Strategy<Value = Scope> {
    (part_strategy(R_CONC, 4), part_strategy(A_CONC, 4))
        .prop_map(|(r, a)| scope(&format!("{r}:{a}")))
}

/// Every `.`-joined word of 1 to `max` letters of `alpha`.
fn words(alpha: &[&str], max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut last: Vec<String> = vec![String::new()];
    for _ in 0..max {
        last = last
            .iter()
            .flat_map(|w| {
                alpha.iter().map(move |a| {
                    if w.is_empty() {
                        (*a).to_owned()
                    } else {
                        format!("{w}.{a}")
                    }
                })
            })
            .collect();
        out.extend(last.iter().cloned());
    }
    out
}

/// All concrete scopes of up to three segments per part over the concrete alphabet: for
/// patterns of up to three segments over the pattern alphabet, L(p) ⊆ L(q) holds exactly when
/// it holds on these.
fn universe() -> Vec<String> {
    let (rs, acts) = (words(R_CONC, 3), words(A_CONC, 3));
    rs.iter()
        .flat_map(|r| acts.iter().map(move |a| format!("{r}:{a}")))
        .collect()
}

fn language(p: &Scope, universe: &[String]) -> Vec<bool> {
    universe
        .iter()
        .map(|s| ref_matches(p.as_str(), s))
        .collect()
}

fn subset(a: &[bool], b: &[bool]) -> bool {
    a.iter().zip(b).all(|(x, y)| !x || *y)
}

/// Exhaustive per part: every pair of resource patterns (action fixed), every pair of action
/// patterns (resource fixed).
#[test]
fn covers_agrees_with_enumeration_on_every_part_pair() {
    for (alpha, conc, wrap) in [
        (
            R_ALPHA,
            R_CONC,
            (|p: &str| format!("{p}:x")) as fn(&str) -> String,
        ),
        (
            A_ALPHA,
            A_CONC,
            (|p: &str| format!("a:{p}")) as fn(&str) -> String,
        ),
    ] {
        let patterns: Vec<Scope> = words(alpha, 3).iter().map(|p| scope(&wrap(p))).collect();
        let concretes: Vec<String> = words(conc, 3).iter().map(|c| wrap(c)).collect();
        let langs: Vec<Vec<bool>> = patterns.iter().map(|p| language(p, &concretes)).collect();
        for (p, lp) in patterns.iter().zip(&langs) {
            for (q, lq) in patterns.iter().zip(&langs) {
                assert_eq!(covers(q, p), subset(lp, lq), "covers({q}, {p})");
            }
            for (c, m) in concretes.iter().zip(lp) {
                assert_eq!(covers(p, &scope(c)), *m, "covers({p}, {c})");
            }
        }
    }
}

#[test]
fn touches_admin_agrees_with_enumeration() {
    let alpha = ["authsec", "admin", "x", "*"];
    for r in words(&alpha, 3) {
        for a in ["read", "*"] {
            let p = scope(&format!("{r}:{a}"));
            assert_eq!(touches_admin(&p), ref_could_be_admin(p.as_str()), "{p}");
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// The compiled set, the pair-wise `covers` and `decide::scope_covers` agree with each other
    /// and with the reference matcher on concrete scopes.
    #[test]
    fn permission_set_agrees_with_covers(
        perms in proptest::collection::vec(pattern_strategy(), 0..12),
        probes in proptest::collection::vec(concrete_strategy(), 1..16),
    ) {
        let set = PermissionSet::new(&perms);
        for s in &probes {
            let want = perms.iter().any(|p| covers(p, s));
            prop_assert_eq!(set.allows(s.as_str()), want, "allows({})", s);
            prop_assert_eq!(set.covers(s), want, "PermissionSet::covers({})", s);
            prop_assert_eq!(perms.iter().any(|p| ref_matches(p.as_str(), s.as_str())), want, "reference({})", s);
            prop_assert_eq!(perms.iter().any(|p| scope_covers(p, s)), want, "scope_covers({})", s);
        }
    }

    /// `covers` on patterns is language inclusion, checked by enumeration; the compiled set's
    /// pattern check agrees with it.
    #[test]
    fn covers_is_language_inclusion(
        p in pattern_strategy(),
        qs in proptest::collection::vec(pattern_strategy(), 1..6),
    ) {
        thread_local!(static UNIVERSE: Vec<String> = universe());
        UNIVERSE.with(|u| -> Result<(), TestCaseError> {
            let lp = language(&p, u);
            let mut any = false;
            for q in &qs {
                let inc = subset(&lp, &language(q, u));
                prop_assert_eq!(covers(q, &p), inc, "covers({}, {})", q, p);
                any |= inc;
            }
            prop_assert_eq!(PermissionSet::new(&qs).covers(&p), any, "PermissionSet::covers({})", p);
            Ok(())
        })?;
    }
}
