//! `/oauth2/token` (client credentials), `/oauth2/introspect` (RFC 7662) and `/oauth2/revoke`
//! (RFC 7009).

use std::collections::BTreeSet;
use std::sync::Arc;

use authsec_domain::command::RevocationTarget;
use authsec_domain::issuance::{CredentialKind, Issuance};
use authsec_domain::keys::KeyKind;
use authsec_domain::permissions::{self, Denial};
use authsec_domain::{
    Actor, ClientId, Command, DelegationId, Delegator, Principal, Scope, State, Subject,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use super::client_auth::{
    authenticate, client_of_spiffe, signed_by_jwt_authority, Authenticated, Form,
};
use super::jose::{b64url, Jws, VerifyKey};
use super::{error, json_ok, unavailable, Conn, Oauth};

pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Resources (audiences) per token, and bytes per resource.
const RESOURCES_MAX: usize = 8;
const RESOURCE_BYTES_MAX: usize = 512;
/// The permission that lets a client introspect or revoke any token.
const ADMIN_TOKENS_READ: &str = "authsec.admin:tokens.read";
const ADMIN_TOKENS_REVOKE: &str = "authsec.admin:tokens.revoke";

fn too_large(e: BytesRejection) -> Response {
    error(
        e.status(),
        "invalid_request",
        format!(
            "the request body could not be read ({e}); at most {} bytes",
            super::BODY_BYTES_MAX
        ),
    )
}

fn bad_request(code: &str, description: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, code, description)
}

/// `scope`: space-separated, each a concrete permission string.
fn parse_scopes(raw: &str) -> Result<BTreeSet<Scope>, Response> {
    raw.split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Scope::parse(s).map_err(|e| bad_request("invalid_scope", format!("scope {s:?}: {e}")))
        })
        .collect()
}

/// RFC 8707 `resource`: absolute URIs without a fragment.
fn parse_resources(raw: &[String]) -> Result<Vec<String>, Response> {
    if raw.len() > RESOURCES_MAX {
        return Err(bad_request(
            "invalid_target",
            format!("at most {RESOURCES_MAX} resource parameters"),
        ));
    }
    raw.iter()
        .map(|r| {
            let scheme_ok = r
                .split_once(':')
                .is_some_and(|(s, rest)| !s.is_empty() && !rest.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)));
            if !scheme_ok
                || r.contains('#')
                || r.len() > RESOURCE_BYTES_MAX
                || r.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                Err(bad_request(
                    "invalid_target",
                    format!("resource {r:?} must be an absolute URI without a fragment (at most {RESOURCE_BYTES_MAX} bytes)"),
                ))
            } else {
                Ok(r.clone())
            }
        })
        .collect()
}

fn denial(d: Denial) -> Response {
    match d {
        Denial::UnknownClient(_) | Denial::ClientDisabled(_) => {
            bad_request("unauthorized_client", d.to_string())
        }
        other => bad_request("invalid_scope", other.to_string()),
    }
}

/// The claims of an access token (RFC 9068), in the order they are written.
#[derive(serde::Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: Aud<'a>,
    client_id: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: &'a str,
    authsec_index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Cnf<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authsec_delegation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authsec_delegator: Option<&'a str>,
}

/// `aud`: a string when there is one audience, else an array.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Aud<'a> {
    One(&'a str),
    Many(&'a [String]),
}

#[derive(serde::Serialize)]
struct Cnf<'a> {
    #[serde(rename = "x5t#S256")]
    x5t_s256: &'a str,
}

/// What goes into one access token.
struct Grant {
    client: Authenticated,
    audience: Vec<String>,
    scopes: BTreeSet<Scope>,
    delegated: Option<Delegated>,
    /// The log index of the state the grant was decided on (the token's `authsec_index`).
    index: u64,
}

/// A delegated token's extra content (RFC 8693).
struct Delegated {
    /// The delegator's name as `sub` (a client id, or the person's `sub` at their issuer).
    sub: String,
    /// The delegator's subject key (`client:<id>`, `person:<iss>#<sub>`), for revocation.
    delegator: String,
    delegation: DelegationId,
    /// `act`: the agent, then the chain the subject token already carried.
    act: Value,
    /// The latest `exp` the delegation and the subject token allow.
    max_exp: u64,
}

