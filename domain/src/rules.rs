//! The rules of the identity model: clients with credentials, workload entries, roles and
//! bindings, delegations, revocations and agents. Called by [`crate::decide`].

use std::collections::BTreeSet;

use crate::command::{
    Command, CreateClient, CredentialChange, DelegationSpec, EntryPatch, EntrySpec,
    RevocationTarget,
};
use crate::decide::{ct_eq, defaults_allowed, scopes, text, token_id_valid, Rejection};
use crate::event::Event;
use crate::identity::{
    Agent, AgentToken, ClientAuth, ClientSecret, Delegation, Delegator, Entry, PublicKey,
    RevokedSubject, RevokedToken, Role, Subject,
};
use crate::ids::{ClientId, DelegationId, EntryId, Scope, SpiffeId};
use crate::limits;
use crate::permissions;
use crate::state::{Client, ClientKind, State};

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn not_found(kind: &str, id: impl ToString) -> Rejection {
    Rejection::NotFound {
        kind: kind.into(),
        id: id.to_string(),
    }
}

fn exists(kind: &str, id: impl ToString) -> Rejection {
    Rejection::AlreadyExists {
        kind: kind.into(),
        id: id.to_string(),
    }
}

fn limit(what: &str, n: usize) -> Rejection {
    Rejection::LimitReached {
        what: what.into(),
        limit: n as u64,
    }
}

/// `expected_revision`, when given, must be the current one.
fn revision(
    kind: &str,
    id: impl ToString,
    expected: Option<u64>,
    actual: u64,
) -> Result<(), Rejection> {
    match expected {
        Some(e) if e != actual => Err(Rejection::StaleRevision {
            kind: kind.into(),
            id: id.to_string(),
            expected: e,
            actual,
        }),
        _ => Ok(()),
    }
}

/// Admin permissions are never held by a client for its tokens: an allow-list does not name
/// one (`authsec.admin:...` or `authsec.admin.<x>:...`). Wildcards such as `*:*` stay allowed:
/// an allow-list is a cap, and `effective` refuses admin scopes whatever the cap says.
pub(crate) fn no_admin_scopes(field: &str, set: &BTreeSet<Scope>) -> Result<(), Rejection> {
    let admin = |s: &&Scope| {
        let resource = s.as_str().split(':').next().unwrap_or("");
        let mut segs = resource.split('.');
        segs.next() == Some("authsec") && segs.next() == Some("admin")
    };
    match set.iter().find(admin) {
        Some(s) => Err(invalid(
            field,
            format!("{s} is an admin permission; admin permissions never appear in tokens"),
        )),
        None => Ok(()),
    }
}

fn person(field: &str, issuer: &str, subject: &str) -> Result<(), Rejection> {
    // A person's key is `person:<issuer>#<subject>`: an issuer with a '#' would make two
    // persons share one key (and one stored binding). OpenID issuers carry no fragment.
    if issuer.contains('#') {
        return Err(invalid(
            field,
            "the person's issuer must not contain '#' (an issuer URL has no fragment)",
        ));
    }
    for (what, v) in [("issuer", issuer), ("subject", subject)] {
        if v.is_empty() || v.len() > limits::PERSON_BYTES_MAX || v.chars().any(char::is_control) {
            return Err(invalid(
                field,
                format!(
                    "the person's {what} must be 1 to {} bytes without control characters",
                    limits::PERSON_BYTES_MAX
                ),
            ));
        }
    }
    Ok(())
}

fn public_keys(keys: &[PublicKey]) -> Result<(), Rejection> {
    if keys.len() > limits::PUBLIC_KEYS_PER_CLIENT_MAX {
        return Err(invalid(
            "public_keys",
            format!("at most {} keys", limits::PUBLIC_KEYS_PER_CLIENT_MAX),
        ));
    }
    let mut kids = BTreeSet::new();
    for k in keys {
        if k.kid.is_empty()
            || k.kid.len() > limits::KEY_ID_BYTES_MAX
            || k.kid.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(
                "public_keys",
                format!(
                    "a kid must be 1 to {} bytes without spaces",
                    limits::KEY_ID_BYTES_MAX
                ),
            ));
        }
        if k.key.is_empty() || k.key.len() > limits::PUBLIC_KEY_BYTES_MAX {
            return Err(invalid(
                "public_keys",
                format!(
                    "key {} must be 1 to {} bytes",
                    k.kid,
                    limits::PUBLIC_KEY_BYTES_MAX
                ),
            ));
        }
        if !kids.insert(&k.kid) {
            return Err(invalid(
                "public_keys",
                format!("kid {} appears twice", k.kid),
            ));
        }
    }
    Ok(())
}

fn trust_domain(state: &State) -> Result<&crate::TrustDomain, Rejection> {
    state
        .meta
        .trust_domain
        .as_ref()
        .ok_or(Rejection::TrustDomainNotConfigured)
}

