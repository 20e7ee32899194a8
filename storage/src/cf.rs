//! Column families and keys.

use std::sync::LazyLock;

use authsec_domain::codec::Tag;

/// The Raft log: `index (u64 BE) -> Entry`.
pub const RAFT_LOG: &str = "raft_log";
/// Raft metadata: vote, committed, last purged.
pub const RAFT_META: &str = "raft_meta";
/// State-machine metadata: applied log id, membership, archive head.
pub const SM_META: &str = "sm_meta";
/// The event archive: `sequence (u64 BE) -> hash (32 bytes) || record bytes`.
pub const ARCHIVE: &str = "archive";
/// Projection: trust domain and replicated clock.
pub const PROJ_META: &str = "proj_meta";
/// Projection: node membership records, `node id (u64 BE) -> NodeRecord`.
pub const PROJ_NODES: &str = "proj_nodes";
/// Projection: the client registry, `client id -> Client`.
pub const PROJ_CLIENTS: &str = "proj_clients";
// The identity projections (`authsec_domain::persist` owns their rows).
pub use authsec_domain::persist::{
    FAMILY_AGENTS as PROJ_AGENTS, FAMILY_BINDINGS as PROJ_BINDINGS,
    FAMILY_CLIENT_AUTH as PROJ_CLIENT_AUTH, FAMILY_DELEGATIONS as PROJ_DELEGATIONS,
    FAMILY_ENTRIES as PROJ_ENTRIES, FAMILY_FEDERATIONS as PROJ_FEDERATIONS,
    FAMILY_KEYS as PROJ_KEYS, FAMILY_REVOCATIONS as PROJ_REVOCATIONS, FAMILY_ROLES as PROJ_ROLES,
};
/// Replicated secret material (sealed keys); never archived or exported.
pub const SEALED_SECRETS: &str = "sealed_secrets";
/// Node-local metadata (snapshot installation marker); never replicated.
pub const LOCAL_META: &str = "local_meta";
/// This node's sealed keys; never replicated.
pub const LOCAL_KEYS: &str = "local_keys";
/// This node's issuance outbox; never replicated.
pub const LOCAL_OUTBOX: &str = "local_outbox";

/// The families storage itself owns, in their fixed order.
const OWN: &[&str] = &[
    RAFT_LOG,
    RAFT_META,
    SM_META,
    ARCHIVE,
    PROJ_META,
    PROJ_NODES,
    PROJ_CLIENTS,
    SEALED_SECRETS,
    LOCAL_META,
    LOCAL_KEYS,
    LOCAL_OUTBOX,
];

/// Storage's own replicated families, then the projection rows `authsec_domain::persist` owns:
/// a new projection family is added there once and reaches every list here.
fn with_domain_families(own: &[&'static str]) -> Vec<&'static str> {
    own.iter()
        .chain(authsec_domain::persist::FAMILIES)
        .copied()
        .collect()
}

/// Every column family.
pub static ALL: LazyLock<Vec<&'static str>> = LazyLock::new(|| with_domain_families(OWN));

/// What a snapshot carries, in this order. Index in this list is the frame's family byte, so
/// families are only ever appended (the domain's after storage's own).
pub static REPLICATED: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    with_domain_families(&[
        SM_META,
        ARCHIVE,
        PROJ_META,
        PROJ_NODES,
        PROJ_CLIENTS,
        SEALED_SECRETS,
    ])
});

/// The projection families the digest covers.
pub static PROJECTIONS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| with_domain_families(&[PROJ_META, PROJ_NODES, PROJ_CLIENTS]));

pub const KEY_VOTE: &[u8] = b"vote";
pub const KEY_COMMITTED: &[u8] = b"committed";
pub const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub const KEY_APPLIED: &[u8] = b"applied";
pub const KEY_MEMBERSHIP: &[u8] = b"membership";
pub const KEY_HEAD: &[u8] = b"head";
pub const KEY_META: &[u8] = b"meta";
/// In `proj_meta`: the cluster's root, join tokens and revoked nodes.
pub const KEY_SECURITY: &[u8] = b"security";
pub const KEY_INSTALLING: &[u8] = b"installing_snapshot";

/// Storage's own codec tags.
pub const TAG_ENTRY: Tag = Tag(0x40);
pub const TAG_VOTE: Tag = Tag(0x41);
pub const TAG_LOG_ID: Tag = Tag(0x42);
pub const TAG_MEMBERSHIP: Tag = Tag(0x43);
pub const TAG_SNAPSHOT_META: Tag = Tag(0x44);

pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn key_u64(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot files name families by their place in `REPLICATED`: it only ever grows at the end.
    #[test]
    fn replicated_order_is_stable() {
        assert_eq!(
            *REPLICATED,
            [
                "sm_meta",
                "archive",
                "proj_meta",
                "proj_nodes",
                "proj_clients",
                "sealed_secrets",
                "proj_client_auth",
                "proj_entries",
                "proj_roles",
                "proj_bindings",
                "proj_delegations",
                "proj_agents",
                "proj_revocations",
                "proj_keys",
                "proj_federations",
            ]
        );
        assert!(PROJECTIONS
            .iter()
            .all(|p| REPLICATED.contains(p) && ALL.contains(p)));
        assert_eq!(
            ALL.len(),
            OWN.len() + authsec_domain::persist::FAMILIES.len()
        );
    }
}
