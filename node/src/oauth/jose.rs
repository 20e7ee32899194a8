//! The little of JOSE the authorization server needs: compact JWS parsing, public keys from
//! JWKs, PEM and SubjectPublicKeyInfo, and signature checks. Algorithms are fixed per key
//! (RFC 8725): a key answers the one `alg` it is for, and `none` or HMAC never verify.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::Engine;
use serde_json::{Map, Value};
use x509_parser::prelude::FromDer;

/// The longest compact JWS accepted (assertions, subject and actor tokens, introspected ones).
pub const JWS_BYTES_MAX: usize = 16 * 1024;

const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoseError {
    #[error("not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("the JWS is larger than {JWS_BYTES_MAX} bytes")]
    TooLarge,
    #[error("unsupported key: {0}")]
    Key(String),
}

pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// A parsed, not yet verified compact JWS.
#[derive(Debug, Clone)]
pub struct Jws {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

impl Jws {
    pub fn parse(token: &str) -> Result<Self, JoseError> {
        if token.len() > JWS_BYTES_MAX {
            return Err(JoseError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoseError::Malformed("expected three dot-separated parts"));
        };
        let json = |part: &str, what: &'static str| -> Result<Map<String, Value>, JoseError> {
            let bytes = unb64(part).ok_or(JoseError::Malformed(what))?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(JoseError::Malformed(what)),
            }
        };
        Ok(Self {
            header: json(h, "the header is not base64url JSON")?,
            claims: json(c, "the payload is not base64url JSON")?,
            signing_input: format!("{h}.{c}"),
            signature: unb64(s).ok_or(JoseError::Malformed("the signature is not base64url"))?,
        })
    }

    pub fn alg(&self) -> &str {
        self.header.get("alg").and_then(Value::as_str).unwrap_or("")
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    pub fn typ(&self) -> Option<&str> {
        self.header.get("typ").and_then(Value::as_str)
    }

    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    pub fn num_claim(&self, name: &str) -> Option<u64> {
        self.claims.get(name).and_then(Value::as_u64)
    }

    /// `aud` as a list (a string is a list of one).
    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `key` signed this JWS with the algorithm the header names, which must be the
    /// key's own.
    pub fn verify(&self, key: &VerifyKey) -> bool {
        self.alg() == key.alg() && key.verify(self.signing_input.as_bytes(), &self.signature)
    }
}

/// A public key a JWS may be checked with, bound to its one algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyKey {
    /// Uncompressed P-256 point.
    Es256(Vec<u8>),
    /// Ed25519 public key.
    EdDsa(Vec<u8>),
    /// PKCS#1 RSAPublicKey DER; RS256.
    Rs256(Vec<u8>),
}

impl VerifyKey {
    pub fn alg(&self) -> &'static str {
        match self {
            VerifyKey::Es256(_) => "ES256",
            VerifyKey::EdDsa(_) => "EdDSA",
            VerifyKey::Rs256(_) => "RS256",
        }
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            VerifyKey::Es256(p) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p).verify(msg, sig)
            }
            VerifyKey::EdDsa(p) => UnparsedPublicKey::new(&signature::ED25519, p).verify(msg, sig),
            VerifyKey::Rs256(p) => {
                UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, p).verify(msg, sig)
            }
        }
        .is_ok()
    }

    /// From a SubjectPublicKeyInfo (DER).
    pub fn from_spki(der: &[u8]) -> Result<Self, JoseError> {
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| JoseError::Key(format!("SubjectPublicKeyInfo: {e}")))?;
        let data = spki.subject_public_key.data.to_vec();
        let alg = spki.algorithm.algorithm.to_id_string();
        match alg.as_str() {
            OID_EC => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                if curve.as_deref() != Some(OID_P256) || data.len() != 65 {
                    return Err(JoseError::Key("EC keys must be on P-256".into()));
                }
                Ok(VerifyKey::Es256(data))
            }
            OID_ED25519 if data.len() == 32 => Ok(VerifyKey::EdDsa(data)),
            OID_RSA => Ok(VerifyKey::Rs256(data)),
            other => Err(JoseError::Key(format!("key type {other}"))),
        }
    }

    /// From a PEM `PUBLIC KEY` block.
    pub fn from_pem(pem: &str) -> Result<Self, JoseError> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| JoseError::Key("PEM is not base64".into()))?;
        Self::from_spki(&der)
    }

    /// From a JWK (JSON object): EC P-256, OKP Ed25519 or RSA.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<Self, JoseError> {
        let s = |k: &str| jwk.get(k).and_then(Value::as_str);
        let b = |k: &str| {
            s(k).and_then(unb64)
                .ok_or_else(|| JoseError::Key(format!("JWK member {k} missing or not base64url")))
        };
        match (s("kty"), s("crv")) {
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (b("x")?, b("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(JoseError::Key("P-256 coordinates are 32 bytes".into()));
                }
                let mut p = vec![4];
                p.extend(x);
                p.extend(y);
                Ok(VerifyKey::Es256(p))
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = b("x")?;
                if x.len() != 32 {
                    return Err(JoseError::Key("Ed25519 keys are 32 bytes".into()));
                }
                Ok(VerifyKey::EdDsa(x))
            }
            (Some("RSA"), _) => {
                let (n, e) = (b("n")?, b("e")?);
                if n.len() < 256 {
                    return Err(JoseError::Key(
                        "RSA keys must have 2048 bits or more".into(),
                    ));
                }
                Ok(VerifyKey::Rs256(rsa_public_der(&n, &e)))
            }
            (kty, crv) => Err(JoseError::Key(format!(
                "JWK kty {} crv {}",
                kty.unwrap_or("?"),
                crv.unwrap_or("-")
            ))),
        }
    }

    /// From a client's registered key: a JWK (JSON) or a PEM block.
    pub fn from_registered(key: &str) -> Result<Self, JoseError> {
        let t = key.trim_start();
        if t.starts_with('{') {
            match serde_json::from_str::<Value>(t) {
                Ok(Value::Object(m)) => Self::from_jwk(&m),
                _ => Err(JoseError::Key("not a JSON JWK".into())),
            }
        } else {
            Self::from_pem(t)
        }
    }

    /// The public JWK (without `kid`, `alg`, `use`).
    pub fn to_jwk(&self) -> Value {
        match self {
            VerifyKey::Es256(p) => serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": b64url(&p[1..33]), "y": b64url(&p[33..65]),
            }),
            VerifyKey::EdDsa(x) => {
                serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": b64url(x) })
            }
            VerifyKey::Rs256(_) => serde_json::json!({ "kty": "RSA" }),
        }
    }
}

