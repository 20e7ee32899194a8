//! The Raft state machine (openraft `RaftStateMachine`): decides and applies stamped proposals,
//! archives their events in the hash chain, and keeps file-backed snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use authsec_domain::codec::{self, Tag};
use authsec_domain::record::{elision_digest, ElidedRecord};
use authsec_domain::{
    apply_proposal, chain_next, decide, Applied, ArchiveHead, AuditRecord, BatchOutcome, Command,
    ProjectionKey, Rejection, SecurityState, State,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::watch;

use crate::cf;
use crate::db::{read_sm_meta, SmMeta, Store};
use crate::error::StoreError;
use crate::snapshot;
use crate::types::{Entry, LogId, StorageError, StoredMembership, TypeConfig};

/// The record type retention's shorter bound applies to.
const ISSUED: &str = "credential.issued";

/// The remnant that replaces an issuance record when it is elided.
fn elided_of(r: &AuditRecord) -> ElidedRecord {
    let node_id = match &r.event {
        authsec_domain::Event::IssuanceBatchRecorded { node_id, .. }
        | authsec_domain::Event::IssuancesRecorded { node_id, .. } => *node_id,
        _ => 0,
    };
    ElidedRecord {
        time_ms: r.time_ms,
        log_index: r.log_index,
        node_id,
    }
}

fn write_state(s: &RwLock<State>) -> std::sync::RwLockWriteGuard<'_, State> {
    // A panic while applying stops the node; the state is reloaded from storage on restart.
    s.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_state(s: &RwLock<State>) -> std::sync::RwLockReadGuard<'_, State> {
    s.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A read-only handle on the applied projections. Entries are visible once applied (they are
/// committed on a majority by then), possibly a moment before the node's own batch reaches
/// RocksDB; a restart re-applies them.
#[derive(Clone)]
pub struct StateView(Arc<RwLock<State>>);

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateView")
    }
}

impl StateView {
    /// Hold the guard briefly: the state machine waits for it to apply the next entries.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        read_state(&self.0)
    }
}

