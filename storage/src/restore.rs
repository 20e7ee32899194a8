//! Restoring a backup as the first node of a new cluster.
//!
//! The backup's replicated families are installed as they are (projections, archive, sealed
//! secrets: the digest and archive head are the backup's), and the Raft state is rewritten so
//! the node starts as the single voter of a cluster whose log begins after the backup's index:
//! the membership becomes `{node}` at the backup's log id, the log is purged up to it, and the
//! vote is this node's at the backup's term. A fresh snapshot file records the new membership,
//! so the nodes that join next receive it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use authsec_domain::codec;
use openraft::{BasicNode, Membership};
use rocksdb::WriteOptions;

use crate::cf;
use crate::db::{read_sm_meta, Store};
use crate::error::StoreError;
use crate::snapshot;
use crate::types::{LogId, StoredMembership, Vote};

/// What a restore produced.
#[derive(Debug, Clone)]
pub struct Restored {
    pub applied: LogId,
    pub head: authsec_domain::ArchiveHead,
    pub digest: [u8; 32],
}

/// Restore `backup` into the empty store `store` as node `node_id` reachable at `addr`.
pub fn restore(
    store: &Store,
    backup: &Path,
    node_id: u64,
    addr: &str,
) -> Result<Restored, StoreError> {
    let refuse = |detail: String| StoreError::Snapshot {
        path: backup.to_owned(),
        detail,
    };
    let meta = store.cf(cf::SM_META);
    let current = read_sm_meta(|k| store.db.get_cf(meta, k))?;
    let has_log = store
        .db
        .iterator_cf(store.cf(cf::RAFT_LOG), rocksdb::IteratorMode::Start)
        .next()
        .is_some();
    let has_vote = store
        .db
        .get_cf(store.cf(cf::RAFT_META), cf::KEY_VOTE)
        .map_err(StoreError::rocks("read vote"))?
        .is_some();
    if current.applied.is_some() || has_log || has_vote {
        return Err(refuse(format!(
            "{} already holds a node's data; restore into an empty data directory",
            store.dir().display()
        )));
    }
    // Checks the whole file (its hash) before anything is written.
    snapshot::verify(backup)?;
    {
        let _guard = store
            .snapshot_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        snapshot::install(store, backup)?;
    }
    let restored = read_sm_meta(|k| store.db.get_cf(meta, k))?;
    let applied = restored
        .applied
        .ok_or_else(|| refuse("the backup holds no applied entry".into()))?;

    let membership = StoredMembership::new(
        Some(applied),
        Membership::new(
            vec![BTreeSet::from([node_id])],
            BTreeMap::from([(
                node_id,
                BasicNode {
                    addr: addr.to_owned(),
                },
            )]),
        ),
    );
    let vote = Vote::new(applied.leader_id.term, node_id);
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(
        meta,
        cf::KEY_MEMBERSHIP,
        codec::encode(cf::TAG_MEMBERSHIP, &membership),
    );
    let raft_meta = store.cf(cf::RAFT_META);
    batch.put_cf(
        raft_meta,
        cf::KEY_LAST_PURGED,
        codec::encode(cf::TAG_LOG_ID, &Some(applied)),
    );
    batch.put_cf(
        raft_meta,
        cf::KEY_COMMITTED,
        codec::encode(cf::TAG_LOG_ID, &Some(applied)),
    );
    batch.put_cf(raft_meta, cf::KEY_VOTE, codec::encode(cf::TAG_VOTE, &vote));
    let mut o = WriteOptions::default();
    o.set_sync(true);
    store
        .db
        .write_opt(batch, &o)
        .map_err(StoreError::rocks("write the restored node's raft state"))?;
    let built = crate::state_machine::build_blocking(store, &store.snapshot_lock)?;
    drop(built);
    let snap = store.db.snapshot();
    let digest = crate::reader::projection_digest(store, &snap)?;
    Ok(Restored {
        applied,
        head: restored.head,
        digest,
    })
}
