//! Console sign-in codes and sessions: small MAC'd tokens under a key derived from the
//! cluster's client-secret key, so every node that holds it accepts a session any node opened.
//!
//! - A **sign-in code** (`authsec console login`) names the admin, the node that made it, its
//!   expiry and a nonce. Only that node accepts it, and only once (it remembers the nonces it
//!   consumed until they expire), so "one-time" holds without a consensus round.
//! - A **session** names the admin, its expiry and a nonce; the CSRF token of its forms is a
//!   MAC of that nonce under a second derived key, so it needs no server-side state either.
//!
//! Nothing here is a secret in logs: `Debug` of a token never shows it, and every comparison
//! of MACs is constant-time (`hmac::verify` here, `verify_slices_are_equal` for CSRF tokens).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Longest a token the console parses may be (a cookie or a form field).
pub const TOKEN_BYTES_MAX: usize = 1024;
/// Sign-in codes remembered as used, at most (each lives a few minutes).
const USED_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "l")]
    Login,
    #[serde(rename = "s")]
    Session,
}

/// What a token says, once its MAC verified.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "k")]
    pub kind: Kind,
    /// The admin's SPIFFE ID.
    #[serde(rename = "a")]
    pub admin: String,
    /// Expiry, unix ms.
    #[serde(rename = "e")]
    pub expires_at_ms: u64,
    /// 16 random bytes, hex.
    #[serde(rename = "n")]
    pub nonce: String,
    /// Sign-in codes: the node that made it (the only one that accepts it).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// Sign-in codes: how long the session they open lasts, in seconds.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub session_s: Option<u32>,
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claims")
            .field("kind", &self.kind)
            .field("admin", &self.admin)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the sign-in token is malformed")]
    Malformed,
    #[error("the sign-in token's signature does not verify (made by another cluster, or altered)")]
    BadMac,
    #[error("the sign-in link expired; ask for a new one with `authsec console login`")]
    Expired,
    #[error("the session expired; sign in again")]
    SessionExpired,
    #[error("this sign-in link was already used; ask for a new one with `authsec console login`")]
    Used,
    #[error("this sign-in link was made by node {0}; open it on that node (or make one here)")]
    OtherNode(u64),
    #[error("not a {0}")]
    WrongKind(&'static str),
}

/// The console's keys and the sign-in codes this node consumed.
pub struct Sessions {
    mac: hmac::Key,
    csrf: hmac::Key,
    node_id: u64,
    used: Mutex<BTreeMap<String, u64>>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Keys derived from the cluster key: one for tokens, one for CSRF tokens.
    pub fn new(cluster: &crate::secrets::SecretKey, node_id: u64) -> Self {
        Self {
            mac: cluster.derive("authsec console tokens v1"),
            csrf: cluster.derive("authsec console csrf v1"),
            node_id,
            used: Mutex::new(BTreeMap::new()),
        }
    }

    fn seal(&self, c: &Claims) -> String {
        let body = B64.encode(serde_json::to_vec(c).unwrap_or_default());
        let tag = hmac::sign(&self.mac, body.as_bytes());
        format!("v1.{body}.{}", B64.encode(tag.as_ref()))
    }