/// The replicated state machine of one node.
pub struct StateMachine {
    store: Store,
    /// The projections in memory, shared read-only with issuance (see [`StateView`]).
    state: Arc<RwLock<State>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    head: ArchiveHead,
    head_tx: watch::Sender<ArchiveHead>,
    /// The cluster's security projection (revocations, root), published when it changes so
    /// the TLS layer follows it without reading storage on every applied entry.
    security_tx: watch::Sender<SecurityState>,
    /// Serializes changes to the snapshot folder (builds run beside applies).
    snapshot_lock: Arc<Mutex<()>>,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
    /// A planted defect for the chaos checkers' own tests (debug builds only): the first
    /// client registration whose archive sequence is at least this one is neither archived
    /// nor projected here (once; the planted state is not persisted).
    drop_record: Option<u64>,
    /// A planted defect (debug builds only): revocations are archived but never applied to
    /// this node's projections.
    skip_revocations: bool,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &self.applied)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// The snapshot currently kept, recorded in `snapshots/current`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CurrentSnapshot {
    meta: crate::types::SnapshotMeta,
    file: String,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(StoreError::io("write", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(StoreError::io("rename", path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(StoreError::io("sync directory", dir))?;
    }
    Ok(())
}

fn read_current(store: &Store) -> Result<Option<CurrentSnapshot>, StoreError> {
    let path = store.snapshot_dir.join("current");
    match std::fs::read(&path) {
        Ok(bytes) => codec::decode(cf::TAG_SNAPSHOT_META, &bytes)
            .map(Some)
            .map_err(|e| StoreError::Snapshot {
                path,
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", path)(e)),
    }
}

/// Make `file` the current snapshot and delete the files of older ones.
fn set_current(store: &Store, current: &CurrentSnapshot) -> Result<(), StoreError> {
    write_atomically(
        &store.snapshot_dir.join("current"),
        &codec::encode(cf::TAG_SNAPSHOT_META, current),
    )?;
    if let Ok(dir) = std::fs::read_dir(&store.snapshot_dir) {
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".snap") && name != current.file {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
    Ok(())
}

fn snapshot_file_name(id: &str) -> String {
    format!("snap-{id}.snap")
}

impl StateMachine {
    /// Plant a defect: the first client registration whose record sequence is at least
    /// `sequence` is neither archived nor projected on this node. A client registration, so
    /// the dropped record is always an acknowledged write whatever the nodes' own key events
    /// interleave. Only for proving the chaos checkers; absent from release builds.
    #[cfg(debug_assertions)]
    pub fn plant_drop_record(&mut self, sequence: u64) {
        tracing::error!(
            sequence,
            "PLANTED BUG: this node will drop one archive record"
        );
        self.drop_record = Some(sequence);
    }

    /// Plant a defect: revocations are decided and archived as on every node, but this node's
    /// projections never see them, so its introspection and revocation stream keep honouring
    /// revoked credentials. Only for proving the chaos checkers; absent from release builds.
    #[cfg(debug_assertions)]
    pub fn plant_skip_revocations(&mut self) {
        tracing::error!("PLANTED BUG: this node will not apply revocations");
        self.skip_revocations = true;
    }

    /// Open the state machine: finish an interrupted snapshot installation, then load and check
    /// every projection and the whole archive chain. Any damage stops the node here, naming it.
    pub fn open(store: Store, head_tx: watch::Sender<ArchiveHead>) -> Result<Self, StoreError> {
        // Leftovers of builds and transfers a crash interrupted.
        if let Ok(dir) = std::fs::read_dir(&store.snapshot_dir) {
            for f in dir.flatten() {
                if f.file_name().to_string_lossy().ends_with(".part") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let local = store.cf(cf::LOCAL_META);
        if let Some(v) = store
            .db
            .get_cf(local, cf::KEY_INSTALLING)
            .map_err(StoreError::rocks("read install marker"))?
        {
            let current: CurrentSnapshot = codec::decode(cf::TAG_SNAPSHOT_META, &v)
                .map_err(|e| StoreError::damaged(cf::LOCAL_META, cf::KEY_INSTALLING, e))?;
            let path = store.snapshot_dir.join(&current.file);
            tracing::warn!(snapshot = %path.display(), "finishing a snapshot installation interrupted by a crash");
            snapshot::verify(&path)?;
            snapshot::install(&store, &path)?;
            set_current(&store, &current)?;
            store
                .db
                .delete_cf(local, cf::KEY_INSTALLING)
                .map_err(StoreError::rocks("clear install marker"))?;
        }

        let meta = store.cf(cf::SM_META);
        let SmMeta {
            applied,
            membership,
            head,
        } = read_sm_meta(|k| store.db.get_cf(meta, k))?;
        let reader = crate::reader::Reader::new(store.clone());
        let mut state = reader.load_state()?;
        state.applied_index = applied.map_or(0, |l| l.index);
        let pruned = state.audit_pruned;
        let verified = reader.verify_archive(ArchiveHead {
            sequence: pruned.through_sequence,
            hash: if pruned.through_sequence == 0 {
                authsec_domain::record::GENESIS_HASH
            } else {
                pruned.hash
            },
        })?;
        if verified != head {
            return Err(StoreError::Damaged {
                cf: cf::ARCHIVE,
                key: format!("sequence {}", head.sequence),
                detail: format!(
                    "archive ends at sequence {} with hash {}, but the recorded head is sequence {} with hash {}",
                    verified.sequence,
                    hex::encode(verified.hash),
                    head.sequence,
                    hex::encode(head.hash)
                ),
            });
        }
        head_tx.send_replace(head);
        let snapshot_lock = store.snapshot_lock.clone();
        let (security_tx, _) = watch::channel(state.security.clone());
        Ok(Self {
            store,
            state: Arc::new(RwLock::new(state)),
            applied,
            membership,
            head,
            head_tx,
            security_tx,
            snapshot_lock,
            receiving: None,
            drop_record: None,
            skip_revocations: false,
        })
    }

    /// The projections as this node has applied them, for issuance: read without a storage
    /// round trip, never written outside the state machine.
    pub fn view(&self) -> StateView {
        StateView(self.state.clone())
    }

    /// The chain's hash at `sequence`, from this apply call's records or the archive.
    fn chain_hash_at(
        &self,
        sequence: u64,
        written: &HashMap<u64, [u8; 32]>,
    ) -> Result<[u8; 32], String> {
        if sequence == 0 || sequence > self.head.sequence {
            return Err(format!(
                "sequence {sequence} is not in the chain (its head is at {})",
                self.head.sequence
            ));
        }
        if sequence == self.head.sequence {
            return Ok(self.head.hash);
        }
        if let Some(h) = written.get(&sequence) {
            return Ok(*h);
        }
        let row = self
            .store
            .db
            .get_cf(self.store.cf(cf::ARCHIVE), cf::u64_key(sequence))
            .map_err(|e| format!("reading the archive at {sequence} failed: {e}"))?;
        match row {
            Some(v) if v.len() >= 32 => {
                let mut h = [0u8; 32];
                h.copy_from_slice(&v[..32]);
                Ok(h)
            }
            _ => Err(format!("sequence {sequence} is not in this node's archive")),
        }
    }

    /// The checkpoint held by record `record`: the sequence it covers and its hash. From this
    /// apply call's checkpoints or the archive (the same on every node, so the answer is too).
    fn checkpoint_at(
        &self,
        record: u64,
        written: &HashMap<u64, (u64, [u8; 32])>,
    ) -> Result<(u64, [u8; 32]), String> {
        if let Some(c) = written.get(&record) {
            return Ok(*c);
        }
        if record == 0 || record > self.head.sequence {
            return Err(format!(
                "record {record} is not in the chain (its head is at {})",
                self.head.sequence
            ));
        }
        let row = self
            .store
            .db
            .get_cf(self.store.cf(cf::ARCHIVE), cf::u64_key(record))
            .map_err(|e| format!("reading the archive at {record} failed: {e}"))?
            .filter(|v| v.len() > 32)
            .ok_or_else(|| format!("record {record} is not in this node's archive"))?;
        match AuditRecord::from_bytes(&row[32..]).map(|r| r.event) {
            Ok(authsec_domain::Event::CheckpointRecorded { checkpoint }) => {
                Ok((checkpoint.sequence, checkpoint.head_hash))
            }
            Ok(_) => Err(format!("record {record} is not a checkpoint")),
            Err(e) => Err(format!("record {record} does not decode: {e}")),
        }
    }

    /// The `credential.issued` records in `from..=through` not already elided: sequence,
    /// hash, and the remnant that replaces each. From the archive and from this apply call's own
    /// records (not in RocksDB yet), so the answer does not depend on how entries were batched.
    fn issuance_records(
        &self,
        from: u64,
        through: u64,
        written: &BTreeMap<u64, ([u8; 32], ElidedRecord)>,
    ) -> Result<Vec<(u64, [u8; 32], ElidedRecord)>, String> {
        let mut out = Vec::new();
        let key = cf::u64_key(from);
        let iter = self.store.db.iterator_cf(
            self.store.cf(cf::ARCHIVE),
            rocksdb::IteratorMode::From(&key, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| format!("scanning the archive failed: {e}"))?;
            let seq = cf::key_u64(&k).ok_or("an archive key is not a sequence")?;
            if seq > through {
                break;
            }
            if v.len() < 32 || ElidedRecord::from_bytes(&v[32..]).is_some() {
                continue;
            }
            let r = AuditRecord::from_bytes(&v[32..])
                .map_err(|e| format!("record {seq} does not decode: {e}"))?;
            if r.kind == ISSUED {
                let mut h = [0u8; 32];
                h.copy_from_slice(&v[..32]);
                out.push((seq, h, elided_of(&r)));
            }
        }
        out.extend(
            written
                .range(from..=through)
                .map(|(seq, (h, remnant))| (*seq, *h, *remnant)),
        );
        out.sort_by_key(|r| r.0);
        Ok(out)
    }

    pub fn head(&self) -> ArchiveHead {
        self.head
    }

    /// The security projection as it is applied: changes with every revocation, root
    /// installation and join-token event (and with an installed snapshot).
    pub fn watch_security(&self) -> watch::Receiver<SecurityState> {
        self.security_tx.subscribe()
    }

    fn write_projection(&self, state: &State, batch: &mut WriteBatch, key: &ProjectionKey) {
        match key {
            ProjectionKey::Meta => batch.put_cf(
                self.store.cf(cf::PROJ_META),
                cf::KEY_META,
                codec::encode(Tag::STATE_META, &state.meta),
            ),
            ProjectionKey::Security => batch.put_cf(
                self.store.cf(cf::PROJ_META),
                cf::KEY_SECURITY,
                codec::encode(Tag::SECURITY_STATE, &state.security),
            ),
            ProjectionKey::Node(id) => {
                let handle = self.store.cf(cf::PROJ_NODES);
                match state.nodes.get(id) {
                    Some(n) => {
                        batch.put_cf(handle, cf::u64_key(*id), codec::encode(Tag::NODE_RECORD, n))
                    }
                    None => batch.delete_cf(handle, cf::u64_key(*id)),
                }
            }
            ProjectionKey::Client(id) => {
                let handle = self.store.cf(cf::PROJ_CLIENTS);
                match state.clients.get(id) {
                    Some(c) => batch.put_cf(
                        handle,
                        id.as_str().as_bytes(),
                        codec::encode(Tag::CLIENT, c),
                    ),
                    None => batch.delete_cf(handle, id.as_str().as_bytes()),
                }
            }
            other => {
                let Some(row) = state.row(other) else {
                    unreachable!("State::row covers every key but the four above")
                };
                let handle = self.store.cf(row.family);
                match row.value {
                    Some(v) => batch.put_cf(handle, row.key, v),
                    None => batch.delete_cf(handle, row.key),
                }
            }
        }
    }

    fn reload(&mut self) -> Result<(), StoreError> {
        let (tx, store) = (self.head_tx.clone(), self.store.clone());
        let fresh = StateMachine::open(store, tx)?;
        let fresh_state = std::mem::take(&mut *write_state(&fresh.state));
        let security = fresh_state.security.clone();
        *write_state(&self.state) = fresh_state;
        self.applied = fresh.applied;
        self.membership = fresh.membership;
        self.head = fresh.head;
        self.security_tx.send_replace(security);
        Ok(())
    }
}

/// Builds snapshots from a consistent RocksDB view while applies go on.
#[derive(Debug)]
pub struct SnapshotBuilder {
    store: Store,
    lock: Arc<Mutex<()>>,
}

pub(crate) fn build_blocking(
    store: &Store,
    lock: &Mutex<()>,
) -> Result<Snapshot<TypeConfig>, StoreError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let building = store.snapshot_dir.join(format!("building-{nanos}.part"));
    let written = snapshot::write(store, &building, lock)?;
    let (applied, membership) = (written.applied, written.membership);
    let id = match applied {
        Some(l) => format!(
            "{}-{}-{}-{nanos}",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("0-0-0-{nanos}"),
    };
    let file = snapshot_file_name(&id);
    let path = store.snapshot_dir.join(&file);
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: id,
    };
    {
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::rename(&building, &path).map_err(StoreError::io("rename snapshot", &path))?;
        let newer_exists =
            read_current(store)?.is_some_and(|c| c.meta.last_log_id > meta.last_log_id);
        if !newer_exists {
            set_current(
                store,
                &CurrentSnapshot {
                    meta: meta.clone(),
                    file,
                },
            )?;
        }
    }
    let f = std::fs::File::open(&path).map_err(StoreError::io("open snapshot", &path))?;
    tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "snapshot built");
    Ok(Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(f)),
    })
}

fn sm_write(e: StoreError) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (store, lock) = (self.store.clone(), self.lock.clone());
        tokio::task::spawn_blocking(move || build_blocking(&store, &lock))
            .await
            .map_err(snap_err)?
            .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let mut touched = BTreeSet::new();
        let mut replies = Vec::new();
        // Chain hashes of the records archived by this call, not yet in RocksDB.
        let mut written: HashMap<u64, [u8; 32]> = HashMap::new();
        // Issuance records archived by this call, for an elision in the same call.
        let mut written_issuance: BTreeMap<u64, ([u8; 32], ElidedRecord)> = BTreeMap::new();
        // Checkpoints archived by this call: record sequence -> (covered sequence, hash).
        let mut written_checkpoints: HashMap<u64, (u64, [u8; 32])> = HashMap::new();
        let archive = self.store.cf(cf::ARCHIVE);
        let shared = self.state.clone();
        let mut pruned_before = read_state(&shared).audit_pruned.through_sequence + 1;
        let mut compact_through = None;
        for entry in entries {
            let log_index = entry.log_id.index;
            self.applied = Some(entry.log_id);
            // One critical section per entry: a reader sees an entry's changes all at once,
            // together with its index, never a part of them.
            let mut state = write_state(&shared);
            let mut reply = BatchOutcome {
                log_index,
                outcomes: Vec::new(),
            };
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    batch.put_cf(
                        self.store.cf(cf::SM_META),
                        cf::KEY_MEMBERSHIP,
                        codec::encode(cf::TAG_MEMBERSHIP, &self.membership),
                    );
                }
                EntryPayload::Normal(proposals) => {
                    for p in &proposals.proposals {
                        let decided = match &p.command {
                            // The rules cannot see the archive: a checkpoint's hash is checked
                            // here, against this node's chain (the same on every node).
                            Command::RecordCheckpoint(c) => {
                                match self.chain_hash_at(c.sequence, &written) {
                                    Ok(h) if h == c.head_hash => {
                                        apply_proposal(&mut state, p, log_index)
                                    }
                                    Ok(h) => Err(Rejection::InvalidField {
                                        field: "head_hash".into(),
                                        reason: format!(
                                            "the chain's hash at sequence {} is {}, not {}",
                                            c.sequence,
                                            hex::encode(h),
                                            hex::encode(c.head_hash)
                                        ),
                                    }),
                                    Err(reason) => Err(Rejection::InvalidField {
                                        field: "sequence".into(),
                                        reason,
                                    }),
                                }
                            }
                            // Retention prunes only behind a checkpoint of exactly that
                            // sequence and hash, which only the archive can show.
                            Command::PruneAudit(pr) => {
                                match self.checkpoint_at(pr.checkpoint_record, &written_checkpoints) {
                                    Ok((seq, hash))
                                        if seq == pr.through_sequence && hash == pr.head_hash =>
                                    {
                                        apply_proposal(&mut state, p, log_index)
                                    }
                                    Ok((seq, _)) => Err(Rejection::InvalidField {
                                        field: "checkpoint_record".into(),
                                        reason: format!(
                                            "record {} is the checkpoint of sequence {seq} with another hash, not of {} with {}",
                                            pr.checkpoint_record,
                                            pr.through_sequence,
                                            hex::encode(pr.head_hash)
                                        ),
                                    }),
                                    Err(reason) => Err(Rejection::InvalidField {
                                        field: "checkpoint_record".into(),
                                        reason,
                                    }),
                                }
                            }
                            // An elision the rules refuse (a span too wide, a range not past
                            // what was pruned and elided) is refused before its range is
                            // scanned: the rules bound the scan.
                            Command::ElideIssuances(_) | Command::ElideIssuanceParts(_)
                                if decide(
                                    &state,
                                    p,
                                    state.meta.clock_ms.max(p.stamp.time_ms),
                                    log_index,
                                )
                                .is_err() =>
                            {
                                apply_proposal(&mut state, p, log_index)
                            }
                            // Eliding issuance records: each part's count and digest (one
                            // part for the single-digest form) must be this archive's, and the
                            // remnants replace the records in the same batch.
                            Command::ElideIssuances(_) | Command::ElideIssuanceParts(_) => {
                                let (from, through, parts, field) = match &p.command {
                                    Command::ElideIssuances(el) => (
                                        el.from_sequence,
                                        el.through_sequence,
                                        vec![(
                                            el.from_sequence,
                                            el.through_sequence,
                                            el.count,
                                            el.digest,
                                        )],
                                        "digest",
                                    ),
                                    Command::ElideIssuanceParts(el) => (
                                        el.from_sequence,
                                        el.through_sequence,
                                        el.ranges().map(|(f, t, n, d)| (f, t, n, *d)).collect(),
                                        "parts",
                                    ),
                                    _ => unreachable!("matched above"),
                                };
                                match self.issuance_records(from, through, &written_issuance) {
                                    Ok(found) => {
                                        let wrong = parts.iter().find_map(|&(from, through, n, d)| {
                                            // `found` is in sequence order.
                                            let lo = found.partition_point(|r| r.0 < from);
                                            let hi = found.partition_point(|r| r.0 <= through);
                                            let (count, digest) = elision_digest(
                                                found[lo..hi.max(lo)].iter().map(|(seq, h, _)| (*seq, h)),
                                            );
                                            ((count, digest) != (n, d)).then(|| {
                                                format!(
                                                    "records {from} to {through} hold {count} issuance record(s) with digest {}, not {n} with {}",
                                                    hex::encode(digest),
                                                    hex::encode(d)
                                                )
                                            })
                                        });
                                        match wrong {
                                            Some(reason) => Err(Rejection::InvalidField {
                                                field: field.into(),
                                                reason,
                                            }),
                                            None => {
                                                let applied =
                                                    apply_proposal(&mut state, p, log_index);
                                                if applied.is_ok() {
                                                    for (seq, h, remnant) in found {
                                                        let mut value = h.to_vec();
                                                        value
                                                            .extend_from_slice(&remnant.to_bytes());
                                                        batch.put_cf(
                                                            archive,
                                                            cf::u64_key(seq),
                                                            value,
                                                        );
                                                    }
                                                }
                                                applied
                                            }
                                        }
                                    }
                                    Err(reason) => Err(Rejection::InvalidField {
                                        field: "from_sequence".into(),
                                        reason,
                                    }),
                                }
                            }
                            // The planted defect: decided on a copy, so the events are archived
                            // while this node's projections stay as they were.
                            Command::Revoke(_) if self.skip_revocations => {
                                let mut scratch = state.clone();
                                apply_proposal(&mut scratch, p, log_index)
                            }
                            _ => apply_proposal(&mut state, p, log_index),
                        };
                        let outcome = decided.map(|(events, time_ms)| {
                            touched.insert(ProjectionKey::Meta);
                            // Secret material goes to its own family, in the same batch,
                            // and never into an event or the archive.
                            if let Some((key, sealed)) = p.command.sealed_material() {
                                batch.put_cf(self.store.cf(cf::SEALED_SECRETS), &key, sealed);
                            }
                            let first = self.head.sequence + 1;
                            let mut generated = None;
                            for event in events {
                                if let (
                                    Command::RegisterClient(r),
                                    authsec_domain::Event::ClientRegistered { client },
                                ) = (&p.command, &event)
                                {
                                    if r.client_id.is_none() {
                                        generated = Some(client.client_id.clone());
                                    }
                                }
                                let dropped =
                                    matches!(event, authsec_domain::Event::ClientRegistered { .. })
                                        && self
                                            .drop_record
                                            .is_some_and(|n| self.head.sequence + 1 >= n);
                                if dropped {
                                    self.drop_record = None;
                                }
                                if !dropped {
                                    touched.insert(event.touches());
                                    touched.extend(event.also_touches());
                                    touched.extend(event.more_touches());
                                }
                                let pruned_from = match &event {
                                    authsec_domain::Event::AuditPruned { prune, .. } => {
                                        Some((pruned_before, prune.through_sequence))
                                    }
                                    _ => None,
                                };
                                let checkpoint = match &event {
                                    authsec_domain::Event::CheckpointRecorded { checkpoint } => {
                                        Some((checkpoint.sequence, checkpoint.head_hash))
                                    }
                                    _ => None,
                                };
                                let record = AuditRecord {
                                    sequence: self.head.sequence + 1,
                                    log_index,
                                    time_ms,
                                    actor: p.actor.clone(),
                                    kind: event.kind().to_owned(),
                                    subject: event.subject(),
                                    event,
                                };
                                let bytes = record.to_bytes();
                                let hash = chain_next(&self.head.hash, &bytes);
                                let mut value = Vec::with_capacity(32 + bytes.len());
                                value.extend_from_slice(&hash);
                                value.extend_from_slice(&bytes);
                                if !dropped {
                                    batch.put_cf(archive, cf::u64_key(record.sequence), value);
                                }
                                written.insert(record.sequence, hash);
                                if let Some(c) = checkpoint {
                                    written_checkpoints.insert(record.sequence, c);
                                }
                                if record.kind == ISSUED {
                                    written_issuance
                                        .insert(record.sequence, (hash, elided_of(&record)));
                                }
                                // Retention: the records it covers leave the archive in this
                                // same batch (a range deletion, after the puts above, so it
                                // also takes any of them this batch wrote).
                                if let Some((from, through)) = pruned_from {
                                    batch.delete_range_cf(
                                        archive,
                                        cf::u64_key(from),
                                        cf::u64_key(through + 1),
                                    );
                                    pruned_before = through + 1;
                                    compact_through = Some(through);
                                }
                                self.head = ArchiveHead {
                                    sequence: record.sequence,
                                    hash,
                                };
                            }
                            let sequences = (self.head.sequence >= first)
                                .then_some((first, self.head.sequence));
                            Applied {
                                sequences,
                                generated_client_id: generated,
                            }
                        });
                        reply.outcomes.push(outcome);
                    }
                }
            }
            state.applied_index = log_index;
            drop(state);
            replies.push(reply);
        }
        let security = {
            let state = read_state(&self.state);
            for key in &touched {
                self.write_projection(&state, &mut batch, key);
            }
            touched
                .contains(&ProjectionKey::Security)
                .then(|| state.security.clone())
        };
        let meta = self.store.cf(cf::SM_META);
        batch.put_cf(
            meta,
            cf::KEY_APPLIED,
            codec::encode(cf::TAG_LOG_ID, &self.applied),
        );
        batch.put_cf(
            meta,
            cf::KEY_HEAD,
            codec::encode(Tag::ARCHIVE_HEAD, &self.head),
        );
        // Not synced on its own: the entries were synced in the same WAL when appended, and a
        // restart re-applies committed entries past the persisted applied index.
        self.store
            .db
            .write_opt(batch, &WriteOptions::default())
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.head_tx.send_replace(self.head);
        if let Some(security) = security {
            self.security_tx.send_replace(security);
        }
        if let Some(through) = compact_through {
            // Give the pruned records' space back now rather than at some later compaction;
            // off the apply path, since it rewrites files.
            let store = self.store.clone();
            std::thread::spawn(move || {
                store.db.compact_range_cf(
                    store.cf(cf::ARCHIVE),
                    None::<&[u8]>,
                    Some(&cf::u64_key(through + 1)[..]),
                );
                tracing::info!(through, "pruned audit records compacted away");
            });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            lock: self.snapshot_lock.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self
            .store
            .snapshot_dir
            .join(format!("receiving-{nanos}.part"));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        if let Some(old) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &crate::types::SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let src = (*snapshot).into_std().await;
        let file = snapshot_file_name(&meta.snapshot_id);
        let path = self.store.snapshot_dir.join(&file);
        if let Some(recv) = self.receiving.take() {
            // Only its handle is needed from here on; the name can go.
            let _ = std::fs::remove_file(recv);
        }
        let store = self.store.clone();
        let lock = self.snapshot_lock.clone();
        let current = CurrentSnapshot {
            meta: meta.clone(),
            file,
        };
        let install = move || -> Result<u64, StoreError> {
            let mut src = src;
            // Held from the copy to the new pointer, so a build finishing meanwhile can neither
            // delete the file nor take a view of half-installed families.
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            {
                use std::io::Seek;
                src.sync_all()
                    .map_err(StoreError::io("sync received snapshot", &path))?;
                src.seek(std::io::SeekFrom::Start(0))
                    .map_err(StoreError::io("read received snapshot", &path))?;
                // Copy into our own file (the handle may be any file), fsynced with its folder.
                let mut dst = std::fs::File::create(&path)
                    .map_err(StoreError::io("create snapshot", &path))?;
                std::io::copy(&mut src, &mut dst)
                    .map_err(StoreError::io("copy snapshot", &path))?;
                dst.sync_all()
                    .map_err(StoreError::io("sync snapshot", &path))?;
                std::fs::File::open(&store.snapshot_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(StoreError::io(
                        "sync snapshot directory",
                        &store.snapshot_dir,
                    ))?;
            }
            snapshot::verify(&path)?;
            let local = store.cf(cf::LOCAL_META);
            let mut o = WriteOptions::default();
            o.set_sync(true);
            store
                .db
                .put_cf_opt(
                    local,
                    cf::KEY_INSTALLING,
                    codec::encode(cf::TAG_SNAPSHOT_META, &current),
                    &o,
                )
                .map_err(StoreError::rocks("write install marker"))?;
            let frames = snapshot::install(&store, &path)?;
            set_current(&store, &current)?;
            store
                .db
                .delete_cf_opt(local, cf::KEY_INSTALLING, &o)
                .map_err(StoreError::rocks("clear install marker"))?;
            Ok(frames)
        };
        let frames = tokio::task::spawn_blocking(install)
            .await
            .map_err(snap_err)?
            .map_err(sm_write)?;
        self.reload().map_err(sm_write)?;
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_log_id = ?meta.last_log_id,
            frames,
            archive_head = self.head.sequence,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let (store, lock) = (self.store.clone(), self.snapshot_lock.clone());
        // Pointer and file are read under the lock, so a build cannot delete the file between.
        let found = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some(current) = read_current(&store)? else {
                return Ok(None);
            };
            let path = store.snapshot_dir.join(&current.file);
            let f = std::fs::File::open(&path).map_err(StoreError::io("open snapshot", &path))?;
            Ok(Some((current.meta, f)))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(found.map(|(meta, f)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use authsec_domain::command::RegisterClient;
    use authsec_domain::{Actor, Batch, ClientKind, Principal, Proposal, Stamp};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::reader::Reader;

    fn register(i: u8) -> Proposal {
        Proposal {
            stamp: Stamp {
                time_ms: 1_000 + u64::from(i),
                seed: [i; 16],
            },
            actor: Actor {
                principal: Principal::Anonymous,
                via_node: 1,
            },
            command: Command::RegisterClient(RegisterClient {
                client_id: None,
                kind: ClientKind::Service,
                display_name: format!("client {i}"),
                description: String::new(),
                owner: String::new(),
                allowed_scopes: BTreeSet::new(),
                default_scopes: BTreeSet::new(),
                default_audience: "aud".into(),
            }),
        }
    }

    /// Readers see an entry's changes all at once, together with its index: never part of an
    /// entry, never an index ahead of (or behind) the changes. Credentials carry this index,
    /// and revocation "below index R" relies on it. Reopening keeps it.
    #[tokio::test]
    async fn the_state_and_its_applied_index_move_together() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::open(dir.path()).expect("open");
        let (tx, _rx) = watch::channel(ArchiveHead::default());
        let mut sm = StateMachine::open(store.clone(), tx).expect("sm");
        let view = sm.view();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (view, stop) = (view.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let st = view.read();
                    assert_eq!(
                        st.clients.len() as u64,
                        5 * st.applied_index,
                        "a reader saw part of an entry, or an index without its changes"
                    );
                    seen = seen.max(st.applied_index);
                }
                seen
            })
        };
        for index in 1..=40u64 {
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Batch {
                    proposals: (0..5).map(|k| register((index * 5 + k) as u8)).collect(),
                }),
            };
            sm.apply([entry]).await.expect("apply");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().expect("reader") <= 40);
        assert_eq!(view.read().applied_index, 40);
        assert_eq!(view.read().clients.len(), 200);
        drop(sm);
        let (tx, _rx) = watch::channel(ArchiveHead::default());
        let sm = StateMachine::open(store, tx).expect("reopen");
        assert_eq!(sm.view().read().applied_index, 40);
    }

    /// A crash half-way through installing a snapshot leaves the marker and partial data; the
    /// next open finishes the installation from the kept file and ends in the leader's state.
    #[tokio::test]
    async fn interrupted_snapshot_install_is_finished_at_open() {
        let dir_a = tempfile::tempdir().expect("temp dir");
        let store_a = crate::open(dir_a.path()).expect("open a");
        let (tx, _rx) = watch::channel(ArchiveHead::default());
        let mut sm_a = StateMachine::open(store_a.clone(), tx).expect("sm a");
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Batch {
                proposals: (0..20).map(register).collect(),
            }),
        };
        let out = sm_a.apply([entry]).await.expect("apply");
        assert_eq!(out[0].outcomes.len(), 20);
        let snap = sm_a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        let want = Reader::new(store_a.clone())
            .status_view()
            .expect("status a");
        assert_eq!(want.head.sequence, 20);

        let dir_b = tempfile::tempdir().expect("temp dir");
        let store_b = crate::open(dir_b.path()).expect("open b");
        let file = snapshot_file_name(&snap.meta.snapshot_id);
        let src = store_a
            .snapshot_dir
            .join(snapshot_file_name(&snap.meta.snapshot_id));
        std::fs::copy(&src, store_b.snapshot_dir.join(&file)).expect("copy snapshot");
        // The state a crash leaves: the marker, and part of the data.
        store_b
            .db
            .put_cf(
                store_b.cf(cf::LOCAL_META),
                cf::KEY_INSTALLING,
                codec::encode(
                    cf::TAG_SNAPSHOT_META,
                    &CurrentSnapshot {
                        meta: snap.meta.clone(),
                        file: file.clone(),
                    },
                ),
            )
            .expect("marker");
        store_b
            .db
            .put_cf(store_b.cf(cf::ARCHIVE), cf::u64_key(7), b"partial")
            .expect("partial");
        drop(store_b);

        let store_b = crate::open(dir_b.path()).expect("reopen b");
        let (tx, _rx) = watch::channel(ArchiveHead::default());
        let sm_b = StateMachine::open(store_b.clone(), tx).expect("open finishes the installation");
        assert_eq!(sm_b.head(), want.head);
        let got = Reader::new(store_b.clone())
            .status_view()
            .expect("status b");
        assert_eq!(
            got, want,
            "same applied index, digest and head as the snapshot's source"
        );
        assert!(
            store_b
                .db
                .get_cf(store_b.cf(cf::LOCAL_META), cf::KEY_INSTALLING)
                .expect("read")
                .is_none(),
            "marker cleared"
        );
    }
}
