//! Wire <-> domain for the identity API (clients' credentials, entries, roles, bindings,
//! delegations, revocations, agents). Every parse names the field that is wrong.

use std::collections::BTreeSet;

use authsec_domain::command::{
    CreateClient, DelegationSpec, EntryPatch, EntrySpec, RevocationTarget,
};
use authsec_domain::identity::{ClientAuth, PublicKey};
use authsec_domain::{
    limits, Agent, ClientId, Delegation, DelegationId, Delegator, Entry, EntryId, FieldError, Role,
    RoleName, Scope, Selector, SpiffeId, Subject, TrustDomain,
};

use crate::convert::{kind_from_wire, scopes, text};
use crate::v1;

/// Rename a parse error to the request field it came from.
fn at<T>(field: &'static str, r: Result<T, FieldError>) -> Result<T, FieldError> {
    r.map_err(|e| e.at(field))
}

/// A page size: 0 means the default; more than the limit is refused.
pub fn page_size(n: u32) -> Result<usize, FieldError> {
    match n {
        0 => Ok(limits::PAGE_SIZE_DEFAULT as usize),
        n if n > limits::PAGE_SIZE_MAX => Err(FieldError::new(
            "page_size",
            format!("{n} is over the limit of {}", limits::PAGE_SIZE_MAX),
        )),
        n => Ok(n as usize),
    }
}

/// A page token is the last key of the previous page, hex encoded.
pub fn page_token(s: &str) -> Result<Option<Vec<u8>>, FieldError> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > 4096 {
        return Err(FieldError::new("page_token", "too long"));
    }
    hex::decode(s)
        .map(Some)
        .map_err(|_| FieldError::new("page_token", "not a token this API handed out"))
}

pub fn page_token_of(key: Option<Vec<u8>>) -> String {
    key.map(hex::encode).unwrap_or_default()
}

pub fn spiffe_id(field: &'static str, s: &str) -> Result<SpiffeId, FieldError> {
    at(field, SpiffeId::parse(s))
}

fn opt_spiffe(field: &'static str, s: &str) -> Result<Option<SpiffeId>, FieldError> {
    if s.is_empty() {
        Ok(None)
    } else {
        spiffe_id(field, s).map(Some)
    }
}

fn opt_client(field: &'static str, s: &str) -> Result<Option<ClientId>, FieldError> {
    if s.is_empty() {
        Ok(None)
    } else {
        at(field, ClientId::parse(s)).map(Some)
    }
}

pub fn role_name(s: &str) -> Result<RoleName, FieldError> {
    RoleName::parse(s)
}

pub fn entry_id(s: &str) -> Result<EntryId, FieldError> {
    EntryId::parse(s)
}

pub fn delegation_id(s: &str) -> Result<DelegationId, FieldError> {
    DelegationId::parse(s)
}

fn bounded_list(field: &'static str, list: &[String], max: usize) -> Result<(), FieldError> {
    if list.len() > max {
        return Err(FieldError::new(
            field,
            format!("{} values, at most {max} allowed", list.len()),
        ));
    }
    Ok(())
}

fn selectors(list: Vec<String>) -> Result<BTreeSet<Selector>, FieldError> {
    bounded_list("selectors", &list, limits::SELECTORS_PER_ENTRY_MAX)?;
    list.iter().map(|s| Selector::parse(s)).collect()
}

fn dns_names(list: Vec<String>) -> Result<BTreeSet<String>, FieldError> {
    bounded_list("dns_names", &list, limits::DNS_NAMES_PER_ENTRY_MAX)?;
    list.iter()
        .map(|s| authsec_domain::ids::dns_name(s))
        .collect()
}

fn trust_domains(list: Vec<String>) -> Result<BTreeSet<TrustDomain>, FieldError> {
    bounded_list("federates_with", &list, limits::FEDERATES_WITH_MAX)?;
    list.iter()
        .map(|s| at("federates_with", TrustDomain::parse(s)))
        .collect()
}

fn permissions(field: &'static str, list: Vec<String>) -> Result<BTreeSet<Scope>, FieldError> {
    bounded_list(field, &list, limits::PERMISSIONS_PER_ROLE_MAX)?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            Scope::parse(s).map_err(|e| FieldError::new(field, format!("[{i}]: {}", e.reason)))
        })
        .collect()
}