/// DER of PKCS#1 `RSAPublicKey { n, e }`.
fn rsa_public_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn int(v: &[u8]) -> Vec<u8> {
        let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        let mut body = Vec::new();
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            body.push(0);
        }
        body.extend(v);
        tlv(0x02, &body)
    }
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }
    let mut seq = int(n);
    seq.extend(int(e));
    tlv(0x30, &seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn sign_es256(claims: &Value) -> (String, VerifyKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("key");
        let kp =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .expect("key");
        let input = format!(
            "{}.{}",
            b64url(br#"{"alg":"ES256"}"#),
            b64url(claims.to_string().as_bytes())
        );
        let sig = kp.sign(&rng, input.as_bytes()).expect("sign");
        (
            format!("{input}.{}", b64url(sig.as_ref())),
            VerifyKey::Es256(kp.public_key().as_ref().to_vec()),
        )
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_and_algorithm() {
        let (token, key) = sign_es256(&serde_json::json!({"sub": "c1", "aud": ["a", "b"]}));
        let jws = Jws::parse(&token).expect("parse");
        assert!(jws.verify(&key));
        assert_eq!(jws.audiences(), ["a", "b"]);
        let (_, other) = sign_es256(&serde_json::json!({}));
        assert!(!jws.verify(&other));
        // The same key through its JWK.
        let Value::Object(jwk) = key.to_jwk() else {
            panic!()
        };
        assert!(jws.verify(&VerifyKey::from_jwk(&jwk).expect("jwk")));
        // A tampered payload.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64url(br#"{"sub":"admin"}"#);
        parts[1] = &forged;
        assert!(!Jws::parse(&parts.join(".")).expect("parse").verify(&key));
    }

    #[test]
    fn an_alg_the_key_is_not_for_never_verifies() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let key = VerifyKey::EdDsa(kp.public_key().as_ref().to_vec());
        for alg in ["none", "HS256", "ES256"] {
            let input = format!(
                "{}.{}",
                b64url(format!(r#"{{"alg":"{alg}"}}"#).as_bytes()),
                b64url(b"{}")
            );
            let sig = kp.sign(input.as_bytes());
            let token = format!("{input}.{}", b64url(sig.as_ref()));
            assert!(!Jws::parse(&token).expect("parse").verify(&key), "{alg}");
        }
    }

    #[test]
    fn malformed_input_is_refused() {
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.AA", "e30.!!.AA", "W10.e30.AA"] {
            assert!(Jws::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Jws::parse(&"a".repeat(JWS_BYTES_MAX + 1)).err(),
            Some(JoseError::TooLarge)
        );
        assert!(VerifyKey::from_registered("{\"kty\":\"oct\"}").is_err());
        assert!(VerifyKey::from_registered(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
        )
        .is_err());
    }
}
