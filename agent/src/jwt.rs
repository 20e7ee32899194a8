//! JWT-SVID validation for `ValidateJWTSVID`: ES256 (the only algorithm authsec signs
//! JWT-SVIDs with), the key found by `kid` in the bundle of the subject's trust domain, `exp`
//! in the future, the audience among `aud`.

use base64::Engine;
use serde_json::Value;

use crate::state::Snapshot;

/// Largest token accepted.
pub const JWT_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the token is not a compact JWS (three base64url parts)")]
    Malformed,
    #[error("the token is larger than {JWT_BYTES_MAX} bytes")]
    TooLarge,
    #[error("alg {0:?} is not accepted (JWT-SVIDs are ES256)")]
    Alg(String),
    #[error("the token has no kid")]
    NoKid,
    #[error("sub is missing or not a SPIFFE ID")]
    Subject,
    #[error("no bundle for trust domain {0}")]
    NoBundle(String),
    #[error("kid {0} is not in the bundle of {1}")]
    UnknownKid(String, String),
    #[error("the signature does not verify")]
    Signature,
    #[error("the token expired or has no exp")]
    Expired,
    #[error("audience {0:?} is not in the token's aud")]
    Audience(String),
}

fn b64(s: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed)
}

/// The P-256 point (`04 || x || y`) of an EC JWK.
fn point(jwk: &Value) -> Option<Vec<u8>> {
    if jwk.get("kty")?.as_str()? != "EC" || jwk.get("crv")?.as_str()? != "P-256" {
        return None;
    }
    let x = b64(jwk.get("x")?.as_str()?).ok()?;
    let y = b64(jwk.get("y")?.as_str()?).ok()?;
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let mut p = vec![4u8];
    p.extend_from_slice(&x);
    p.extend_from_slice(&y);
    Some(p)
}

/// Validate `token` for `audience` at `now_s`; the SPIFFE ID and the claims.
pub fn validate(
    snap: &Snapshot,
    token: &str,
    audience: &str,
    now_s: u64,
) -> Result<(String, serde_json::Map<String, Value>), JwtError> {
    if token.len() > JWT_BYTES_MAX {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Value = serde_json::from_slice(&b64(h)?).map_err(|_| JwtError::Malformed)?;
    let claims: Value = serde_json::from_slice(&b64(c)?).map_err(|_| JwtError::Malformed)?;
    let sig = b64(s)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "ES256" {
        return Err(JwtError::Alg(alg.to_owned()));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(JwtError::NoKid)?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(JwtError::Subject)?
        .to_owned();
    let id = authsec_domain::SpiffeId::parse(&sub).map_err(|_| JwtError::Subject)?;
    let td = format!("spiffe://{}", id.trust_domain());
    let bundle = snap
        .bundles
        .get(&td)
        .ok_or_else(|| JwtError::NoBundle(td.clone()))?;
    let jwks: Value =
        serde_json::from_slice(&bundle.jwks).map_err(|_| JwtError::NoBundle(td.clone()))?;
    let key = jwks
        .get("keys")
        .and_then(Value::as_array)
        .and_then(|ks| {
            ks.iter()
                .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
        })
        .and_then(point)
        .ok_or_else(|| JwtError::UnknownKid(kid.to_owned(), td.clone()))?;
    let input = &token[..h.len() + 1 + c.len()];
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &key,
    )
    .verify(input.as_bytes(), &sig)
    .map_err(|_| JwtError::Signature)?;
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    if exp <= now_s {
        return Err(JwtError::Expired);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(JwtError::Audience(audience.to_owned()));
    }
    let Value::Object(map) = claims else {
        return Err(JwtError::Malformed);
    };
    Ok((sub, map))
}

/// JSON claims as a protobuf `Struct`.
pub fn to_struct(map: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}