/// Sign and record an access token; the answer of the token endpoint.
async fn issue(s: &Oauth, g: Grant) -> Response {
    let Some(key) = s.issuer.active_token_key() else {
        return unavailable(format!(
            "node {} has no active access-token key yet (it is being published through the log); ask another node",
            s.issuer.node_id
        ));
    };
    let now_ms = crate::issuer::now_ms();
    let now = now_ms / 1000;
    let exp = (now + u64::from(s.cfg.access_token_ttl_s))
        .min(key.not_after.as_secs())
        .min(g.delegated.as_ref().map_or(u64::MAX, |d| d.max_exp));
    if exp <= now {
        return unavailable(
            "this node's access-token key has expired; its successor is being prepared",
        );
    }
    let applied = g.index;
    let mut jti = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut jti);
    let jti = hex::encode(jti);
    let scope = g
        .scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    let sub = g
        .delegated
        .as_ref()
        .map_or(g.client.client_id.as_str(), |d| d.sub.as_str())
        .to_owned();
    let claims = AccessClaims {
        iss: &s.issuer_url,
        sub: &sub,
        aud: match g.audience.as_slice() {
            [one] => Aud::One(one),
            many => Aud::Many(many),
        },
        client_id: g.client.client_id.as_str(),
        iat: now,
        exp,
        jti: &jti,
        scope: &scope,
        // For revocation by index ("every token of this subject issued below R").
        authsec_index: applied,
        cnf: g
            .client
            .cert_thumbprint
            .as_deref()
            .map(|t| Cnf { x5t_s256: t }),
        act: g.delegated.as_ref().map(|d| &d.act),
        authsec_delegation: g.delegated.as_ref().map(|d| d.delegation.as_str()),
        authsec_delegator: g.delegated.as_ref().map(|d| d.delegator.as_str()),
    };
    let claims = match serde_json::to_vec(&claims) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "encoding access-token claims failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "encoding failed; see the node's log",
            );
        }
    };
    let header = format!(
        r#"{{"alg":"{}","typ":"at+jwt","kid":"{}"}}"#,
        key.alg.as_str(),
        key.kid
    );
    let input = format!("{}.{}", b64url(header.as_bytes()), b64url(&claims));
    let sig = match key.sign(input.as_bytes()) {
        Ok(sig) => sig,
        Err(e) => {
            tracing::error!(error = %e, "signing an access token failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed; see the node's log",
            );
        }
    };
    let token = format!("{input}.{}", b64url(&sig));
    // No audit, no credential.
    let record = Issuance {
        seq: 0,
        kind: CredentialKind::AccessToken,
        id: jti,
        subject: sub,
        client_id: g.client.client_id.to_string(),
        method: g.client.method.to_owned(),
        audience: g.audience,
        scopes: g.scopes.iter().map(ToString::to_string).collect(),
        delegation: g.delegated.as_ref().map(|d| d.delegation.to_string()),
        actor: g.delegated.as_ref().map(|_| g.client.client_id.to_string()),
        issued_at_ms: now_ms,
        expires_at_ms: exp * 1000,
        applied_index: applied,
    };
    if let Err(e) = s.recorder.record(record).await {
        tracing::error!(error = %e, "an access token was not issued: its audit record could not be written");
        return unavailable("this node cannot record issuances now; ask another node");
    }
    let mut answer = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": exp - now,
    });
    if g.delegated.is_some() {
        answer["issued_token_type"] = json!(TOKEN_TYPE_ACCESS);
    }
    if !scope.is_empty() {
        answer["scope"] = json!(scope);
    }
    json_ok(answer)
}

