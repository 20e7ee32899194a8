//! Reads of the projections and the archive, straight from RocksDB, beside the state machine.

use authsec_domain::codec::{self, Tag};
use authsec_domain::{
    chain_next, ArchiveHead, Client, ClientId, Hash32, NodeRecord, SecurityState, State, StateMeta,
};
use sha2::{Digest, Sha256};

use crate::cf;
use crate::db::{decode_at, read_sm_meta, SmMeta, Store};
use crate::error::{printable, StoreError};
use crate::types::LogId;

/// A read-only handle for the API: projections, the archive and the status view.
#[derive(Debug, Clone)]
pub struct Reader {
    store: Store,
    /// The last status view computed: the digest scans every projection, so a status asked
    /// again at the same applied index (an election, a quiet cluster, a poller) reuses it.
    last_status: std::sync::Arc<std::sync::Mutex<Option<StatusView>>>,
}

/// What `cluster status` shows of one node's state, all taken from one consistent view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusView {
    pub applied: Option<LogId>,
    /// SHA-256 over every projection family's keys and values, in key order.
    pub digest: Hash32,
    pub head: ArchiveHead,
}

/// One archived record as stored: its chain hash and exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub sequence: u64,
    pub hash: Hash32,
    /// The record's encoding, or an [`authsec_domain::record::ElidedRecord`]'s.
    pub bytes: Vec<u8>,
}

impl StoredRecord {
    /// `Some` when retention elided this (issuance) record and only its remnant is left.
    pub fn elided(&self) -> Option<authsec_domain::record::ElidedRecord> {
        authsec_domain::record::ElidedRecord::from_bytes(&self.bytes)
    }
}

fn split_archive_value(seq_key: &[u8], v: &[u8]) -> Result<(Hash32, Vec<u8>), StoreError> {
    if v.len() < 32 + 6 {
        return Err(StoreError::Damaged {
            cf: cf::ARCHIVE,
            key: printable(seq_key),
            detail: format!(
                "value of {} bytes is too short to hold a hash and a record",
                v.len()
            ),
        });
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&v[..32]);
    Ok((hash, v[32..].to_vec()))
}

/// One archive row: its key's sequence, and the hash and bytes of its value.
fn stored_record(k: &[u8], v: &[u8]) -> Result<StoredRecord, StoreError> {
    let sequence = cf::key_u64(k).ok_or_else(|| StoreError::Damaged {
        cf: cf::ARCHIVE,
        key: printable(k),
        detail: "key is not an 8-byte sequence".into(),
    })?;
    let (hash, bytes) = split_archive_value(k, v)?;
    Ok(StoredRecord {
        sequence,
        hash,
        bytes,
    })
}

