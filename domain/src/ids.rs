//! Validated identifiers: once built, they cannot hold a bad value ("parse, don't validate").

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits;

/// A value that failed validation, naming the field so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// The same error reported under another (outer) field name.
    pub fn at(mut self, field: &'static str) -> Self {
        self.field = field;
        self
    }
}

macro_rules! string_newtype {
    ($name:ident, $parse:path) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
        impl std::str::FromStr for $name {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<Self, FieldError> {
                $parse(s)
            }
        }
    };
}

/// A SPIFFE trust domain name: lowercase letters, digits, `.`, `-`, `_`; at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        const F: &str = "trust_domain";
        let s = s.strip_prefix("spiffe://").unwrap_or(s);
        if s.is_empty() {
            return Err(FieldError::new(F, "must not be empty"));
        }
        if s.len() > limits::TRUST_DOMAIN_BYTES_MAX {
            return Err(FieldError::new(
                F,
                format!("longer than {} bytes", limits::TRUST_DOMAIN_BYTES_MAX),
            ));
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(FieldError::new(
                F,
                format!("character {c:?} is not allowed (lowercase letters, digits, '.', '-', '_' only)"),
            ));
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(TrustDomain, TrustDomain::parse);

/// A SPIFFE ID, `spiffe://<trust-domain>/<path>`, valid per the SPIFFE ID standard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId(String);

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        const F: &str = "spiffe_id";
        if s.len() > limits::SPIFFE_ID_BYTES_MAX {
            return Err(FieldError::new(
                F,
                format!("longer than {} bytes", limits::SPIFFE_ID_BYTES_MAX),
            ));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| FieldError::new(F, "scheme must be spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        TrustDomain::parse(td)
            .map_err(|e| FieldError::new(F, format!("trust domain: {}", e.reason)))?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(FieldError::new(
                        F,
                        "path has an empty segment or a trailing '/'",
                    ));
                }
                if seg == "." || seg == ".." {
                    return Err(FieldError::new(F, "path has a '.' or '..' segment"));
                }
                if let Some(c) = seg
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(FieldError::new(
                        F,
                        format!("path character {c:?} is not allowed"),
                    ));
                }
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn trust_domain(&self) -> TrustDomain {
        let rest = &self.0["spiffe://".len()..];
        let td = rest.split('/').next().unwrap_or(rest);
        TrustDomain(td.to_owned())
    }
}
string_newtype!(SpiffeId, SpiffeId::parse);