pub async fn token(
    AxState(s): AxState<Arc<Oauth>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // A node beyond its freshness bound issues nothing, so it says so before it authenticates
    // anyone: its view (replaying after a restart, rejoining after a wipe, cut off) may lack
    // the client or its current credentials, and the failures it counted locked every client
    // behind the same address out of it for a minute after it had caught up (soak 8: 117
    // answers of 401, then 1,386 of 429). Answering first also gives a guesser nothing to
    // tell right from wrong credentials by.
    if let Err(e) = s.issuer.check_fresh() {
        return unavailable(e.to_string());
    }
    let (form, client) =
        match read_authenticated(&s, &conn, &headers, body, &["resource", "audience"]).await {
            Ok(x) => x,
            Err(r) => return r,
        };
    let grant = match form.get("grant_type") {
        None => return bad_request("invalid_request", "grant_type is required"),
        Some(g) => g.to_owned(),
    };
    match grant.as_str() {
        GRANT_CLIENT_CREDENTIALS => {}
        GRANT_TOKEN_EXCHANGE => {
            if let Err(e) = s.issuer.check_fresh() {
                return unavailable(e.to_string());
            }
            return match exchange(&s, client, &form).await {
                Ok(g) => issue(&s, g).await,
                Err(r) => r,
            };
        }
        other => {
            return bad_request(
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported; this server issues client_credentials tokens"),
            )
        }
    }
    if let Err(e) = s.issuer.check_fresh() {
        return unavailable(e.to_string());
    }
    let requested = match form.get("scope").map(parse_scopes).transpose() {
        Ok(r) => r,
        Err(r) => return r,
    };
    let resources = match parse_resources(form.all("resource")) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let granted = {
        let state = s.view.read();
        let Some(c) = state.clients.get(&client.client_id) else {
            return bad_request("unauthorized_client", "the client was removed");
        };
        let audience = if resources.is_empty() {
            if c.default_audience.is_empty() {
                return bad_request(
                    "invalid_target",
                    format!(
                        "name a resource: client {} has no default audience",
                        c.client_id
                    ),
                );
            }
            vec![c.default_audience.clone()]
        } else {
            resources
        };
        let requested = requested.unwrap_or_else(|| c.default_scopes.clone());
        let time = crate::issuer::now_ms().max(state.meta.clock_ms);
        match permissions::effective(&state, &client.client_id, &requested, None, time) {
            Ok(scopes) => (audience, scopes, state.applied_index),
            Err(d) => return denial(d),
        }
    };
    issue(
        &s,
        Grant {
            client,
            audience: granted.0,
            scopes: granted.1,
            delegated: None,
            index: granted.2,
        },
    )
    .await
}

pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

fn invalid_grant(description: impl Into<String>) -> Response {
    bad_request("invalid_grant", description)
}

/// A JWT-SVID of this trust domain, verified, with `aud` naming this server.
fn jwt_svid(s: &Oauth, state: &State, jws: &Jws) -> Option<String> {
    let sub = jws
        .str_claim("sub")
        .filter(|x| x.starts_with("spiffe://"))?;
    let now = crate::issuer::now_ms() / 1000;
    if jws.num_claim("exp").is_none_or(|e| e <= now)
        || !jws
            .audiences()
            .iter()
            .any(|a| s.accepted_issuers.iter().any(|i| i == a))
    {
        return None;
    }
    signed_by_jwt_authority(state, jws).then(|| sub.to_owned())
}

