//! What the agent holds: its entries, the bundles, and an X.509-SVID per entry, published as
//! one immutable snapshot through a `watch` channel. Every Workload API stream reads the
//! snapshot and is woken when it changes, so each message carries the full state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::attestor::Needs;
use crate::keys::PrivateKey;

/// An entry the agent serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub id: String,
    pub spiffe_id: String,
    pub selectors: BTreeSet<String>,
    pub federates_with: Vec<String>,
    pub revision: u64,
}

/// An X.509-SVID with its key, minted for an entry.
#[derive(Debug, Clone)]
pub struct X509 {
    pub spiffe_id: String,
    /// Leaf first.
    pub chain: Vec<Vec<u8>>,
    pub key: PrivateKey,
    pub serial: String,
    pub expires_at: SystemTime,
    /// Half-life minus jitter: when the rotator replaces it.
    pub renew_at: SystemTime,
    /// The entry revision it was minted for: an updated entry gets a new SVID at once.
    pub revision: u64,
}

/// One trust domain's authorities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TdBundle {
    /// X.509 authorities (DER).
    pub x509: Vec<Vec<u8>>,
    /// The JWT authorities as a JWKS document (keys with `use: jwt-svid` only).
    pub jwks: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `spiffe://<td>` of our own trust domain.
    pub td_id: String,
    /// Entries by id.
    pub entries: BTreeMap<String, EntryInfo>,
    /// SVIDs by entry id.
    pub svids: BTreeMap<String, X509>,
    /// Bundles by `spiffe://<td>`: ours and the federated ones the entries name.
    pub bundles: BTreeMap<String, TdBundle>,
    /// Which selector kinds the entries use.
    pub needs: Needs,
    /// The first complete sync arrived (before it, the agent knows no entries).
    pub synced: bool,
    /// Bumped on every change of bundles, so streams can tell what to resend.
    pub bundle_version: u64,
}

impl Snapshot {
    /// The entries a caller with `selectors` matches, ordered by SPIFFE ID then entry id (the
    /// first is the default identity).
    pub fn matching(&self, selectors: &BTreeSet<String>) -> Vec<&EntryInfo> {
        let mut v: Vec<&EntryInfo> = self
            .entries
            .values()
            .filter(|e| crate::attestor::matches(&e.selectors, selectors))
            .collect();
        v.sort_by(|a, b| (&a.spiffe_id, &a.id).cmp(&(&b.spiffe_id, &b.id)));
        v
    }

    /// Our own trust domain's bundle.
    pub fn own(&self) -> Option<&TdBundle> {
        self.bundles.get(&self.td_id)
    }
}

/// A JWKS holding only the `jwt-svid` keys of a SPIFFE bundle document.
pub fn jwt_only(spiffe_bundle_json: &str) -> Vec<u8> {
    let keys: Vec<serde_json::Value> =
        serde_json::from_str::<serde_json::Value>(spiffe_bundle_json)
            .ok()
            .and_then(|v| v.get("keys").and_then(|k| k.as_array()).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|k| k.get("use").and_then(|u| u.as_str()) == Some("jwt-svid"))
            .collect();
    serde_json::json!({ "keys": keys }).to_string().into_bytes()
}