/// `client:<id>`, `entry:<id>`, a SPIFFE ID, or `person:<issuer>#<subject>`.
pub fn subject(field: &'static str, s: &str) -> Result<Subject, FieldError> {
    let bad = || {
        FieldError::new(
            field,
            format!(
                "{s:?} is not client:<id>, entry:<id>, spiffe://... or person:<issuer>#<subject>"
            ),
        )
    };
    if let Some(id) = s.strip_prefix("client:") {
        return at(field, ClientId::parse(id)).map(Subject::Client);
    }
    if let Some(id) = s.strip_prefix("entry:") {
        return at(field, EntryId::parse(id)).map(Subject::Entry);
    }
    if s.starts_with("spiffe://") {
        return spiffe_id(field, s).map(Subject::Spiffe);
    }
    if let Some(p) = s.strip_prefix("person:") {
        // The issuer is everything before the first '#': issuers carry no fragment.
        let (issuer, subject) = p.split_once('#').ok_or_else(bad)?;
        for v in [issuer, subject] {
            if v.is_empty() || v.len() > limits::PERSON_BYTES_MAX || v.chars().any(char::is_control)
            {
                return Err(bad());
            }
        }
        return Ok(Subject::Person {
            issuer: issuer.into(),
            subject: subject.into(),
        });
    }
    Err(bad())
}

pub fn delegator(s: &str) -> Result<Delegator, FieldError> {
    match subject("delegator", s)? {
        Subject::Client(c) => Ok(Delegator::Client(c)),
        Subject::Person { issuer, subject } => Ok(Delegator::Person { issuer, subject }),
        _ => Err(FieldError::new(
            "delegator",
            "a delegator is client:<id> or person:<issuer>#<subject>",
        )),
    }
}

pub fn delegator_to_wire(d: &Delegator) -> String {
    d.subject().key()
}

pub fn public_keys(list: Vec<v1::PublicKey>) -> Result<Vec<PublicKey>, FieldError> {
    if list.len() > limits::PUBLIC_KEYS_PER_CLIENT_MAX {
        return Err(FieldError::new(
            "public_keys",
            format!("at most {} keys", limits::PUBLIC_KEYS_PER_CLIENT_MAX),
        ));
    }
    list.into_iter()
        .map(|k| {
            if k.kid.is_empty() || k.kid.len() > limits::KEY_ID_BYTES_MAX {
                return Err(FieldError::new(
                    "public_keys",
                    format!("a kid must be 1 to {} bytes", limits::KEY_ID_BYTES_MAX),
                ));
            }
            if k.key.is_empty() || k.key.len() > limits::PUBLIC_KEY_BYTES_MAX {
                return Err(FieldError::new(
                    "public_keys",
                    format!(
                        "key {} must be 1 to {} bytes",
                        k.kid,
                        limits::PUBLIC_KEY_BYTES_MAX
                    ),
                ));
            }
            Ok(PublicKey {
                kid: k.kid,
                key: k.key,
            })
        })
        .collect()
}

/// A create-client request with its generated id, secret hash and entry id filled in by the
/// node.
pub fn create_client(
    r: v1::CreateClientRequest,
    generated_id: ClientId,
    secret_hash: Option<authsec_domain::identity::SecretHash>,
    entry_id: EntryId,
    default_template: &str,
) -> Result<CreateClient, FieldError> {
    let kind = kind_from_wire(r.kind)?;
    let template = if r.spiffe_id_template.is_empty() {
        default_template.to_owned()
    } else {
        r.spiffe_id_template
    };
    Ok(CreateClient {
        client_id: if r.client_id.is_empty() {
            generated_id
        } else {
            ClientId::parse(&r.client_id)?
        },
        kind,
        display_name: text("display_name", r.display_name)?,
        description: text("description", r.description)?,
        owner: text("owner", r.owner)?,
        allowed_scopes: scopes("allowed_scopes", r.allowed_scopes)?,
        default_scopes: scopes("default_scopes", r.default_scopes)?,
        default_audience: text("default_audience", r.default_audience)?,
        secret_hash,
        public_keys: public_keys(r.public_keys)?,
        spiffe_id: opt_spiffe("spiffe_id", &r.spiffe_id)?,
        agent_entry: (kind == authsec_domain::ClientKind::AiAgent).then_some((entry_id, template)),
    })
}