/// RFC 8693 token exchange for delegation: the authenticated client is the agent; the subject
/// token names who delegates; the delegation rule, evaluated against the current roles, decides
/// the scope.
async fn exchange(s: &Oauth, client: Authenticated, form: &Form) -> Result<Grant, Response> {
    let (Some(subject_token), Some(subject_type)) =
        (form.get("subject_token"), form.get("subject_token_type"))
    else {
        return Err(bad_request(
            "invalid_request",
            "token exchange needs subject_token and subject_token_type",
        ));
    };
    match (form.get("actor_token"), form.get("actor_token_type")) {
        (Some(_), None) => {
            return Err(bad_request(
                "invalid_request",
                "actor_token_type is required with actor_token",
            ))
        }
        (None, Some(_)) => {
            return Err(bad_request(
                "invalid_request",
                "actor_token_type without actor_token",
            ))
        }
        _ => {}
    }
    for (name, t) in [
        ("subject_token_type", Some(subject_type)),
        ("actor_token_type", form.get("actor_token_type")),
        ("requested_token_type", form.get("requested_token_type")),
    ] {
        if let Some(t) = t {
            if t != TOKEN_TYPE_ACCESS && t != TOKEN_TYPE_JWT {
                return Err(bad_request(
                    "invalid_request",
                    format!("{name} {t:?} is not supported (use {TOKEN_TYPE_ACCESS} or {TOKEN_TYPE_JWT})"),
                ));
            }
        }
    }
    let requested = form.get("scope").map(parse_scopes).transpose()?;
    let resources = parse_resources(form.all("resource"))?;
    let subject =
        Jws::parse(subject_token).map_err(|e| invalid_grant(format!("subject_token: {e}")))?;
    let now_s = crate::issuer::now_ms() / 1000;
    let iss = subject.str_claim("iss").unwrap_or("").to_owned();
    let own = s.accepted_issuers.contains(&iss);
    // Who delegates, what the subject token itself allows, and the chain it already carries.
    let (delegator, subject_scopes, prior_act) = if own {
        let state = s.view.read();
        let jws = own_token(s, &state, subject_token)
            .filter(|j| active(&state, j, now_s))
            .ok_or_else(|| invalid_grant("subject_token is not an active token of this cluster"))?;
        if !jws
            .audiences()
            .iter()
            .any(|a| s.accepted_issuers.iter().any(|i| i == a))
        {
            return Err(invalid_grant(format!(
                "subject_token's aud must include this authorization server ({})",
                s.issuer_url
            )));
        }
        let cid = jws
            .str_claim("client_id")
            .and_then(|c| ClientId::parse(c).ok())
            .ok_or_else(|| invalid_grant("subject_token has no client_id"))?;
        let scopes: BTreeSet<String> = jws
            .str_claim("scope")
            .unwrap_or("")
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect();
        (
            Delegator::Client(cid),
            Some(scopes),
            jws.claims.get("act").cloned(),
        )
    } else if s.external.is_trusted(&iss) {
        let ext = s
            .external
            .verify(&subject, &s.accepted_issuers)
            .await
            .map_err(|e| invalid_grant(format!("subject_token: {e}")))?;
        (
            Delegator::Person {
                issuer: ext.issuer,
                subject: ext.subject,
            },
            None,
            None,
        )
    } else {
        return Err(invalid_grant(format!(
            "subject_token: the issuer {iss:?} is neither this cluster nor a trusted issuer"
        )));
    };
    // may_act (RFC 8693 section 4.4): the subject names who may act for it.
    if let Some(may) = subject.claims.get("may_act") {
        if may.get("sub").and_then(Value::as_str) != Some(client.client_id.as_str()) {
            return Err(invalid_grant(format!(
                "the subject token's may_act does not name {}",
                client.client_id
            )));
        }
    }
    let state = s.view.read();
    // The actor token must name the authenticated client itself.
    if let Some(actor_token) = form.get("actor_token") {
        let named = match own_token(s, &state, actor_token) {
            Some(j) if active(&state, &j, now_s) => j.str_claim("client_id").map(str::to_owned),
            Some(_) => None,
            None => Jws::parse(actor_token)
                .ok()
                .and_then(|j| jwt_svid(s, &state, &j))
                .and_then(|spiffe| client_of_spiffe(&state, &spiffe))
                .map(|c| c.to_string()),
        };
        match named {
            Some(c) if c == client.client_id.as_str() => {}
            Some(c) => {
                return Err(invalid_grant(format!(
                    "actor_token names {c}, not the authenticated client {}",
                    client.client_id
                )))
            }
            None => {
                return Err(invalid_grant(
                    "actor_token is not an active access token or JWT-SVID of this cluster",
                ))
            }
        }
    }
    let Some(c) = state.clients.get(&client.client_id) else {
        return Err(bad_request("unauthorized_client", "the client was removed"));
    };
    let audience = if resources.is_empty() {
        if c.default_audience.is_empty() {
            return Err(bad_request(
                "invalid_target",
                format!(
                    "name a resource: client {} has no default audience",
                    c.client_id
                ),
            ));
        }
        vec![c.default_audience.clone()]
    } else {
        resources
    };
    let time = crate::issuer::now_ms().max(state.meta.clock_ms);
    let candidates: Vec<&authsec_domain::Delegation> = state
        .idx
        .delegations_by_client
        .get(&client.client_id)
        .into_iter()
        .flatten()
        .filter_map(|id| state.delegations.get(id))
        .filter(|d| d.delegate == client.client_id && d.delegator == delegator)
        .filter(|d| permissions::chain(&state, &d.delegation_id, time).is_ok())
        .collect();
    if candidates.is_empty() {
        return Err(invalid_grant(format!(
            "no live delegation from {} to {}",
            delegator.subject().key(),
            client.client_id
        )));
    }
    let within_subject = |scopes: &BTreeSet<Scope>| -> Result<(), Response> {
        if let Some(allowed) = &subject_scopes {
            if let Some(x) = scopes.iter().find(|x| !allowed.contains(x.as_str())) {
                return Err(bad_request(
                    "invalid_scope",
                    format!("{x} is not in the subject token's scope"),
                ));
            }
        }
        Ok(())
    };
    let mut last_denial = None;
    let mut chosen = None;
    for d in &candidates {
        let wanted = match &requested {
            Some(r) => r.clone(),
            // Without a scope: every concrete permission the rule grants and the roles, the
            // delegator and the subject token still allow (never a pattern).
            None => d
                .permissions
                .iter()
                .filter(|p| !p.is_wildcard())
                .filter(|p| {
                    subject_scopes
                        .as_ref()
                        .is_none_or(|a| a.contains(p.as_str()))
                })
                .filter(|p| {
                    permissions::effective(
                        &state,
                        &client.client_id,
                        &BTreeSet::from([(*p).clone()]),
                        Some(&d.delegation_id),
                        time,
                    )
                    .is_ok()
                })
                .cloned()
                .collect(),
        };
        if wanted.is_empty() {
            continue;
        }
        within_subject(&wanted)?;
        match permissions::effective(
            &state,
            &client.client_id,
            &wanted,
            Some(&d.delegation_id),
            time,
        ) {
            Ok(scopes) => {
                chosen = Some((*d, scopes));
                break;
            }
            Err(_) if crate::planted::active() == crate::planted::PlantedBug::WidenDelegation => {
                chosen = Some((*d, wanted));
                break;
            }
            Err(e) => last_denial = Some(e),
        }
    }
    let Some((d, scopes)) = chosen else {
        return Err(match last_denial {
            Some(e) => bad_request("invalid_scope", e.to_string()),
            None => bad_request(
                "invalid_scope",
                "the delegation grants no concrete scope that is still allowed; name the scopes",
            ),
        });
    };
    let mut act = json!({ "sub": client.client_id.as_str() });
    if let Some(prior) = prior_act {
        act["act"] = prior;
    }
    let subject_exp = subject.num_claim("exp").unwrap_or(u64::MAX);
    let max_exp = (now_s + u64::from(d.max_token_ttl_s))
        .min(d.expires_at_ms / 1000)
        .min(subject_exp);
    let sub = match &delegator {
        Delegator::Client(c) => c.to_string(),
        Delegator::Person { subject, .. } => subject.clone(),
    };
    Ok(Grant {
        client,
        audience,
        scopes,
        delegated: Some(Delegated {
            sub,
            delegator: delegator.subject().key(),
            delegation: d.delegation_id.clone(),
            act,
            max_exp,
        }),
        index: state.applied_index,
    })
}