    fn open(&self, token: &str) -> Result<Claims, SessionError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(SessionError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some("v1"), Some(body), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SessionError::Malformed);
        };
        let tag = B64.decode(tag).map_err(|_| SessionError::Malformed)?;
        hmac::verify(&self.mac, body.as_bytes(), &tag).map_err(|_| SessionError::BadMac)?;
        let raw = B64.decode(body).map_err(|_| SessionError::Malformed)?;
        serde_json::from_slice(&raw).map_err(|_| SessionError::Malformed)
    }

    /// A sign-in code for `admin`, accepted by this node only, once, until `ttl_s` from now.
    pub fn login_code(&self, admin: &str, now_ms: u64, ttl_s: u32, session_s: u32) -> Claims {
        Claims {
            kind: Kind::Login,
            admin: admin.to_owned(),
            expires_at_ms: now_ms + u64::from(ttl_s) * 1000,
            nonce: nonce(),
            node: Some(self.node_id),
            session_s: Some(session_s),
        }
    }

    pub fn encode(&self, c: &Claims) -> String {
        self.seal(c)
    }

    /// What a sign-in code says, if this node would accept it now, without spending it.
    pub fn peek(&self, code: &str, now_ms: u64) -> Result<Claims, SessionError> {
        let c = self.open(code)?;
        if c.kind != Kind::Login {
            return Err(SessionError::WrongKind("sign-in code"));
        }
        if c.node != Some(self.node_id) {
            return Err(SessionError::OtherNode(c.node.unwrap_or(0)));
        }
        if now_ms >= c.expires_at_ms {
            return Err(SessionError::Expired);
        }
        if self
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&c.nonce)
        {
            return Err(SessionError::Used);
        }
        Ok(c)
    }

    /// Spend a sign-in code: the session it opens (claims and cookie value).
    pub fn redeem(&self, code: &str, now_ms: u64) -> Result<(Claims, String), SessionError> {
        let c = self.peek(code, now_ms)?;
        {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            used.retain(|_, exp| *exp > now_ms);
            if used.contains_key(&c.nonce) {
                return Err(SessionError::Used);
            }
            if used.len() >= USED_MAX {
                // Full of live codes: refuse rather than forget one (it could be replayed).
                return Err(SessionError::Used);
            }
            used.insert(c.nonce.clone(), c.expires_at_ms);
        }
        let s = Claims {
            kind: Kind::Session,
            admin: c.admin,
            expires_at_ms: now_ms + u64::from(c.session_s.unwrap_or(3600)) * 1000,
            nonce: nonce(),
            node: None,
            session_s: None,
        };
        let cookie = self.seal(&s);
        Ok((s, cookie))
    }

    /// The session a cookie value carries, if it is valid now.
    pub fn session(&self, cookie: &str, now_ms: u64) -> Result<Claims, SessionError> {
        let c = self.open(cookie)?;
        if c.kind != Kind::Session {
            return Err(SessionError::WrongKind("session"));
        }
        if now_ms >= c.expires_at_ms {
            return Err(SessionError::SessionExpired);
        }
        Ok(c)
    }

    /// The CSRF token of a session's forms.
    pub fn csrf_token(&self, session: &Claims) -> String {
        B64.encode(hmac::sign(&self.csrf, session.nonce.as_bytes()).as_ref())
    }
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source");
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(node: u64) -> Sessions {
        let key = crate::secrets::SecretKey::from_raw(&[7u8; 32]);
        Sessions::new(&key, node)
    }

    #[test]
    fn a_code_opens_one_session_on_its_node_only() {
        let (a, b) = (sessions(1), sessions(2));
        let admin = "spiffe://example.org/authsec/admin/root";
        let code = a.encode(&a.login_code(admin, 1_000, 300, 3600));
        assert_eq!(
            b.redeem(&code, 2_000).expect_err("refused"),
            SessionError::OtherNode(1)
        );
        let (s, cookie) = a.redeem(&code, 2_000).expect("first use");
        assert_eq!(s.admin, admin);
        assert_eq!(
            a.redeem(&code, 3_000).expect_err("refused"),
            SessionError::Used
        );
        // The session works on every node of the cluster (same key), until it expires.
        assert_eq!(b.session(&cookie, 4_000).expect("other node").admin, admin);
        assert_eq!(
            b.session(&cookie, 2_000 + 3_600_000).expect_err("refused"),
            SessionError::SessionExpired
        );
        // A code is not a session, nor a session a code.
        assert!(matches!(
            a.session(&code, 2_000),
            Err(SessionError::WrongKind(_))
        ));
        assert!(matches!(
            a.redeem(&cookie, 2_000),
            Err(SessionError::WrongKind(_))
        ));
    }

    #[test]
    fn expired_altered_and_foreign_tokens_are_refused() {
        let a = sessions(1);
        let admin = "spiffe://example.org/authsec/admin/ops";
        let code = a.encode(&a.login_code(admin, 1_000, 300, 60));
        assert_eq!(
            a.redeem(&code, 301_000).expect_err("refused"),
            SessionError::Expired
        );
        // Another cluster's key.
        let other = Sessions::new(&crate::secrets::SecretKey::from_raw(&[8u8; 32]), 1);
        assert_eq!(
            other.redeem(&code, 2_000).expect_err("refused"),
            SessionError::BadMac
        );
        // A body swapped for another admin's, the MAC kept.
        let forged = {
            let mut c = a.login_code("spiffe://example.org/authsec/admin/root", 1_000, 300, 60);
            c.nonce = "00".into();
            let good = a.encode(&c);
            let body = good.split('.').nth(1).unwrap_or_default().to_owned();
            let mut parts: Vec<String> = code.split('.').map(str::to_owned).collect();
            parts[1] = body;
            parts.join(".")
        };
        assert_eq!(
            a.redeem(&forged, 2_000).expect_err("refused"),
            SessionError::BadMac
        );
        for junk in ["", "v1", "v1..", "v2.a.b", "v1.!!.??", &"x".repeat(5000)] {
            assert!(a.redeem(junk, 2_000).is_err(), "{junk:?}");
            assert!(a.session(junk, 2_000).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let a = sessions(1);
        let admin = "spiffe://example.org/authsec/admin/root";
        let (s1, _) = a
            .redeem(&a.encode(&a.login_code(admin, 0, 300, 60)), 1)
            .expect("s1");
        let (s2, _) = a
            .redeem(&a.encode(&a.login_code(admin, 0, 300, 60)), 1)
            .expect("s2");
        let t1 = a.csrf_token(&s1);
        assert_eq!(t1, a.csrf_token(&s1), "stable for its session");
        assert_ne!(t1, a.csrf_token(&s2), "another session's token differs");
        assert_eq!(t1.len(), 43, "a full 256-bit MAC");
        // Another cluster's key gives another token for the same session.
        let other = Sessions::new(&crate::secrets::SecretKey::from_raw(&[9u8; 32]), 1);
        assert_ne!(t1, other.csrf_token(&s1));
    }
}