pub fn credentials_to_wire(a: &ClientAuth) -> v1::ClientCredentials {
    v1::ClientCredentials {
        methods: a.methods().into_iter().map(String::from).collect(),
        secret_created_at_ms: a.secret.as_ref().map_or(0, |s| s.created_at_ms),
        previous_secret_valid_until_ms: a
            .secret
            .as_ref()
            .and_then(|s| s.previous.map(|(_, until)| until))
            .unwrap_or(0),
        public_keys: a
            .public_keys
            .iter()
            .map(|k| v1::PublicKey {
                kid: k.kid.clone(),
                key: k.key.clone(),
            })
            .collect(),
        spiffe_id: a
            .spiffe_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

pub fn entry_to_wire(e: &Entry) -> v1::Entry {
    v1::Entry {
        entry_id: e.entry_id.to_string(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e
            .parent_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        x509_ttl_seconds: e.x509_ttl_s,
        jwt_ttl_seconds: e.jwt_ttl_s,
        dns_names: e.dns_names.iter().cloned().collect(),
        client_id: e
            .client_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
        status: e.status().as_str().into(),
        revision: e.revision,
        created_at_ms: e.created_at_ms,
        updated_at_ms: e.updated_at_ms,
    }
}

pub fn create_entry(
    r: v1::CreateEntryRequest,
    generated: EntryId,
) -> Result<EntrySpec, FieldError> {
    Ok(EntrySpec {
        entry_id: if r.entry_id.is_empty() {
            generated
        } else {
            entry_id(&r.entry_id)?
        },
        spiffe_id: spiffe_id("spiffe_id", &r.spiffe_id)?,
        parent_id: opt_spiffe("parent_id", &r.parent_id)?,
        selectors: selectors(r.selectors)?,
        x509_ttl_s: match r.x509_ttl_seconds {
            0 => limits::X509_TTL_S_DEFAULT,
            n => n,
        },
        jwt_ttl_s: match r.jwt_ttl_seconds {
            0 => limits::JWT_TTL_S_DEFAULT,
            n => n,
        },
        dns_names: dns_names(r.dns_names)?,
        client_id: opt_client("client_id", &r.client_id)?,
        federates_with: trust_domains(r.federates_with)?,
    })
}

pub fn update_entry(
    r: v1::UpdateEntryRequest,
) -> Result<(EntryId, EntryPatch, Option<u64>), FieldError> {
    let id = entry_id(&r.entry_id)?;
    let patch = EntryPatch {
        parent_id: r
            .parent_id
            .map(|p| opt_spiffe("parent_id", &p))
            .transpose()?,
        selectors: r.selectors.map(|l| selectors(l.values)).transpose()?,
        x509_ttl_s: r.x509_ttl_seconds,
        jwt_ttl_s: r.jwt_ttl_seconds,
        dns_names: r.dns_names.map(|l| dns_names(l.values)).transpose()?,
        federates_with: r
            .federates_with
            .map(|l| trust_domains(l.values))
            .transpose()?,
    };
    if patch == EntryPatch::default() {
        return Err(FieldError::new("update", "names no field to change"));
    }
    Ok((id, patch, r.expected_revision))
}

pub fn role_to_wire(r: &Role) -> v1::Role {
    v1::Role {
        name: r.name.to_string(),
        description: r.description.clone(),
        permissions: r.permissions.iter().map(ToString::to_string).collect(),
        revision: r.revision,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
    }
}

pub fn create_role(
    r: v1::CreateRoleRequest,
) -> Result<(RoleName, String, BTreeSet<Scope>), FieldError> {
    Ok((
        role_name(&r.name)?,
        text("description", r.description)?,
        permissions("permissions", r.permissions)?,
    ))
}

/// A role update: name, new description, new permissions, expected revision.
pub type RoleUpdate = (
    RoleName,
    Option<String>,
    Option<BTreeSet<Scope>>,
    Option<u64>,
);

pub fn update_role(r: v1::UpdateRoleRequest) -> Result<RoleUpdate, FieldError> {
    let name = role_name(&r.name)?;
    let description = r.description.map(|d| text("description", d)).transpose()?;
    let perms = r
        .permissions
        .map(|l| permissions("permissions", l.values))
        .transpose()?;
    if description.is_none() && perms.is_none() {
        return Err(FieldError::new("update", "names no field to change"));
    }
    Ok((name, description, perms, r.expected_revision))
}

pub fn binding(r: &v1::Binding) -> Result<(RoleName, Subject), FieldError> {
    Ok((role_name(&r.role)?, subject("subject", &r.subject)?))
}

/// `active`, `expired` (at `now_ms`) or `revoked`.
pub fn delegation_to_wire(d: &Delegation, now_ms: u64) -> v1::Delegation {
    let status = if d.revoked_at_index.is_some() {
        "revoked"
    } else if now_ms >= d.expires_at_ms {
        "expired"
    } else {
        "active"
    };
    v1::Delegation {
        delegation_id: d.delegation_id.to_string(),
        delegator: delegator_to_wire(&d.delegator),
        delegate: d.delegate.to_string(),
        permissions: d.permissions.iter().map(ToString::to_string).collect(),
        max_token_ttl_seconds: d.max_token_ttl_s,
        max_depth: u32::from(d.max_depth),
        depth: u32::from(d.depth),
        parent: d
            .parent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        expires_at_ms: d.expires_at_ms,
        created_at_ms: d.created_at_ms,
        revoked_at_index: d.revoked_at_index.unwrap_or(0),
        status: status.into(),
    }
}

pub fn create_delegation(
    r: v1::CreateDelegationRequest,
    generated: DelegationId,
) -> Result<DelegationSpec, FieldError> {
    let max_depth = u8::try_from(r.max_depth)
        .ok()
        .filter(|d| *d <= limits::DELEGATION_DEPTH_MAX)
        .ok_or_else(|| {
            FieldError::new(
                "max_depth",
                format!("at most {}", limits::DELEGATION_DEPTH_MAX),
            )
        })?;
    if r.ttl_seconds == 0 {
        return Err(FieldError::new(
            "ttl_seconds",
            "must be set (seconds the grant lives)",
        ));
    }
    let ttl_ms = r
        .ttl_seconds
        .checked_mul(1000)
        .ok_or_else(|| FieldError::new("ttl_seconds", "too large"))?;
    Ok(DelegationSpec {
        delegation_id: if r.delegation_id.is_empty() {
            generated
        } else {
            at("delegation_id", delegation_id(&r.delegation_id))?
        },
        delegator: delegator(&r.delegator)?,
        delegate: at("delegate", ClientId::parse(&r.delegate))?,
        permissions: scopes("permissions", r.permissions)?,
        max_token_ttl_s: match r.max_token_ttl_seconds {
            0 => 300,
            n => n,
        },
        max_depth,
        ttl_ms,
        parent: if r.parent.is_empty() {
            None
        } else {
            Some(at("parent", delegation_id(&r.parent))?)
        },
    })
}

pub fn revoke(r: v1::RevokeRequest) -> Result<RevocationTarget, FieldError> {
    use v1::revoke_request::Target;
    match r.target {
        None => Err(FieldError::new(
            "target",
            "name what to revoke: token, subject, delegation_id, client_id or agent_id",
        )),
        Some(Target::Token(t)) => {
            if t.jti.is_empty() || t.jti.len() > limits::JTI_BYTES_MAX {
                return Err(FieldError::new(
                    "jti",
                    format!("must be 1 to {} bytes", limits::JTI_BYTES_MAX),
                ));
            }
            Ok(RevocationTarget::Token {
                jti: t.jti,
                expires_at_ms: t.expires_at_ms,
            })
        }
        Some(Target::Subject(s)) => subject("subject", &s).map(RevocationTarget::Subject),
        Some(Target::DelegationId(d)) => {
            at("delegation_id", delegation_id(&d)).map(RevocationTarget::Delegation)
        }
        Some(Target::ClientId(c)) => {
            at("client_id", ClientId::parse(&c)).map(RevocationTarget::Client)
        }
        Some(Target::AgentId(a)) => spiffe_id("agent_id", &a).map(RevocationTarget::Agent),
    }
}

pub fn agent_to_wire(a: &Agent) -> v1::Agent {
    v1::Agent {
        spiffe_id: a.spiffe_id.to_string(),
        token_id: a.token_id.clone(),
        attested_at_ms: a.attested_at_ms,
        last_seen_ms: a.last_seen_ms,
        banned: a.banned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_and_name_the_field() {
        assert_eq!(
            subject("subject", "client:a1"),
            Ok(Subject::Client(ClientId::parse("a1").expect("id")))
        );
        assert!(matches!(
            subject("subject", "person:https://idp.example#alice"),
            Ok(Subject::Person { .. })
        ));
        assert_eq!(subject("subject", "bob").expect_err("bad").field, "subject");
        assert_eq!(
            subject("subject", "spiffe://td/a//b")
                .expect_err("bad")
                .field,
            "subject"
        );
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0), Ok(100));
        assert_eq!(page_size(1000), Ok(1000));
        assert_eq!(page_size(1001).expect_err("over").field, "page_size");
    }
}