/// A token this cluster issued, signature and issuer checked (not its expiry or revocation).
fn own_token(s: &Oauth, state: &State, token: &str) -> Option<Jws> {
    let jws = Jws::parse(token).ok()?;
    if jws.typ().is_none_or(|t| !t.eq_ignore_ascii_case("at+jwt")) {
        return None;
    }
    let key = state.keys.get(jws.kid()?)?;
    if key.kind != KeyKind::Token || !key.state.in_bundle() {
        return None;
    }
    if !jws.verify(&VerifyKey::from_spki(&key.public).ok()?) {
        return None;
    }
    let iss = jws.str_claim("iss")?;
    s.accepted_issuers.iter().any(|a| a == iss).then_some(jws)
}

/// Whether a token of ours is still good: unexpired, not revoked by id, subject or index, its
/// client still enabled.
fn active(state: &State, jws: &Jws, now_s: u64) -> bool {
    let (Some(exp), Some(jti), Some(cid)) = (
        jws.num_claim("exp"),
        jws.str_claim("jti"),
        jws.str_claim("client_id"),
    ) else {
        return false;
    };
    if exp <= now_s || state.revoked_tokens.contains_key(jti) {
        return false;
    }
    let index = jws.num_claim("authsec_index").unwrap_or(0);
    let revoked_below = |key: String| {
        state
            .revoked_subjects
            .get(&key)
            .is_some_and(|r| index < r.below_index)
    };
    let Ok(client) = ClientId::parse(cid) else {
        return false;
    };
    if revoked_below(Subject::Client(client.clone()).key()) {
        return false;
    }
    // A delegated token lives only as long as its delegation chain and its delegator.
    if let Some(d) = jws.str_claim("authsec_delegation") {
        let Ok(id) = DelegationId::parse(d) else {
            return false;
        };
        if permissions::chain(state, &id, crate::issuer::now_ms()).is_err() {
            return false;
        }
        if jws
            .str_claim("authsec_delegator")
            .is_some_and(|k| revoked_below(k.to_owned()))
        {
            return false;
        }
    }
    state.clients.get(&client).is_some_and(|c| c.enabled)
}

