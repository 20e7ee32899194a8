//! openraft configuration, sized for snapshots that carry the whole event archive.

use std::sync::Arc;

/// The knobs operators and tests turn.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub cluster_name: String,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log after a snapshot, so slow followers catch up without one.
    pub max_in_snapshot_log_to_keep: u64,
}

/// The default timeouts aim at failover under one second on a LAN. openraft 0.9 starts an
/// election only after the leader lease (`election_timeout_max`) plus the node's own random
/// timeout have passed since the last heartbeat, so failover takes about
/// `max + rand(min..max)`: 600-800 ms with these values (measured by the chaos suite).
///
/// openraft 0.9 also gives every AppendEntries one heartbeat interval to come back (the
/// round trip, the follower's synced append included), and retries the same one when it
/// does not: a round trip longer than `heartbeat_ms` stops replication altogether. At 50 ms,
/// links 40 ms slow each way committed nothing and stopped issuance everywhere (soak 8); at
/// 150 ms they cost nothing, and the failover time, set by the election timeouts, is the
/// same. Raise all three in proportion across a WAN, `heartbeat_ms` above the worst round
/// trip.
impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            cluster_name: "authsec".into(),
            heartbeat_ms: 150,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
        }
    }
}

/// Snapshot chunks and their timeout are far above openraft's defaults (3 MiB, 200 ms), which
/// loop forever on snapshots of tens of megabytes (openraft #634/#630).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 8 << 20;
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 30_000;
/// Entries per AppendEntries: each may hold a batch of up to 1 MiB.
pub const MAX_PAYLOAD_ENTRIES: u64 = 32;

pub fn raft_config(t: &RaftTuning) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let c = openraft::Config {
        cluster_name: t.cluster_name.clone(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: t.max_in_snapshot_log_to_keep,
        ..Default::default()
    };
    Ok(Arc::new(c.validate()?))
}