impl Reader {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            last_status: Default::default(),
        }
    }

    /// Decode every projection into a [`State`]; a value that does not decode names itself.
    pub fn load_state(&self) -> Result<State, StoreError> {
        let db = &self.store.db;
        let mut state = State::default();
        if let Some(v) = db
            .get_cf(self.store.cf(cf::PROJ_META), cf::KEY_META)
            .map_err(StoreError::rocks("read meta"))?
        {
            state.meta = codec::decode(Tag::STATE_META, &v)
                .map_err(|e| StoreError::damaged(cf::PROJ_META, cf::KEY_META, e))?;
        }
        state.security = self.security()?;
        for item in db.iterator_cf(self.store.cf(cf::PROJ_NODES), rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(StoreError::rocks("scan nodes"))?;
            let n: NodeRecord = codec::decode(Tag::NODE_RECORD, &v)
                .map_err(|e| StoreError::damaged(cf::PROJ_NODES, &k, e))?;
            state.nodes.insert(n.node_id, n);
        }
        for item in db.iterator_cf(
            self.store.cf(cf::PROJ_CLIENTS),
            rocksdb::IteratorMode::Start,
        ) {
            let (k, v) = item.map_err(StoreError::rocks("scan clients"))?;
            let c: Client = codec::decode(Tag::CLIENT, &v)
                .map_err(|e| StoreError::damaged(cf::PROJ_CLIENTS, &k, e))?;
            if c.client_id.as_str().as_bytes() != &*k {
                return Err(StoreError::Damaged {
                    cf: cf::PROJ_CLIENTS,
                    key: printable(&k),
                    detail: format!("value holds client {}", c.client_id),
                });
            }
            state.clients.insert(c.client_id.clone(), c);
        }
        for key in authsec_domain::persist::META_KEYS {
            if let Some(v) = db
                .get_cf(self.store.cf(cf::PROJ_META), key)
                .map_err(StoreError::rocks("read proj_meta"))?
            {
                state
                    .load_row(cf::PROJ_META, key, &v)
                    .map_err(|e| StoreError::damaged(cf::PROJ_META, key, e))?;
            }
        }
        for family in authsec_domain::persist::FAMILIES {
            for item in db.iterator_cf(self.store.cf(family), rocksdb::IteratorMode::Start) {
                let (k, v) = item.map_err(StoreError::rocks(format!("scan {family}")))?;
                state
                    .load_row(family, &k, &v)
                    .map_err(|e| StoreError::damaged(family, &k, e))?;
            }
        }
        state.rebuild_indexes();
        Ok(state)
    }

    /// Walk the whole archive from `start` (genesis, or the chain's head where retention
    /// pruned it): sequences without gaps, every record decodes, every chain hash recomputes.
    /// Returns the head it ends at.
    pub fn verify_archive(&self, start: ArchiveHead) -> Result<ArchiveHead, StoreError> {
        let mut head = start;
        for item in self
            .store
            .db
            .iterator_cf(self.store.cf(cf::ARCHIVE), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(StoreError::rocks("scan archive"))?;
            let seq = cf::key_u64(&k).ok_or_else(|| StoreError::Damaged {
                cf: cf::ARCHIVE,
                key: printable(&k),
                detail: "key is not an 8-byte sequence".into(),
            })?;
            if seq != head.sequence + 1 {
                return Err(StoreError::Damaged {
                    cf: cf::ARCHIVE,
                    key: printable(&k),
                    detail: format!(
                        "sequence {seq} follows {}: records are missing",
                        head.sequence
                    ),
                });
            }
            let (hash, bytes) = split_archive_value(&k, &v)?;
            // An elided issuance record keeps only its hash: the link to it cannot be
            // recomputed here (the elision record that replaced it committed to it).
            let elided = authsec_domain::record::ElidedRecord::from_bytes(&bytes).is_some();
            if !elided {
                authsec_domain::AuditRecord::from_bytes(&bytes)
                    .map_err(|e| StoreError::damaged(cf::ARCHIVE, &k, e))?;
            }
            let expect = if elided {
                hash
            } else {
                chain_next(&head.hash, &bytes)
            };
            if expect != hash {
                return Err(StoreError::Damaged {
                    cf: cf::ARCHIVE,
                    key: printable(&k),
                    detail: "chain hash does not match the record bytes".into(),
                });
            }
            head = ArchiveHead {
                sequence: seq,
                hash,
            };
        }
        Ok(head)
    }

    /// Write a backup of the replicated state to `path`: a consistent, online view in the
    /// snapshot format, with the applied index, archive head and digest it was taken at.
    pub fn backup(&self, path: &std::path::Path) -> Result<crate::snapshot::Written, StoreError> {
        crate::snapshot::write(&self.store, path, &self.store.snapshot_lock)
    }

    /// The node's data directory.
    pub fn dir(&self) -> &std::path::Path {
        self.store.dir()
    }

    /// Applied index, projection digest and archive head, from one consistent view.
    pub fn status_view(&self) -> Result<StatusView, StoreError> {
        let snap = self.store.db.snapshot();
        let meta = self.store.cf(cf::SM_META);
        let SmMeta { applied, head, .. } = read_sm_meta(|k| snap.get_cf(meta, k))?;
        if let Ok(last) = self.last_status.lock() {
            if let Some(v) = last
                .as_ref()
                .filter(|v| v.applied == applied && v.head == head)
            {
                return Ok(v.clone());
            }
        }
        let view = StatusView {
            applied,
            digest: projection_digest(&self.store, &snap)?,
            head,
        };
        if let Ok(mut last) = self.last_status.lock() {
            *last = Some(view.clone());
        }
        Ok(view)
    }

    pub fn head(&self) -> Result<ArchiveHead, StoreError> {
        let meta = self.store.cf(cf::SM_META);
        Ok(read_sm_meta(|k| self.store.db.get_cf(meta, k))?.head)
    }

    pub fn meta(&self) -> Result<StateMeta, StoreError> {
        let v = self
            .store
            .db
            .get_cf(self.store.cf(cf::PROJ_META), cf::KEY_META)
            .map_err(StoreError::rocks("read meta"))?;
        Ok(decode_at(cf::PROJ_META, cf::KEY_META, Tag::STATE_META, v)?.unwrap_or_default())
    }

    pub fn security(&self) -> Result<SecurityState, StoreError> {
        let v = self
            .store
            .db
            .get_cf(self.store.cf(cf::PROJ_META), cf::KEY_SECURITY)
            .map_err(StoreError::rocks("read security"))?;
        Ok(decode_at(cf::PROJ_META, cf::KEY_SECURITY, Tag::SECURITY_STATE, v)?.unwrap_or_default())
    }

    /// A sealed secret from the replicated `sealed_secrets` family.
    pub fn sealed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store
            .db
            .get_cf(self.store.cf(cf::SEALED_SECRETS), key)
            .map_err(StoreError::rocks("read sealed_secrets"))
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .store
            .db
            .iterator_cf(self.store.cf(cf::PROJ_NODES), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(StoreError::rocks("scan nodes"))?;
            out.push(
                codec::decode(Tag::NODE_RECORD, &v)
                    .map_err(|e| StoreError::damaged(cf::PROJ_NODES, &k, e))?,
            );
        }
        Ok(out)
    }

    pub fn client(&self, id: &ClientId) -> Result<Option<Client>, StoreError> {
        let key = id.as_str().as_bytes();
        match self
            .store
            .db
            .get_cf(self.store.cf(cf::PROJ_CLIENTS), key)
            .map_err(StoreError::rocks("read client"))?
        {
            None => Ok(None),
            Some(v) => codec::decode(Tag::CLIENT, &v)
                .map(Some)
                .map_err(|e| StoreError::damaged(cf::PROJ_CLIENTS, key, e)),
        }
    }

    /// Clients in id order, strictly after `after`, at most `limit`.
    pub fn clients(&self, after: Option<&str>, limit: usize) -> Result<Vec<Client>, StoreError> {
        let handle = self.store.cf(cf::PROJ_CLIENTS);
        let mode = match after {
            Some(a) => rocksdb::IteratorMode::From(a.as_bytes(), rocksdb::Direction::Forward),
            None => rocksdb::IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf(handle, mode) {
            let (k, v) = item.map_err(StoreError::rocks("scan clients"))?;
            if after.is_some_and(|a| a.as_bytes() == &*k) {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push(
                codec::decode(Tag::CLIENT, &v)
                    .map_err(|e| StoreError::damaged(cf::PROJ_CLIENTS, &k, e))?,
            );
        }
        Ok(out)
    }

    /// One `proj_meta` row of this crate's projections (its default when absent).
    fn meta_row<T: serde::de::DeserializeOwned + Default>(
        &self,
        key: &'static [u8],
        tag: Tag,
        what: &'static str,
    ) -> Result<T, StoreError> {
        let v = self
            .store
            .db
            .get_cf(self.store.cf(cf::PROJ_META), key)
            .map_err(StoreError::rocks(what))?;
        Ok(decode_at(cf::PROJ_META, key, tag, v)?.unwrap_or_default())
    }

    /// The identity settings (client-secret key presence, unspent agent join tokens).
    pub fn load_identity(&self) -> Result<authsec_domain::identity::IdentityMeta, StoreError> {
        self.meta_row(
            authsec_domain::persist::KEY_IDENTITY,
            Tag::IDENTITY_META,
            "read identity",
        )
    }

    /// The rotated SVID roots (empty before any rotation).
    pub fn load_roots(&self) -> Result<authsec_domain::roots::RootsMeta, StoreError> {
        self.meta_row(
            authsec_domain::persist::KEY_ROOTS_META,
            Tag::ROOTS_META,
            "read roots",
        )
    }

    /// Live admin certificates (as of their last record: filter with [`Reader::security`]'s
    /// revoked certificates and the clock).
    pub fn load_admins(&self) -> Result<authsec_domain::admins::Admins, StoreError> {
        self.meta_row(
            authsec_domain::persist::KEY_ADMINS,
            Tag::ADMINS,
            "read admins",
        )
    }

    /// The SPIFFE bundle's X.509 authorities (DER), the root that signs intermediates first.
    pub fn bundle_roots(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let bootstrap = self.security()?.root_cert;
        let roots = self.load_roots()?;
        Ok(roots
            .bundle_with(bootstrap.as_deref())
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// The highest outbox sequence of `node_id` already in the log (0: none).
    pub fn issuance_recorded(&self, node_id: u64) -> Result<u64, StoreError> {
        let key = authsec_domain::persist::KEY_ISSUANCE_META;
        let meta: authsec_domain::issuance::IssuanceMeta = match self.row(cf::PROJ_META, key)? {
            Some(v) => codec::decode(Tag::ISSUANCE_META, &v)
                .map_err(|e| StoreError::damaged(cf::PROJ_META, key, e))?,
            None => Default::default(),
        };
        Ok(meta.recorded.get(&node_id).copied().unwrap_or(0))
    }

    /// Where retention has pruned the archive to (all zeros: nothing pruned, the archive
    /// starts at sequence 1).
    pub fn pruned(&self) -> Result<authsec_domain::audit::PruneMeta, StoreError> {
        let key = authsec_domain::persist::KEY_AUDIT_PRUNED;
        match self.row(cf::PROJ_META, key)? {
            Some(v) => codec::decode(Tag::AUDIT_PRUNED, &v)
                .map_err(|e| StoreError::damaged(cf::PROJ_META, key, e)),
            None => Ok(Default::default()),
        }
    }

    /// One stored row of a projection family.
    pub fn row(&self, family: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store
            .db
            .get_cf(self.store.cf(family), key)
            .map_err(StoreError::rocks(format!("read {family}")))
    }

    /// Rows of a projection family whose keys start with `prefix`, in key order, strictly
    /// after `after` (a full key), until `keep` has accepted `limit` rows or `scan_max` rows
    /// were looked at. Returns the rows kept and the last key looked at (the next page's
    /// token when the scan stopped early).
    #[allow(clippy::type_complexity)]
    pub fn scan<T>(
        &self,
        family: &'static str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        scan_max: usize,
        mut keep: impl FnMut(&[u8], &[u8]) -> Result<Option<T>, StoreError>,
    ) -> Result<(Vec<T>, Option<Vec<u8>>), StoreError> {
        let handle = self.store.cf(family);
        let start = match after {
            Some(a) if a >= prefix => a.to_vec(),
            _ => prefix.to_vec(),
        };
        let iter = self.store.db.iterator_cf(
            handle,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        let mut last = None;
        let mut looked = 0;
        for item in iter {
            let (k, v) = item.map_err(StoreError::rocks(format!("scan {family}")))?;
            if !k.starts_with(prefix) {
                return Ok((out, None));
            }
            if after.is_some_and(|a| a == &*k) {
                continue;
            }
            if out.len() >= limit || looked >= scan_max {
                return Ok((out, last));
            }
            looked += 1;
            if let Some(t) = keep(&k, &v)? {
                out.push(t);
            }
            last = Some(k.to_vec());
        }
        Ok((out, None))
    }

    /// Archived records from `from` on, at most `limit` of them and about `max_bytes`.
    pub fn records(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let key = cf::u64_key(from.max(1));
        let iter = self.store.db.iterator_cf(
            self.store.cf(cf::ARCHIVE),
            rocksdb::IteratorMode::From(&key, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        let mut bytes_total = 0;
        for item in iter {
            if out.len() >= limit || bytes_total >= max_bytes {
                break;
            }
            let (k, v) = item.map_err(StoreError::rocks("scan archive"))?;
            let rec = stored_record(&k, &v)?;
            bytes_total += rec.bytes.len();
            out.push(rec);
        }
        Ok(out)
    }

    /// Records at or below `at`, newest first: at most `limit` of them.
    pub fn records_back(&self, at: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let key = cf::u64_key(at);
        let iter = self.store.db.iterator_cf(
            self.store.cf(cf::ARCHIVE),
            rocksdb::IteratorMode::From(&key, rocksdb::Direction::Reverse),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(StoreError::rocks("scan archive"))?;
            out.push(stored_record(&k, &v)?);
        }
        Ok(out)
    }
}

/// SHA-256 over every projection family, in order, length-prefixed: equal on every node that
/// applied the same log.
pub(crate) fn projection_digest(
    store: &Store,
    snap: &rocksdb::Snapshot<'_>,
) -> Result<[u8; 32], StoreError> {
    let mut h = Sha256::new();
    for name in cf::PROJECTIONS.iter() {
        h.update((name.len() as u32).to_le_bytes());
        h.update(name.as_bytes());
        for item in snap.iterator_cf(store.cf(name), rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(StoreError::rocks(format!("scan {name}")))?;
            h.update((k.len() as u32).to_le_bytes());
            h.update(&k);
            h.update((v.len() as u32).to_le_bytes());
            h.update(&v);
        }
    }
    Ok(h.finalize().into())
}