/// An OAuth client id: 1 to 128 bytes of `[A-Za-z0-9._-]`, never `.` or `..`, so it is also a
/// valid SPIFFE path segment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        const F: &str = "client_id";
        if s.is_empty() {
            return Err(FieldError::new(F, "must not be empty"));
        }
        if s.len() > limits::CLIENT_ID_BYTES_MAX {
            return Err(FieldError::new(
                F,
                format!("longer than {} bytes", limits::CLIENT_ID_BYTES_MAX),
            ));
        }
        if s == "." || s == ".." {
            return Err(FieldError::new(F, "must not be '.' or '..'"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(FieldError::new(
                F,
                format!("character {c:?} is not allowed (letters, digits, '.', '-', '_' only)"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// A client id derived from leader-chosen random bytes, for registrations that name none.
    pub fn generated(seed: &[u8; 16]) -> Self {
        Self(format!("c-{}", hex::encode(&seed[..10])))
    }
}
string_newtype!(ClientId, ClientId::parse);

/// A scope or permission, `resource:action`. Segments are separated by `.`; `*` may stand only
/// as a whole segment (`orders:*`, `billing.*:read`), never inside one (`ord*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

impl Scope {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        const F: &str = "scope";
        if s.len() > limits::SCOPE_BYTES_MAX {
            return Err(FieldError::new(
                F,
                format!("{s:?} is longer than {} bytes", limits::SCOPE_BYTES_MAX),
            ));
        }
        let (resource, action) = s.split_once(':').ok_or_else(|| {
            FieldError::new(F, format!("{s:?} is not of the form resource:action"))
        })?;
        for part in [resource, action] {
            if part.is_empty() {
                return Err(FieldError::new(
                    F,
                    format!("{s:?} has an empty resource or action"),
                ));
            }
            for seg in part.split('.') {
                if seg.is_empty() {
                    return Err(FieldError::new(F, format!("{s:?} has an empty segment")));
                }
                if seg != "*"
                    && seg
                        .chars()
                        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/')))
                {
                    return Err(FieldError::new(
                        F,
                        format!("{s:?}: segment {seg:?} may hold letters, digits, '-', '_', '/' or be exactly '*'"),
                    ));
                }
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// True when the scope holds a `*` segment (allowed in roles and allow-lists, never in tokens).
    pub fn is_wildcard(&self) -> bool {
        self.0.split([':', '.']).any(|seg| seg == "*")
    }
}
string_newtype!(Scope, Scope::parse);

/// Letters, digits, `.`, `-`, `_`; 1 to `max` bytes; never `.` or `..`.
fn simple_name(field: &'static str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(FieldError::new(field, format!("longer than {max} bytes")));
    }
    if s == "." || s == ".." {
        return Err(FieldError::new(field, "must not be '.' or '..'"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(FieldError::new(
            field,
            format!("character {c:?} is not allowed (letters, digits, '.', '-', '_' only)"),
        ));
    }
    Ok(())
}

macro_rules! simple_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, FieldError> {
                simple_name($field, s, $max)?;
                Ok(Self(s.to_owned()))
            }
        }
        string_newtype!($name, $name::parse);
    };
}

simple_id!(
    /// A workload entry's id.
    EntryId,
    "entry_id",
    limits::ENTRY_ID_BYTES_MAX
);
simple_id!(
    /// A role's name.
    RoleName,
    "role",
    limits::ROLE_NAME_BYTES_MAX
);
simple_id!(
    /// A delegation's id.
    DelegationId,
    "delegation_id",
    limits::DELEGATION_ID_BYTES_MAX
);

/// A workload selector, `type:value` (`unix:uid:1000`, `k8s:ns:payments`): what an agent must
/// observe about a process before it hands the process an identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector(String);

impl Selector {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        const F: &str = "selectors";
        if s.len() > limits::SELECTOR_BYTES_MAX {
            return Err(FieldError::new(
                F,
                format!("{s:?} is longer than {} bytes", limits::SELECTOR_BYTES_MAX),
            ));
        }
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| FieldError::new(F, format!("{s:?} is not of the form type:value")))?;
        if kind.is_empty()
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(FieldError::new(
                F,
                format!("{s:?}: the type must be lowercase letters, digits, '_' or '-'"),
            ));
        }
        if value.is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(FieldError::new(
                F,
                format!("{s:?}: the value must be non-empty, without spaces or control characters"),
            ));
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(Selector, Selector::parse);

/// A DNS name for an X.509-SVID's SAN: LDH labels, at most 253 bytes.
pub fn dns_name(s: &str) -> Result<String, FieldError> {
    const F: &str = "dns_names";
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let body = s.strip_prefix("*.").unwrap_or(s);
    if s.len() > 253 || !body.split('.').all(ok_label) {
        return Err(FieldError::new(F, format!("{s:?} is not a valid DNS name")));
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domain_rules() {
        assert!(TrustDomain::parse("example.org").is_ok());
        assert_eq!(
            TrustDomain::parse("spiffe://example.org").map(|t| t.0),
            Ok("example.org".into())
        );
        assert!(TrustDomain::parse("Example.org").is_err());
        assert!(TrustDomain::parse("example.org:8080").is_err());
        assert!(TrustDomain::parse("").is_err());
        assert!(TrustDomain::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn spiffe_id_rules() {
        assert!(SpiffeId::parse("spiffe://example.org/agent/a-1").is_ok());
        assert!(SpiffeId::parse("spiffe://example.org").is_ok());
        assert!(SpiffeId::parse("spiffe://example.org/").is_err());
        assert!(SpiffeId::parse("spiffe://example.org/a//b").is_err());
        assert!(SpiffeId::parse("spiffe://example.org/a/..").is_err());
        assert!(SpiffeId::parse("spiffe://example.org/a?x=1").is_err());
        assert!(SpiffeId::parse("https://example.org/a").is_err());
        assert!(SpiffeId::parse("spiffe://user@example.org/a").is_err());
        let id = SpiffeId::parse("spiffe://example.org/x").expect("valid");
        assert_eq!(id.trust_domain().as_str(), "example.org");
    }

    #[test]
    fn client_id_rules() {
        assert!(ClientId::parse("billing-agent_1.v2").is_ok());
        assert!(ClientId::parse("").is_err());
        assert!(ClientId::parse("..").is_err());
        assert!(ClientId::parse("a/b").is_err());
        assert!(ClientId::parse(&"a".repeat(129)).is_err());
        assert_eq!(
            ClientId::generated(&[0xab; 16]).as_str(),
            "c-abababababababababab"
        );
    }

    #[test]
    fn scope_rules() {
        assert!(Scope::parse("orders:read").is_ok());
        assert!(Scope::parse("orders:*").expect("valid").is_wildcard());
        assert!(Scope::parse("authsec.admin:clients.write").is_ok());
        assert!(!Scope::parse("orders:read").expect("valid").is_wildcard());
        assert!(Scope::parse("orders").is_err());
        assert!(Scope::parse("ord*:read").is_err());
        assert!(Scope::parse("orders:").is_err());
        assert!(Scope::parse("a..b:read").is_err());
    }

    #[test]
    fn deserialize_validates() {
        let bad: Result<ClientId, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
    }
}
