//! The openraft type configuration. It lives here, below `raft`, because the storage traits are
//! generic over it (ARCHITECTURE.md records this).

use authsec_domain::{Batch, BatchOutcome};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// authsec's Raft types: a log entry carries a [`Batch`] of stamped proposals (group commit)
    /// and answers with one outcome per proposal. Snapshots are files, never one buffer.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