/// The form of a request and the client that sent it (every endpoint authenticates).
async fn read_authenticated(
    s: &Oauth,
    conn: &Conn,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    repeatable: &[&str],
) -> Result<(Form, Authenticated), Response> {
    let body = body.map_err(too_large)?;
    let form = Form::parse(headers, &body, repeatable)?;
    let caller = authenticate(s, conn, headers, &form).await?;
    Ok((form, caller))
}

/// Introspection's and revocation's request: authenticated, with a `token`.
async fn read_token_request(
    s: &Oauth,
    conn: &Conn,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Form, Authenticated, String), Response> {
    let (form, caller) = read_authenticated(s, conn, headers, body, &[]).await?;
    let token = form
        .get("token")
        .ok_or_else(|| bad_request("invalid_request", "token is required"))?
        .to_owned();
    Ok((form, caller, token))
}

fn holds(state: &State, client: &ClientId, permission: &str) -> bool {
    permissions::client_held(state, client).allows(permission)
}

pub async fn introspect(
    AxState(s): AxState<Arc<Oauth>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (_, caller, token) = match read_token_request(&s, &conn, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let token = token.as_str();
    let inactive = || json_ok(json!({ "active": false }));
    // A node whose view may miss a revocation acknowledged more than the revocation bound ago
    // does not vouch for a token (an inactive answer is always safe). The age is read before
    // the state, so it describes a view no newer than the one the answer comes from.
    let vouch = s.issuer.check_vouch();
    let state = s.view.read();
    let Some(jws) = own_token(&s, &state, token) else {
        return inactive();
    };
    if !active(&state, &jws, crate::issuer::now_ms() / 1000) {
        return inactive();
    }
    // A resource server learns only about tokens meant for it; a client about its own.
    let caller_audience = state
        .clients
        .get(&caller.client_id)
        .map(|c| c.default_audience.as_str())
        .unwrap_or("");
    let allowed = jws.str_claim("client_id") == Some(caller.client_id.as_str())
        || (!caller_audience.is_empty() && jws.audiences().contains(&caller_audience))
        || holds(&state, &caller.client_id, ADMIN_TOKENS_READ);
    if !allowed {
        return inactive();
    }
    if let Err(e) = vouch {
        return unavailable(e.to_string());
    }
    let mut out = jws.claims.clone();
    out.insert("active".into(), json!(true));
    out.insert("token_type".into(), json!("Bearer"));
    json_ok(Value::Object(out))
}

pub async fn revoke(
    AxState(s): AxState<Arc<Oauth>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (form, caller, token) = match read_token_request(&s, &conn, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let token = token.as_str();
    if let Some(hint) = form.get("token_type_hint") {
        if hint != "access_token" && hint != "refresh_token" {
            return bad_request(
                "unsupported_token_type",
                format!("token_type_hint {hint:?}: this server issues access tokens only"),
            );
        }
    }
    let target = {
        let state = s.view.read();
        let Some(jws) = own_token(&s, &state, token) else {
            // RFC 7009: an invalid or unknown token is no error.
            return json_ok(json!({}));
        };
        let own = jws.str_claim("client_id") == Some(caller.client_id.as_str());
        if !own && !holds(&state, &caller.client_id, ADMIN_TOKENS_REVOKE) {
            tracing::info!(caller = %caller.client_id, "a client asked to revoke another client's token; nothing changed");
            return json_ok(json!({}));
        }
        let (Some(jti), Some(exp)) = (jws.str_claim("jti"), jws.num_claim("exp")) else {
            return json_ok(json!({}));
        };
        if state.revoked_tokens.contains_key(jti) || exp <= crate::issuer::now_ms() / 1000 {
            return json_ok(json!({}));
        }
        RevocationTarget::Token {
            jti: jti.to_owned(),
            expires_at_ms: exp * 1000,
        }
    };
    let actor = Actor {
        principal: Principal::Named(format!("client:{}", caller.client_id)),
        via_node: s.ctx.node_id,
    };
    match s.ctx.write(actor, Command::Revoke(target)).await {
        Ok(_) => json_ok(json!({})),
        Err(status) => {
            tracing::warn!(error = %status.message(), "revoking a token failed");
            unavailable(format!(
                "the revocation could not be committed: {}",
                status.message()
            ))
        }
    }
}
