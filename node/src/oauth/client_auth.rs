//! Client authentication at the token, introspection and revocation endpoints: exactly one of
//! client_secret_basic, client_secret_post, private_key_jwt (RFC 7523), a JWT-SVID assertion
//! (the OAuth SPIFFE client-authentication draft) or tls_client_auth with the SPIFFE ID of the
//! client certificate (RFC 8705). Failures are counted per client id and per source address.

use std::collections::BTreeMap;
use std::time::Instant;

use authsec_domain::keys::KeyKind;
use authsec_domain::{ClientId, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use sha2::Digest;

use super::jose::{b64url, Jws, VerifyKey};
use super::{error, invalid_client, Conn, Oauth};

pub const ASSERTION_JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const ASSERTION_JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
/// Clock skew allowed on assertion times.
const SKEW_S: u64 = 30;
/// Parameters per request, and bytes per parameter value.
const PARAMS_MAX: usize = 64;

/// A form-encoded body. Every parameter appears once (RFC 6749 section 3.2), except those
/// `repeatable` names. `Debug` shows the parameter names only: values hold client secrets,
/// assertions and tokens.
#[derive(Default)]
pub struct Form {
    one: BTreeMap<String, String>,
    many: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Form")
            .field(
                "params",
                &self.one.keys().chain(self.many.keys()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Form {
    pub fn parse(headers: &HeaderMap, body: &[u8], repeatable: &[&str]) -> Result<Self, Response> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let mut f = Form::default();
        for (n, (k, v)) in form_urlencoded::parse(body).enumerate() {
            if n >= PARAMS_MAX {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("more than {PARAMS_MAX} parameters"),
                ));
            }
            if v.is_empty() {
                continue; // RFC 6749 section 3.1: empty parameters are as if omitted
            }
            if repeatable.contains(&k.as_ref()) {
                f.many
                    .entry(k.into_owned())
                    .or_default()
                    .push(v.into_owned());
            } else if f.one.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("parameter {k} appears more than once"),
                ));
            }
        }
        Ok(f)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.one.get(k).map(String::as_str)
    }

    pub fn all(&self, k: &str) -> &[String] {
        self.many.get(k).map_or(&[], Vec::as_slice)
    }
}

/// Who called, and how they proved it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub client_id: ClientId,
    pub method: &'static str,
    /// `x5t#S256` of the client certificate, when the client authenticated with it.
    pub cert_thumbprint: Option<String>,
}

/// Why authentication failed: the reason the client is told, and the client id it claimed.
struct Failure {
    reason: String,
    claimed: Option<String>,
}

fn fail(reason: impl Into<String>, claimed: Option<&str>) -> Failure {
    Failure {
        reason: reason.into(),
        claimed: claimed.map(str::to_owned),
    }
}

fn now_s() -> u64 {
    crate::issuer::now_ms() / 1000
}

fn pct_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// How long a node that does not know a client waits to catch up with the leader's commit
/// before it says so.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// Authenticate the caller of an endpoint.
pub async fn authenticate(
    s: &Oauth,
    conn: &Conn,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Authenticated, Response> {
    let now = Instant::now();
    let addr_key = format!("addr:{}", conn.remote.ip());
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then(|| rest.trim().to_owned())
        });
    let methods = [
        basic.is_some(),
        form.get("client_secret").is_some(),
        form.get("client_assertion").is_some() || form.get("client_assertion_type").is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "use exactly one client authentication method",
        ));
    }
    let claimed = form.get("client_id");
    {
        let limiter = s.failures.lock().unwrap_or_else(|p| p.into_inner());
        let blocked = limiter
            .blocked(&addr_key, now)
            .or_else(|| claimed.and_then(|c| limiter.blocked(&format!("client:{c}"), now)));
        if let Some(wait) = blocked {
            s.ctx.auth_failures.record(
                claimed,
                conn.remote.ip(),
                "oauth",
                "refused: too many failed client authentications",
            );
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                format!("too many failed client authentications; try again in {wait} s"),
            );
            if let Ok(v) = wait.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Err(r);
        }
    }
    let mut result = attempt(s, conn, basic.as_deref(), form);
    if let Err(f) = &result {
        // A node within its freshness bound can still lag a client's registration by up to
        // the bound: one it does not know yet is looked for again once this node has applied
        // what the leader had committed (bounded), so a client registered a moment ago
        // through another node is served here too. Guessers pay a read-index round each,
        // until the limiter stops them.
        if unknown_here(s, f) && s.issuer.check_fresh().is_ok() {
            let caught_up = tokio::time::timeout(CATCH_UP, s.ctx.writer.linearize()).await;
            if matches!(caught_up, Ok(Ok(()))) {
                result = attempt(s, conn, basic.as_deref(), form);
            }
        }
    }
    result.map_err(|f| {
        let mut limiter = s.failures.lock().unwrap_or_else(|p| p.into_inner());
        limiter.failed(&addr_key, now);
        if let Some(c) = &f.claimed {
            limiter.failed(&format!("client:{c}"), now);
        }
        tracing::info!(remote = %conn.remote, client_id = ?f.claimed, reason = %f.reason, "client authentication failed");
        s.ctx
            .auth_failures
            .record(f.claimed.as_deref(), conn.remote.ip(), "oauth", &f.reason);
        invalid_client(f.reason)
    })
}

