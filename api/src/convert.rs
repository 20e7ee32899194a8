//! Wire <-> domain. Parsing a request validates every field and names the one that is wrong.

use std::collections::BTreeSet;

use authsec_domain::command::{ClientPatch, RegisterClient};
use authsec_domain::{limits, Client, ClientId, ClientKind, FieldError, Scope};

use crate::v1;

pub fn kind_from_wire(k: i32) -> Result<ClientKind, FieldError> {
    match v1::ClientKind::try_from(k) {
        Ok(v1::ClientKind::Service) => Ok(ClientKind::Service),
        Ok(v1::ClientKind::AiAgent) => Ok(ClientKind::AiAgent),
        Ok(v1::ClientKind::Ci) => Ok(ClientKind::Ci),
        Ok(v1::ClientKind::Device) => Ok(ClientKind::Device),
        Ok(v1::ClientKind::Unspecified) => Err(FieldError::new(
            "kind",
            "must be set (service, ai_agent, ci or device)",
        )),
        Err(_) => Err(FieldError::new("kind", format!("unknown value {k}"))),
    }
}

pub fn kind_to_wire(k: ClientKind) -> v1::ClientKind {
    match k {
        ClientKind::Service => v1::ClientKind::Service,
        ClientKind::AiAgent => v1::ClientKind::AiAgent,
        ClientKind::Ci => v1::ClientKind::Ci,
        ClientKind::Device => v1::ClientKind::Device,
    }
}

pub fn text(field: &'static str, s: String) -> Result<String, FieldError> {
    if s.len() > limits::TEXT_BYTES_MAX {
        return Err(FieldError::new(
            field,
            format!(
                "{} bytes, at most {} allowed",
                s.len(),
                limits::TEXT_BYTES_MAX
            ),
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s)
}

pub fn scopes(field: &'static str, list: Vec<String>) -> Result<BTreeSet<Scope>, FieldError> {
    if list.len() > limits::SCOPES_PER_CLIENT_MAX {
        return Err(FieldError::new(
            field,
            format!(
                "{} scopes, at most {} allowed",
                list.len(),
                limits::SCOPES_PER_CLIENT_MAX
            ),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            Scope::parse(s).map_err(|e| FieldError::new(field, format!("[{i}]: {}", e.reason)))
        })
        .collect()
}

pub fn client_id(s: &str) -> Result<ClientId, FieldError> {
    ClientId::parse(s)
}

pub fn register_client(r: v1::RegisterClientRequest) -> Result<RegisterClient, FieldError> {
    Ok(RegisterClient {
        client_id: if r.client_id.is_empty() {
            None
        } else {
            Some(ClientId::parse(&r.client_id)?)
        },
        kind: kind_from_wire(r.kind)?,
        display_name: text("display_name", r.display_name)?,
        description: text("description", r.description)?,
        owner: text("owner", r.owner)?,
        allowed_scopes: scopes("allowed_scopes", r.allowed_scopes)?,
        default_scopes: scopes("default_scopes", r.default_scopes)?,
        default_audience: text("default_audience", r.default_audience)?,
    })
}

pub fn update_client(
    r: v1::UpdateClientRequest,
) -> Result<(ClientId, ClientPatch, Option<u64>), FieldError> {
    let id = ClientId::parse(&r.client_id)?;
    let patch = ClientPatch {
        display_name: r
            .display_name
            .map(|s| text("display_name", s))
            .transpose()?,
        description: r.description.map(|s| text("description", s)).transpose()?,
        owner: r.owner.map(|s| text("owner", s)).transpose()?,
        allowed_scopes: r
            .allowed_scopes
            .map(|l| scopes("allowed_scopes", l.scopes))
            .transpose()?,
        default_scopes: r
            .default_scopes
            .map(|l| scopes("default_scopes", l.scopes))
            .transpose()?,
        default_audience: r
            .default_audience
            .map(|s| text("default_audience", s))
            .transpose()?,
        enabled: r.enabled,
    };
    if patch.is_empty() {
        return Err(FieldError::new("update", "names no field to change"));
    }
    Ok((id, patch, r.expected_revision))
}

pub fn client_to_wire(c: &Client) -> v1::Client {
    v1::Client {
        client_id: c.client_id.to_string(),
        kind: kind_to_wire(c.kind) as i32,
        display_name: c.display_name.clone(),
        description: c.description.clone(),
        owner: c.owner.clone(),
        allowed_scopes: c.allowed_scopes.iter().map(ToString::to_string).collect(),
        default_scopes: c.default_scopes.iter().map(ToString::to_string).collect(),
        default_audience: c.default_audience.clone(),
        enabled: c.enabled,
        revision: c.revision,
        created_at_ms: c.created_at_ms,
        updated_at_ms: c.updated_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_bad_field() {
        let r = v1::RegisterClientRequest {
            client_id: "ok".into(),
            kind: v1::ClientKind::Service as i32,
            allowed_scopes: vec!["orders:read".into(), "bad scope".into()],
            ..Default::default()
        };
        let e = register_client(r).expect_err("bad scope");
        assert_eq!(e.field, "allowed_scopes");
        assert!(e.reason.contains("[1]"), "{}", e.reason);

        let r = v1::RegisterClientRequest {
            kind: v1::ClientKind::Service as i32,
            display_name: "x".repeat(5000),
            ..Default::default()
        };
        assert_eq!(
            register_client(r).expect_err("too long").field,
            "display_name"
        );

        let r = v1::RegisterClientRequest {
            client_id: "a b".into(),
            kind: 1,
            ..Default::default()
        };
        assert_eq!(register_client(r).expect_err("bad id").field, "client_id");

        let r = v1::RegisterClientRequest {
            client_id: "ok".into(),
            ..Default::default()
        };
        assert_eq!(register_client(r).expect_err("no kind").field, "kind");
    }
}