fn in_trust_domain(state: &State, field: &str, id: &SpiffeId) -> Result<(), Rejection> {
    let td = trust_domain(state)?;
    if id.trust_domain() != *td {
        return Err(invalid(
            field,
            format!("{id} is outside the trust domain {td}"),
        ));
    }
    Ok(())
}

/// Check an entry as it would be stored; `current` is its own id when it is an update.
fn entry_valid(state: &State, e: &Entry, current: Option<&EntryId>) -> Result<(), Rejection> {
    in_trust_domain(state, "spiffe_id", &e.spiffe_id)?;
    // `spiffe://<td>/authsec/...` names the cluster's own nodes and admins: an SVID for such an
    // ID would be a node's or an admin's credential.
    if crate::identity::is_reserved(&e.spiffe_id) {
        return Err(invalid(
            "spiffe_id",
            format!(
                "{} is reserved: paths under /{} name authsec's own nodes and admins",
                e.spiffe_id,
                crate::identity::RESERVED_PATH
            ),
        ));
    }
    if let Some(p) = &e.parent_id {
        in_trust_domain(state, "parent_id", p)?;
        if *p == e.spiffe_id {
            return Err(invalid("parent_id", "an entry cannot be its own parent"));
        }
    }
    if e.selectors.len() > limits::SELECTORS_PER_ENTRY_MAX {
        return Err(invalid(
            "selectors",
            format!("at most {} selectors", limits::SELECTORS_PER_ENTRY_MAX),
        ));
    }
    if !(limits::X509_TTL_S_MIN..=limits::X509_TTL_S_MAX).contains(&e.x509_ttl_s) {
        return Err(invalid(
            "x509_ttl",
            format!(
                "must be {} s to {} s",
                limits::X509_TTL_S_MIN,
                limits::X509_TTL_S_MAX
            ),
        ));
    }
    if !(limits::JWT_TTL_S_MIN..=limits::JWT_TTL_S_MAX).contains(&e.jwt_ttl_s) {
        return Err(invalid(
            "jwt_ttl",
            format!(
                "must be {} s to {} s",
                limits::JWT_TTL_S_MIN,
                limits::JWT_TTL_S_MAX
            ),
        ));
    }
    if e.dns_names.len() > limits::DNS_NAMES_PER_ENTRY_MAX {
        return Err(invalid(
            "dns_names",
            format!("at most {} names", limits::DNS_NAMES_PER_ENTRY_MAX),
        ));
    }
    for d in &e.dns_names {
        crate::ids::dns_name(d).map_err(|e| invalid("dns_names", e.reason))?;
    }
    if e.federates_with.len() > limits::FEDERATES_WITH_MAX {
        return Err(invalid(
            "federates_with",
            format!("at most {} trust domains", limits::FEDERATES_WITH_MAX),
        ));
    }
    if e.federates_with.contains(trust_domain(state)?) {
        return Err(invalid(
            "federates_with",
            "an entry does not federate with its own trust domain",
        ));
    }
    if let Some(c) = &e.client_id {
        if !state.clients.contains_key(c) {
            return Err(not_found("client", c));
        }
    }
    // SPIRE's rule: one entry per (SPIFFE ID, parent, selectors).
    if let Some(ids) = state.idx.entries_by_spiffe.get(&e.spiffe_id) {
        for id in ids {
            if Some(id) == current {
                continue;
            }
            if let Some(other) = state.entries.get(id) {
                if other.parent_id == e.parent_id && other.selectors == e.selectors {
                    return Err(Rejection::AlreadyExists {
                        kind: "entry with this SPIFFE ID, parent and selectors".into(),
                        id: id.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn create_client(state: &State, c: &CreateClient, time_ms: u64) -> Result<Vec<Event>, Rejection> {
    if state.clients.contains_key(&c.client_id) {
        return Err(Rejection::ClientAlreadyExists {
            client_id: c.client_id.to_string(),
        });
    }
    if state.clients.len() >= limits::CLIENTS_MAX {
        return Err(limit("clients", limits::CLIENTS_MAX));
    }
    text("display_name", &c.display_name)?;
    text("description", &c.description)?;
    text("owner", &c.owner)?;
    text("default_audience", &c.default_audience)?;
    scopes("allowed_scopes", &c.allowed_scopes)?;
    scopes("default_scopes", &c.default_scopes)?;
    no_admin_scopes("allowed_scopes", &c.allowed_scopes)?;
    defaults_allowed(&c.allowed_scopes, &c.default_scopes)?;
    public_keys(&c.public_keys)?;
    let client = Client {
        client_id: c.client_id.clone(),
        kind: c.kind,
        display_name: c.display_name.clone(),
        description: c.description.clone(),
        owner: c.owner.clone(),
        allowed_scopes: c.allowed_scopes.clone(),
        default_scopes: c.default_scopes.clone(),
        default_audience: c.default_audience.clone(),
        enabled: true,
        revision: 1,
        created_at_ms: time_ms,
        updated_at_ms: time_ms,
    };
    let auth = ClientAuth {
        secret: c.secret_hash.map(|h| ClientSecret {
            current: h,
            created_at_ms: time_ms,
            previous: None,
        }),
        public_keys: c.public_keys.clone(),
        spiffe_id: c.spiffe_id.clone(),
    };
    let mut events = vec![Event::ClientCreated { client, auth }];
    match (&c.agent_entry, c.kind) {
        (Some((entry_id, template)), ClientKind::AiAgent) => {
            let td = trust_domain(state)?;
            let spiffe_id = crate::identity::expand_template(template, td, &c.client_id)
                .map_err(|e| invalid(e.field, e.reason))?;
            if state.entries.contains_key(entry_id) {
                return Err(exists("entry", entry_id));
            }
            if state.entries.len() >= limits::ENTRIES_MAX {
                return Err(limit("entries", limits::ENTRIES_MAX));
            }
            let entry = Entry {
                entry_id: entry_id.clone(),
                spiffe_id,
                parent_id: None,
                selectors: BTreeSet::new(),
                x509_ttl_s: limits::X509_TTL_S_DEFAULT,
                jwt_ttl_s: limits::JWT_TTL_S_DEFAULT,
                dns_names: BTreeSet::new(),
                client_id: None, // checked below against the client this command creates
                federates_with: BTreeSet::new(),
                revision: 1,
                created_at_ms: time_ms,
                updated_at_ms: time_ms,
            };
            entry_valid(state, &entry, None)?;
            events.push(Event::EntryCreated {
                entry: Entry {
                    client_id: Some(c.client_id.clone()),
                    ..entry
                },
            });
        }
        (None, ClientKind::AiAgent) => {
            return Err(invalid(
                "agent_entry",
                "an ai_agent client is created with its workload entry",
            ))
        }
        (Some(_), _) => {
            return Err(invalid(
                "agent_entry",
                "only ai_agent clients get a workload entry at creation",
            ))
        }
        (None, _) => {}
    }
    Ok(events)
}

/// Revoke `root` and every delegation derived from it that is still live, root first.
fn revoke_delegation_tree(
    state: &State,
    root: &DelegationId,
    log_index: u64,
    out: &mut Vec<Event>,
    seen: &mut BTreeSet<DelegationId>,
) {
    let mut stack = vec![root.clone()];
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(d) = state.delegations.get(&id) {
            if d.revoked_at_index.is_none() {
                out.push(Event::DelegationRevoked {
                    delegation_id: id.clone(),
                    cause: root.clone(),
                    at_index: log_index,
                });
            }
        }
        if let Some(children) = state.idx.delegation_children.get(&id) {
            // Reverse so that the pop order follows id order: deterministic either way.
            stack.extend(children.iter().rev().cloned());
        }
    }
}

fn unbind_all(state: &State, subject: &Subject, out: &mut Vec<Event>) {
    if let Some(roles) = state.bindings.get(subject) {
        for r in roles {
            out.push(Event::RoleUnbound {
                role: r.clone(),
                subject: subject.clone(),
            });
        }
    }
}

/// Bindings to the SPIFFE IDs of `deleted` entries that no remaining entry carries: they go
/// with the last entry that named the ID, so a new client of the same name does not inherit
/// them.
fn unbind_orphaned_spiffe_ids(state: &State, deleted: &BTreeSet<EntryId>, out: &mut Vec<Event>) {
    let mut ids = BTreeSet::new();
    for e in deleted {
        if let Some(entry) = state.entries.get(e) {
            ids.insert(entry.spiffe_id.clone());
        }
    }
    for id in ids {
        let others = state
            .idx
            .entries_by_spiffe
            .get(&id)
            .is_some_and(|set| set.iter().any(|e| !deleted.contains(e)));
        if !others {
            unbind_all(state, &Subject::Spiffe(id), out);
        }
    }
}

/// Revoke every delegation tree `who` granted.
fn revoke_granted_by(
    state: &State,
    who: &Delegator,
    log_index: u64,
    out: &mut Vec<Event>,
    seen: &mut BTreeSet<DelegationId>,
) {
    let roots: Vec<DelegationId> = match who {
        Delegator::Client(c) => state
            .idx
            .delegations_by_client
            .get(c)
            .into_iter()
            .flatten()
            .filter(|d| {
                state
                    .delegations
                    .get(*d)
                    .is_some_and(|d| d.delegator == *who)
            })
            .cloned()
            .collect(),
        // Rare (a person's revocation): a scan of the delegations.
        Delegator::Person { .. } => state
            .delegations
            .values()
            .filter(|d| d.delegator == *who)
            .map(|d| d.delegation_id.clone())
            .collect(),
    };
    for d in roots {
        revoke_delegation_tree(state, &d, log_index, out, seen);
    }
}

/// Removing a client takes its bindings, its workload entries and the delegations it gave or
/// holds with it, each as its own event.
pub(crate) fn remove_client(
    state: &State,
    client_id: &ClientId,
    log_index: u64,
) -> Result<Vec<Event>, Rejection> {
    if !state.clients.contains_key(client_id) {
        return Err(Rejection::ClientNotFound {
            client_id: client_id.to_string(),
        });
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    if let Some(ds) = state.idx.delegations_by_client.get(client_id) {
        for d in ds {
            revoke_delegation_tree(state, d, log_index, &mut out, &mut seen);
        }
    }
    if let Some(entries) = state.idx.entries_by_client.get(client_id) {
        unbind_orphaned_spiffe_ids(state, entries, &mut out);
        for e in entries {
            unbind_all(state, &Subject::Entry(e.clone()), &mut out);
            if let Some(entry) = state.entries.get(e) {
                out.push(Event::EntryDeleted {
                    entry_id: e.clone(),
                    spiffe_id: entry.spiffe_id.clone(),
                });
            }
        }
    }
    unbind_all(state, &Subject::Client(client_id.clone()), &mut out);
    out.push(Event::ClientRemoved {
        client_id: client_id.clone(),
    });
    Ok(out)
}

fn change_credentials(
    state: &State,
    client_id: &ClientId,
    change: &CredentialChange,
    expected: Option<u64>,
    time_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    let client = state
        .clients
        .get(client_id)
        .ok_or_else(|| Rejection::ClientNotFound {
            client_id: client_id.to_string(),
        })?;
    revision("client", client_id, expected, client.revision)?;
    let mut auth = state
        .client_auth
        .get(client_id)
        .cloned()
        .unwrap_or_default();
    match change {
        CredentialChange::RotateSecret {
            secret_hash,
            overlap_ms,
        } => {
            if *overlap_ms > limits::SECRET_OVERLAP_MS_MAX {
                return Err(invalid(
                    "overlap",
                    format!("at most {} s", limits::SECRET_OVERLAP_MS_MAX / 1000),
                ));
            }
            let previous = match (&auth.secret, *overlap_ms) {
                (Some(s), o) if o > 0 => Some((s.current, time_ms.saturating_add(o))),
                _ => None,
            };
            auth.secret = Some(ClientSecret {
                current: *secret_hash,
                created_at_ms: time_ms,
                previous,
            });
        }
        CredentialChange::SetPublicKeys(keys) => {
            public_keys(keys)?;
            auth.public_keys = keys.clone();
        }
        CredentialChange::SetSpiffeId(id) => auth.spiffe_id = id.clone(),
    }
    Ok(vec![Event::ClientCredentialsChanged {
        client_id: client_id.clone(),
        auth,
        revision: client.revision + 1,
    }])
}

fn create_entry(state: &State, s: &EntrySpec, time_ms: u64) -> Result<Vec<Event>, Rejection> {
    if state.entries.contains_key(&s.entry_id) {
        return Err(exists("entry", &s.entry_id));
    }
    if state.entries.len() >= limits::ENTRIES_MAX {
        return Err(limit("entries", limits::ENTRIES_MAX));
    }
    let entry = Entry {
        entry_id: s.entry_id.clone(),
        spiffe_id: s.spiffe_id.clone(),
        parent_id: s.parent_id.clone(),
        selectors: s.selectors.clone(),
        x509_ttl_s: s.x509_ttl_s,
        jwt_ttl_s: s.jwt_ttl_s,
        dns_names: s.dns_names.clone(),
        client_id: s.client_id.clone(),
        federates_with: s.federates_with.clone(),
        revision: 1,
        created_at_ms: time_ms,
        updated_at_ms: time_ms,
    };
    entry_valid(state, &entry, None)?;
    Ok(vec![Event::EntryCreated { entry }])
}

fn update_entry(
    state: &State,
    id: &EntryId,
    patch: &EntryPatch,
    expected: Option<u64>,
    time_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    let cur = state
        .entries
        .get(id)
        .ok_or_else(|| not_found("entry", id))?;
    revision("entry", id, expected, cur.revision)?;
    let mut e = cur.clone();
    if let Some(v) = &patch.parent_id {
        e.parent_id = v.clone();
    }
    if let Some(v) = &patch.selectors {
        e.selectors = v.clone();
    }
    if let Some(v) = patch.x509_ttl_s {
        e.x509_ttl_s = v;
    }
    if let Some(v) = patch.jwt_ttl_s {
        e.jwt_ttl_s = v;
    }
    if let Some(v) = &patch.dns_names {
        e.dns_names = v.clone();
    }
    if let Some(v) = &patch.federates_with {
        e.federates_with = v.clone();
    }
    if e == *cur {
        return Ok(vec![]);
    }
    e.revision = cur.revision + 1;
    e.updated_at_ms = time_ms;
    entry_valid(state, &e, Some(id))?;
    Ok(vec![Event::EntryUpdated { entry: e }])
}

fn role_permissions_valid(perms: &BTreeSet<Scope>) -> Result<(), Rejection> {
    if perms.len() > limits::PERMISSIONS_PER_ROLE_MAX {
        return Err(invalid(
            "permissions",
            format!("at most {} permissions", limits::PERMISSIONS_PER_ROLE_MAX),
        ));
    }
    Ok(())
}

fn subject_exists(state: &State, s: &Subject) -> Result<(), Rejection> {
    match s {
        Subject::Client(c) if !state.clients.contains_key(c) => Err(not_found("client", c)),
        Subject::Entry(e) if !state.entries.contains_key(e) => Err(not_found("entry", e)),
        Subject::Person { issuer, subject } => person("subject", issuer, subject),
        _ => Ok(()),
    }
}

fn create_delegation(
    state: &State,
    s: &DelegationSpec,
    time_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    if state.delegations.contains_key(&s.delegation_id) {
        return Err(exists("delegation", &s.delegation_id));
    }
    if state.delegations.len() >= limits::DELEGATIONS_MAX {
        return Err(limit("delegations", limits::DELEGATIONS_MAX));
    }
    let delegate = state
        .clients
        .get(&s.delegate)
        .ok_or_else(|| not_found("client", &s.delegate))?;
    if delegate.kind != ClientKind::AiAgent {
        return Err(invalid(
            "delegate",
            format!(
                "{} is a {} client; delegations go to ai_agent clients",
                s.delegate,
                delegate.kind.as_str()
            ),
        ));
    }
    if !delegate.enabled {
        return Err(invalid("delegate", format!("{} is disabled", s.delegate)));
    }
    match &s.delegator {
        Delegator::Client(c) => {
            if !state.clients.contains_key(c) {
                return Err(not_found("client", c));
            }
            if *c == s.delegate {
                return Err(invalid("delegator", "a client cannot delegate to itself"));
            }
        }
        Delegator::Person { issuer, subject } => person("delegator", issuer, subject)?,
    }
    if s.permissions.is_empty() {
        return Err(invalid("permissions", "name at least one permission"));
    }
    scopes("permissions", &s.permissions)?;
    if s.max_token_ttl_s == 0 || s.max_token_ttl_s > limits::DELEGATION_TOKEN_TTL_S_MAX {
        return Err(invalid(
            "max_token_ttl",
            format!("must be 1 s to {} s", limits::DELEGATION_TOKEN_TTL_S_MAX),
        ));
    }
    if s.ttl_ms == 0 || s.ttl_ms > limits::DELEGATION_LIFETIME_MS_MAX {
        return Err(invalid(
            "ttl",
            format!(
                "must be 1 ms to {} days",
                limits::DELEGATION_LIFETIME_MS_MAX / 86_400_000
            ),
        ));
    }
    if s.max_depth > limits::DELEGATION_DEPTH_MAX {
        return Err(invalid(
            "max_depth",
            format!("at most {}", limits::DELEGATION_DEPTH_MAX),
        ));
    }
    let expires_at_ms = time_ms.saturating_add(s.ttl_ms);
    let mut depth = 0;
    if let Some(pid) = &s.parent {
        let parent = state
            .delegations
            .get(pid)
            .ok_or_else(|| not_found("delegation", pid))?;
        if s.delegator != Delegator::Client(parent.delegate.clone()) {
            return Err(invalid(
                "delegator",
                format!(
                    "only {}, the delegate of {pid}, may re-delegate it",
                    parent.delegate
                ),
            ));
        }
        if parent.max_depth == 0 {
            return Err(invalid(
                "parent",
                format!("{pid} allows no re-delegation (max_depth 0)"),
            ));
        }
        if s.max_depth > parent.max_depth - 1 {
            return Err(invalid(
                "max_depth",
                format!(
                    "at most {} under {pid}, whose max_depth is {}",
                    parent.max_depth - 1,
                    parent.max_depth
                ),
            ));
        }
        if expires_at_ms > parent.expires_at_ms {
            return Err(invalid(
                "ttl",
                format!(
                    "would outlive {pid}, which expires at {} ms since the epoch",
                    parent.expires_at_ms
                ),
            ));
        }
        if s.max_token_ttl_s > parent.max_token_ttl_s {
            return Err(invalid(
                "max_token_ttl",
                format!("at most {} s under {pid}", parent.max_token_ttl_s),
            ));
        }
        depth = parent.depth + 1;
    }
    permissions::check_grant(
        state,
        &s.delegator,
        delegate,
        s.parent.as_ref(),
        &s.permissions,
        time_ms,
    )
    .map_err(Rejection::Denied)?;
    Ok(vec![Event::DelegationCreated {
        delegation: Delegation {
            delegation_id: s.delegation_id.clone(),
            delegator: s.delegator.clone(),
            delegate: s.delegate.clone(),
            permissions: s.permissions.clone(),
            max_token_ttl_s: s.max_token_ttl_s,
            max_depth: s.max_depth,
            depth,
            parent: s.parent.clone(),
            expires_at_ms,
            created_at_ms: time_ms,
            revoked_at_index: None,
        },
    }])
}

fn revoke(
    state: &State,
    t: &RevocationTarget,
    time_ms: u64,
    log_index: u64,
) -> Result<Vec<Event>, Rejection> {
    let subject_revoked = |subject: String| Event::SubjectRevoked {
        revoked: RevokedSubject {
            subject,
            below_index: log_index,
        },
    };
    match t {
        RevocationTarget::Token { jti, expires_at_ms } => {
            if jti.is_empty()
                || jti.len() > limits::JTI_BYTES_MAX
                || jti.chars().any(char::is_control)
            {
                return Err(invalid(
                    "jti",
                    format!("must be 1 to {} bytes", limits::JTI_BYTES_MAX),
                ));
            }
            if state.revoked_tokens.contains_key(jti) || *expires_at_ms <= time_ms {
                return Ok(vec![]); // already revoked, or expired: nothing to remember
            }
            if state.revoked_tokens.len() >= limits::REVOKED_TOKENS_MAX {
                return Err(limit("revoked tokens", limits::REVOKED_TOKENS_MAX));
            }
            Ok(vec![Event::TokenRevoked {
                revoked: RevokedToken {
                    jti: jti.clone(),
                    expires_at_ms: *expires_at_ms,
                    revoked_at_index: log_index,
                },
            }])
        }
        RevocationTarget::Subject(s) => {
            subject_exists(state, s)?;
            let mut out = vec![subject_revoked(s.key())];
            // What the subject granted goes with it: a revoked person or client no longer
            // stands behind its delegations.
            let granted = match s {
                Subject::Client(c) => Some(Delegator::Client(c.clone())),
                Subject::Person { issuer, subject } => Some(Delegator::Person {
                    issuer: issuer.clone(),
                    subject: subject.clone(),
                }),
                _ => None,
            };
            if let Some(who) = granted {
                revoke_granted_by(state, &who, log_index, &mut out, &mut BTreeSet::new());
            }
            Ok(out)
        }
        RevocationTarget::Delegation(id) => {
            if !state.delegations.contains_key(id) {
                return Err(not_found("delegation", id));
            }
            let mut out = Vec::new();
            revoke_delegation_tree(state, id, log_index, &mut out, &mut BTreeSet::new());
            Ok(out)
        }
        RevocationTarget::Client(id) => {
            let c = state
                .clients
                .get(id)
                .ok_or_else(|| Rejection::ClientNotFound {
                    client_id: id.to_string(),
                })?;
            let mut out = vec![subject_revoked(Subject::Client(id.clone()).key())];
            if c.enabled {
                out.push(Event::ClientUpdated {
                    client_id: id.clone(),
                    patch: crate::command::ClientPatch {
                        enabled: Some(false),
                        ..Default::default()
                    },
                    revision: c.revision + 1,
                });
            }
            Ok(out)
        }
        RevocationTarget::Agent(id) => {
            let a = state.agents.get(id).ok_or_else(|| not_found("agent", id))?;
            let mut out = vec![subject_revoked(id.to_string())];
            if !a.banned {
                out.push(Event::AgentBanned {
                    agent_id: id.clone(),
                    banned: true,
                });
            }
            Ok(out)
        }
    }
}

/// The identity commands; `None` for commands this module does not own.
pub(crate) fn decide_identity(
    state: &State,
    c: &Command,
    time_ms: u64,
    log_index: u64,
) -> Option<Result<Vec<Event>, Rejection>> {
    Some(match c {
        Command::CreateClient(cc) => create_client(state, cc, time_ms),
        Command::ChangeClientCredentials {
            client_id,
            change,
            expected_revision,
        } => change_credentials(state, client_id, change, *expected_revision, time_ms),
        Command::DeleteClient {
            client_id,
            expected_revision,
        } => (|| {
            let c = state
                .clients
                .get(client_id)
                .ok_or_else(|| Rejection::ClientNotFound {
                    client_id: client_id.to_string(),
                })?;
            revision("client", client_id, *expected_revision, c.revision)?;
            remove_client(state, client_id, log_index)
        })(),
        Command::CreateEntry(s) => create_entry(state, s, time_ms),
        Command::UpdateEntry {
            entry_id,
            patch,
            expected_revision,
        } => update_entry(state, entry_id, patch, *expected_revision, time_ms),
        Command::DeleteEntry {
            entry_id,
            expected_revision,
        } => (|| {
            let e = state
                .entries
                .get(entry_id)
                .ok_or_else(|| not_found("entry", entry_id))?;
            revision("entry", entry_id, *expected_revision, e.revision)?;
            let mut out = Vec::new();
            unbind_orphaned_spiffe_ids(state, &BTreeSet::from([entry_id.clone()]), &mut out);
            unbind_all(state, &Subject::Entry(entry_id.clone()), &mut out);
            out.push(Event::EntryDeleted {
                entry_id: entry_id.clone(),
                spiffe_id: e.spiffe_id.clone(),
            });
            Ok(out)
        })(),
        Command::CreateRole {
            name,
            description,
            permissions,
        } => (|| {
            if state.roles.contains_key(name) {
                return Err(exists("role", name));
            }
            if state.roles.len() >= limits::ROLES_MAX {
                return Err(limit("roles", limits::ROLES_MAX));
            }
            text("description", description)?;
            role_permissions_valid(permissions)?;
            Ok(vec![Event::RoleCreated {
                role: Role {
                    name: name.clone(),
                    description: description.clone(),
                    permissions: permissions.clone(),
                    revision: 1,
                    created_at_ms: time_ms,
                    updated_at_ms: time_ms,
                },
            }])
        })(),
        Command::UpdateRole {
            name,
            description,
            permissions,
            expected_revision,
        } => (|| {
            let cur = state
                .roles
                .get(name)
                .ok_or_else(|| not_found("role", name))?;
            revision("role", name, *expected_revision, cur.revision)?;
            let mut r = cur.clone();
            if let Some(d) = description {
                text("description", d)?;
                r.description = d.clone();
            }
            if let Some(p) = permissions {
                role_permissions_valid(p)?;
                r.permissions = p.clone();
            }
            if r == *cur {
                return Ok(vec![]);
            }
            r.revision += 1;
            r.updated_at_ms = time_ms;
            Ok(vec![Event::RoleUpdated { role: r }])
        })(),
        Command::DeleteRole {
            name,
            expected_revision,
        } => (|| {
            let cur = state
                .roles
                .get(name)
                .ok_or_else(|| not_found("role", name))?;
            revision("role", name, *expected_revision, cur.revision)?;
            let n = state.idx.role_bindings.get(name).copied().unwrap_or(0);
            if n > 0 {
                return Err(Rejection::RoleInUse {
                    role: name.to_string(),
                    bindings: n as u64,
                });
            }
            Ok(vec![Event::RoleDeleted { name: name.clone() }])
        })(),
        Command::Bind { role, subject } => (|| {
            if !state.roles.contains_key(role) {
                // Bad input, not a missing resource: the call names a role that is not there.
                return Err(invalid("role", format!("no role is named {role}")));
            }
            subject_exists(state, subject)?;
            let held = state.bindings.get(subject);
            if held.is_some_and(|r| r.contains(role)) {
                return Ok(vec![]);
            }
            if held.map_or(0, BTreeSet::len) >= limits::ROLES_PER_SUBJECT_MAX {
                return Err(limit("roles per subject", limits::ROLES_PER_SUBJECT_MAX));
            }
            Ok(vec![Event::RoleBound {
                role: role.clone(),
                subject: subject.clone(),
            }])
        })(),
        Command::Unbind { role, subject } => {
            if state
                .bindings
                .get(subject)
                .is_some_and(|r| r.contains(role))
            {
                Ok(vec![Event::RoleUnbound {
                    role: role.clone(),
                    subject: subject.clone(),
                }])
            } else {
                Err(not_found("binding", format!("{role} to {subject}")))
            }
        }
        Command::CreateDelegation(s) => create_delegation(state, s, time_ms),
        Command::Revoke(t) => revoke(state, t, time_ms, log_index),
        Command::CreateAgentToken {
            token_id,
            secret_hash,
            ttl_ms,
        } => (|| {
            token_id_valid(token_id)?;
            if *ttl_ms == 0 || *ttl_ms > limits::JOIN_TOKEN_TTL_MS_MAX {
                return Err(invalid(
                    "ttl",
                    format!("must be 1 ms to {} s", limits::JOIN_TOKEN_TTL_MS_MAX / 1000),
                ));
            }
            let tokens = &state.identity.agent_tokens;
            if tokens.contains_key(token_id) {
                return Err(exists("agent join token", token_id));
            }
            if tokens
                .values()
                .filter(|t| t.expires_at_ms > time_ms)
                .count()
                >= limits::JOIN_TOKENS_MAX
            {
                return Err(limit("unspent agent join tokens", limits::JOIN_TOKENS_MAX));
            }
            Ok(vec![Event::AgentTokenCreated {
                token_id: token_id.clone(),
                secret_hash: *secret_hash,
                expires_at_ms: time_ms.saturating_add(*ttl_ms),
            }])
        })(),
        Command::AttestAgent {
            token_id,
            secret_hash,
            agent_id,
        } => (|| {
            let t: &AgentToken = state
                .identity
                .agent_tokens
                .get(token_id)
                .ok_or(Rejection::JoinTokenInvalid)?;
            if !ct_eq(&t.secret_hash, secret_hash) {
                return Err(Rejection::JoinTokenInvalid);
            }
            if time_ms >= t.expires_at_ms {
                return Err(Rejection::JoinTokenExpired {
                    expires_at_ms: t.expires_at_ms,
                });
            }
            in_trust_domain(state, "agent_id", agent_id)?;
            if state.agents.get(agent_id).is_some_and(|a| a.banned) {
                return Err(Rejection::AgentBanned {
                    agent_id: agent_id.to_string(),
                });
            }
            if !state.agents.contains_key(agent_id) && state.agents.len() >= limits::AGENTS_MAX {
                return Err(limit("agents", limits::AGENTS_MAX));
            }
            Ok(vec![Event::AgentAttested {
                agent: Agent {
                    spiffe_id: agent_id.clone(),
                    token_id: token_id.clone(),
                    attested_at_ms: time_ms,
                    last_seen_ms: time_ms,
                    banned: false,
                },
            }])
        })(),
        Command::RecordAgentSeen { agent_id } => match state.agents.get(agent_id) {
            None => Err(not_found("agent", agent_id)),
            Some(a) if a.banned => Err(Rejection::AgentBanned {
                agent_id: agent_id.to_string(),
            }),
            Some(_) => Ok(vec![Event::AgentSeen {
                agent_id: agent_id.clone(),
            }]),
        },
        Command::SetAgentBanned { agent_id, banned } => match state.agents.get(agent_id) {
            None => Err(not_found("agent", agent_id)),
            Some(a) if a.banned == *banned => Ok(vec![]),
            Some(_) => Ok(vec![Event::AgentBanned {
                agent_id: agent_id.clone(),
                banned: *banned,
            }]),
        },
        Command::DeleteAgent { agent_id } => {
            if state.agents.contains_key(agent_id) {
                Ok(vec![Event::AgentDeleted {
                    agent_id: agent_id.clone(),
                }])
            } else {
                Err(not_found("agent", agent_id))
            }
        }
        Command::InstallClientSecretKey { sealed_key } => {
            if state.identity.client_secret_key {
                // Rejected, not a no-op: accepting would overwrite the stored key.
                Err(exists("client secret key", "cluster"))
            } else if sealed_key.0.is_empty() || sealed_key.0.len() > 1024 {
                Err(invalid("sealed_key", "must be 1 to 1024 bytes"))
            } else {
                Ok(vec![Event::ClientSecretKeyInstalled])
            }
        }
        Command::PublishNodeKey { key } => crate::keys::publish(state, key, time_ms),
        Command::ActivateNodeKey { kid } => crate::keys::activate(state, kid, time_ms),
        Command::RetireNodeKey { kid } => crate::keys::retire(state, kid),
        Command::CreateFederation { federation } => {
            crate::federation::create(state, federation, time_ms)
        }
        Command::DeleteFederation { trust_domain } => {
            crate::federation::delete(state, trust_domain)
        }
        Command::RecordFederatedBundle {
            trust_domain,
            bundle,
        } => crate::federation::record(state, trust_domain, bundle),
        Command::PrepareRoot { cert_der, .. } => crate::roots::prepare(state, cert_der, time_ms),
        Command::ActivateRoot { fingerprint } => crate::roots::activate(state, fingerprint),
        Command::RetireRoot { fingerprint } => crate::roots::retire(state, fingerprint),
        Command::RecordIssuances { node_id, issuances } => {
            crate::issuance::record(state, *node_id, issuances)
        }
        Command::PruneRevocations => {
            let jtis: Vec<String> = state
                .idx
                .revoked_by_expiry
                .iter()
                .take_while(|(exp, _)| *exp <= time_ms)
                .take(limits::PRUNE_PER_COMMAND_MAX)
                .map(|(_, jti)| jti.clone())
                .collect();
            Ok(if jtis.is_empty() {
                Vec::new()
            } else {
                vec![Event::RevocationsPruned { jtis }]
            })
        }
        Command::RecordCheckpoint(c) => crate::audit::checkpoint(state, c),
        Command::RecordAuthFailures { node_id, failures } => {
            crate::audit::auth_failures(state, *node_id, failures)
        }
        Command::RecordIssuanceBatch { node_id, batch } => {
            crate::issuance::record_batch(state, *node_id, batch)
        }
        Command::RecordAdminCertificate {
            name,
            fingerprint,
            root,
            not_after_ms,
            revokes,
        } => crate::admins::record(
            state,
            name,
            fingerprint,
            root,
            *not_after_ms,
            revokes.as_deref(),
            time_ms,
        ),
        Command::PruneAudit(p) => crate::audit::prune(state, p, time_ms),
        Command::ElideIssuances(e) => crate::audit::elide(state, e, time_ms),
        Command::RecordSinkProgress { node_id, sinks } => {
            crate::audit::sink_progress(state, *node_id, sinks)
        }
        Command::ElideIssuanceParts(e) => crate::audit::elide_parts(state, e, time_ms),
        _ => return None,
    })
}