/// One authentication of the request against this node's current view.
fn attempt(
    s: &Oauth,
    conn: &Conn,
    basic: Option<&str>,
    form: &Form,
) -> Result<Authenticated, Failure> {
    let claimed = form.get("client_id");
    let state = s.view.read();
    if let Some(b) = basic {
        secret_basic(s, &state, b, claimed)
    } else if let Some(secret) = form.get("client_secret") {
        match claimed {
            None => Err(fail("client_secret_post needs client_id", None)),
            Some(id) => check_secret(s, &state, id, secret, "client_secret_post"),
        }
    } else if form.get("client_assertion_type").is_some() || form.get("client_assertion").is_some()
    {
        assertion(s, &state, form)
    } else if let Some(cert) = &conn.peer_cert {
        tls_client(&state, cert, claimed)
    } else {
        Err(fail(
            "no client authentication: use client_secret_basic, client_secret_post, private_key_jwt, a JWT-SVID or a client certificate",
            claimed,
        ))
    }
}

/// Whether a failure names a client this node's view does not hold.
fn unknown_here(s: &Oauth, f: &Failure) -> bool {
    f.claimed
        .as_deref()
        .and_then(|c| ClientId::parse(c).ok())
        .is_some_and(|id| !s.view.read().clients.contains_key(&id))
}

fn client_id(id: &str) -> Result<ClientId, Failure> {
    ClientId::parse(id).map_err(|_| fail("client_id is not a valid client id", None))
}

fn enabled(state: &State, id: &ClientId) -> Result<(), Failure> {
    match state.clients.get(id) {
        Some(c) if c.enabled => Ok(()),
        Some(_) => Err(fail(format!("client {id} is disabled"), Some(id.as_str()))),
        None => Err(fail(
            "unknown client or wrong credentials",
            Some(id.as_str()),
        )),
    }
}

fn secret_basic(
    s: &Oauth,
    state: &State,
    b64: &str,
    claimed: Option<&str>,
) -> Result<Authenticated, Failure> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| fail("the Basic credentials are not base64 of id:secret", claimed))?;
    let (id, secret) = raw
        .split_once(':')
        .ok_or_else(|| fail("the Basic credentials are not id:secret", claimed))?;
    // RFC 6749 section 2.3.1: both parts are form-urlencoded before base64.
    let (id, secret) = (
        pct_decode(id)
            .ok_or_else(|| fail("the client id is not valid percent-encoded UTF-8", None))?,
        pct_decode(secret)
            .ok_or_else(|| fail("the secret is not valid percent-encoded UTF-8", None))?,
    );
    if claimed.is_some_and(|c| c != id) {
        return Err(fail(
            "client_id differs from the Basic credentials",
            Some(&id),
        ));
    }
    check_secret(s, state, &id, &secret, "client_secret_basic")
}

fn check_secret(
    s: &Oauth,
    state: &State,
    id: &str,
    secret: &str,
    method: &'static str,
) -> Result<Authenticated, Failure> {
    let cid = client_id(id)?;
    enabled(state, &cid)?;
    let stored = state
        .client_auth
        .get(&cid)
        .and_then(|a| a.secret.as_ref())
        .ok_or_else(|| fail("unknown client or wrong credentials", Some(id)))?;
    let key = s
        .secret_key()
        .ok_or_else(|| fail("this node cannot check client secrets yet", Some(id)))?;
    if secret.len() > 512 || !key.verify(secret, stored, crate::issuer::now_ms()) {
        return Err(fail("unknown client or wrong credentials", Some(id)));
    }
    Ok(Authenticated {
        client_id: cid,
        method,
        cert_thumbprint: None,
    })
}

/// Check the times of an assertion: `exp` required and in the future, `iat` (if any) not in
/// the future, and `exp - iat` bounded.
fn check_times(s: &Oauth, jws: &Jws, claimed: Option<&str>) -> Result<u64, Failure> {
    let now = now_s();
    let exp = jws
        .num_claim("exp")
        .ok_or_else(|| fail("the assertion has no numeric exp", claimed))?;
    if exp + SKEW_S <= now {
        return Err(fail("the assertion expired", claimed));
    }
    let iat = jws.num_claim("iat").unwrap_or(now);
    if iat > now + SKEW_S {
        return Err(fail("the assertion's iat is in the future", claimed));
    }
    if let Some(nbf) = jws.num_claim("nbf") {
        if nbf > now + SKEW_S {
            return Err(fail("the assertion is not valid yet (nbf)", claimed));
        }
    }
    let max = u64::from(s.cfg.assertion_max_lifetime_s);
    if exp.saturating_sub(iat) > max {
        return Err(fail(
            format!("the assertion lives longer than {max} s (exp - iat)"),
            claimed,
        ));
    }
    Ok(exp)
}

fn assertion(s: &Oauth, state: &State, form: &Form) -> Result<Authenticated, Failure> {
    let claimed = form.get("client_id");
    let (Some(kind), Some(token)) = (
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) else {
        return Err(fail(
            "client_assertion and client_assertion_type go together",
            claimed,
        ));
    };
    let jws = Jws::parse(token).map_err(|e| fail(format!("client_assertion: {e}"), claimed))?;
    match kind {
        ASSERTION_JWT_BEARER => private_key_jwt(s, state, &jws, claimed),
        ASSERTION_JWT_SPIFFE => jwt_svid(s, state, &jws, claimed),
        other => Err(fail(
            format!("client_assertion_type {other} is not supported (use {ASSERTION_JWT_BEARER} or {ASSERTION_JWT_SPIFFE})"),
            claimed,
        )),
    }
}

fn private_key_jwt(
    s: &Oauth,
    state: &State,
    jws: &Jws,
    claimed: Option<&str>,
) -> Result<Authenticated, Failure> {
    let (Some(iss), Some(sub)) = (jws.str_claim("iss"), jws.str_claim("sub")) else {
        return Err(fail(
            "the assertion needs iss and sub (the client id)",
            claimed,
        ));
    };
    if iss != sub || claimed.is_some_and(|c| c != iss) {
        return Err(fail(
            "iss, sub and client_id must all be the client id",
            claimed,
        ));
    }
    // rfc7523bis: one string, the issuer or the token endpoint.
    match jws.claims.get("aud").and_then(|a| a.as_str()) {
        Some(a) if a == s.issuer_url || a == s.token_endpoint => {}
        _ => {
            return Err(fail(
                format!(
                    "the assertion's aud must be the string {} or {}",
                    s.issuer_url, s.token_endpoint
                ),
                Some(iss),
            ))
        }
    }
    let exp = check_times(s, jws, Some(iss))?;
    let jti = jws
        .str_claim("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| fail("the assertion needs a jti (1 to 256 bytes)", Some(iss)))?;
    let cid = client_id(iss)?;
    enabled(state, &cid)?;
    let keys = state
        .client_auth
        .get(&cid)
        .map(|a| a.public_keys.as_slice())
        .unwrap_or_default();
    let signed = keys
        .iter()
        .filter(|k| jws.kid().is_none_or(|kid| kid == k.kid))
        .filter_map(|k| VerifyKey::from_registered(&k.key).ok())
        .any(|k| jws.verify(&k));
    if !signed {
        return Err(fail(
            "the assertion's signature does not verify with any of the client's registered keys",
            Some(iss),
        ));
    }
    let fresh = s
        .replay
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .first_use(iss, jti, exp + SKEW_S, now_s());
    if !fresh {
        return Err(fail(
            "the assertion was already used (jti replayed)",
            Some(iss),
        ));
    }
    Ok(Authenticated {
        client_id: cid,
        method: "private_key_jwt",
        cert_thumbprint: None,
    })
}

/// Whether one of the trust domain's JWT-SVID authorities signed `jws`.
pub fn signed_by_jwt_authority(state: &State, jws: &Jws) -> bool {
    state
        .keys
        .values()
        .filter(|k| k.kind == KeyKind::Jwt && k.state.in_bundle())
        .filter(|k| jws.kid().is_none_or(|kid| kid == k.kid))
        .filter_map(|k| VerifyKey::from_spki(&k.public).ok())
        .any(|k| jws.verify(&k))
}

/// The client a SPIFFE ID names: the client registered with it (tls_client_auth), or the
/// client whose workload entry has it (an AI agent's, made when it was onboarded).
pub fn client_of_spiffe(state: &State, spiffe: &str) -> Option<ClientId> {
    // Both through indexes: this runs on every mTLS and JWT-SVID authentication.
    let id = authsec_domain::SpiffeId::parse(spiffe).ok()?;
    if let Some(c) = state.idx.clients_by_spiffe.get(&id).and_then(|s| s.first()) {
        return Some(c.clone());
    }
    state
        .idx
        .entries_by_spiffe
        .get(&id)?
        .iter()
        .filter_map(|e| state.entries.get(e))
        .find_map(|e| e.client_id.clone())
}

/// The client for a SPIFFE ID, checked against a claimed client id.
fn client_for_spiffe(
    state: &State,
    spiffe: &str,
    claimed: Option<&str>,
) -> Result<ClientId, Failure> {
    match (client_of_spiffe(state, spiffe), claimed) {
        (Some(id), Some(c)) if id.as_str() != c => Err(fail(
            format!("{spiffe} is registered to another client than {c}"),
            Some(c),
        )),
        (Some(id), _) => {
            enabled(state, &id)?;
            Ok(id)
        }
        (None, c) => Err(fail(format!("no client is registered for {spiffe}"), c)),
    }
}

fn jwt_svid(
    s: &Oauth,
    state: &State,
    jws: &Jws,
    claimed: Option<&str>,
) -> Result<Authenticated, Failure> {
    let sub = jws
        .str_claim("sub")
        .filter(|x| x.starts_with("spiffe://"))
        .ok_or_else(|| fail("the JWT-SVID's sub is not a SPIFFE ID", claimed))?;
    if !jws.audiences().iter().any(|a| *a == s.issuer_url) {
        return Err(fail(
            format!("the JWT-SVID's aud must include {}", s.issuer_url),
            claimed,
        ));
    }
    check_times(s, jws, claimed)?;
    if !signed_by_jwt_authority(state, jws) {
        return Err(fail(
            "the JWT-SVID does not verify with the trust domain's JWT authorities",
            claimed,
        ));
    }
    Ok(Authenticated {
        client_id: client_for_spiffe(state, sub, claimed)?,
        method: "jwt_svid",
        cert_thumbprint: None,
    })
}

fn tls_client(
    state: &State,
    cert: &rustls::pki_types::CertificateDer<'static>,
    claimed: Option<&str>,
) -> Result<Authenticated, Failure> {
    let id = authsec_raft::tls::svid_id(cert).map_err(|e| {
        fail(
            format!("the client certificate is not an SVID: {e}"),
            claimed,
        )
    })?;
    Ok(Authenticated {
        client_id: client_for_spiffe(state, id.as_str(), claimed)?,
        method: "tls_client_auth",
        cert_thumbprint: Some(b64url(&sha2::Sha256::digest(cert.as_ref()))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Result<Form, Response> {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().expect("value"),
        );
        Form::parse(&h, body.as_bytes(), &["resource"])
    }

    #[test]
    fn debug_never_shows_values() {
        let f = form("grant_type=client_credentials&client_secret=as_cs_hunter2&resource=a:b")
            .expect("form");
        let shown = format!("{f:?}");
        assert!(
            shown.contains("client_secret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn parameters_appear_once_except_repeatable_ones() {
        assert!(form("scope=a:b&scope=c:d").is_err());
        let f = form("resource=a:b&resource=c:d&scope=&x=1").expect("form");
        assert_eq!(f.all("resource"), ["a:b", "c:d"]);
        assert_eq!(f.get("scope"), None, "an empty parameter is as if omitted");
        assert_eq!(f.get("x"), Some("1"));
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/json".parse().expect("value"),
        );
        assert!(Form::parse(&h, b"{}", &[]).is_err());
    }
}
