//! Opening the node's RocksDB and checking it before anything is served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use authsec_domain::codec;
use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use crate::cf;
use crate::error::StoreError;
use authsec_domain::codec::Tag;
use authsec_domain::ArchiveHead;
use serde::de::DeserializeOwned;

use crate::types::{Entry, LogId, StoredMembership, Vote};

/// The node's open database and the folder its snapshots live in.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
    pub(crate) dir: PathBuf,
    pub(crate) snapshot_dir: PathBuf,
    /// Held while a snapshot view is taken and while one is installed, so no view is ever
    /// of half-installed families (snapshot builds and backups share it).
    pub(crate) snapshot_lock: Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Open (creating if needed) the store under `dir`: `dir/db` for RocksDB, `dir/snapshots`.
pub fn open(dir: &Path) -> Result<Store, StoreError> {
    let db_dir = dir.join("db");
    let snapshot_dir = dir.join("snapshots");
    std::fs::create_dir_all(&db_dir).map_err(StoreError::io("create data directory", &db_dir))?;
    std::fs::create_dir_all(&snapshot_dir)
        .map_err(StoreError::io("create snapshot directory", &snapshot_dir))?;

    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Bounded memory: a few small write buffers per family.
    opts.set_write_buffer_size(16 << 20);
    opts.set_max_write_buffer_number(3);
    opts.set_keep_log_file_num(4);
    opts.set_max_log_file_size(8 << 20);
    let cfs = cf::ALL.iter().map(|name| {
        let mut o = Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        o.set_write_buffer_size(8 << 20);
        ColumnFamilyDescriptor::new(*name, o)
    });
    let db = DB::open_cf_descriptors(&opts, &db_dir, cfs)
        .map_err(StoreError::rocks(format!("open {}", db_dir.display())))?;
    Ok(Store {
        db: Arc::new(db),
        dir: dir.to_owned(),
        snapshot_dir,
        snapshot_lock: Arc::new(std::sync::Mutex::new(())),
    })
}

impl Store {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is opened with the database"))
    }

    /// Decode every Raft log entry and the Raft metadata, so a damaged log stops the node at
    /// start with a clear error instead of failing later inside openraft.
    pub fn verify_raft_log(&self) -> Result<u64, StoreError> {
        let meta = self.cf(cf::RAFT_META);
        if let Some(v) = self
            .db
            .get_cf(meta, cf::KEY_VOTE)
            .map_err(StoreError::rocks("read vote"))?
        {
            codec::decode::<Vote>(cf::TAG_VOTE, &v)
                .map_err(|e| StoreError::damaged(cf::RAFT_META, cf::KEY_VOTE, e))?;
        }
        for key in [cf::KEY_COMMITTED, cf::KEY_LAST_PURGED] {
            if let Some(v) = self
                .db
                .get_cf(meta, key)
                .map_err(StoreError::rocks("read raft metadata"))?
            {
                codec::decode::<Option<LogId>>(cf::TAG_LOG_ID, &v)
                    .map_err(|e| StoreError::damaged(cf::RAFT_META, key, e))?;
            }
        }
        let mut n = 0u64;
        let mut prev: Option<u64> = None;
        for item in self
            .db
            .iterator_cf(self.cf(cf::RAFT_LOG), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(StoreError::rocks("scan raft log"))?;
            let index = cf::key_u64(&k).ok_or_else(|| StoreError::Damaged {
                cf: cf::RAFT_LOG,
                key: crate::error::printable(&k),
                detail: "key is not an 8-byte index".into(),
            })?;
            let entry: Entry = codec::decode(cf::TAG_ENTRY, &v)
                .map_err(|e| StoreError::damaged(cf::RAFT_LOG, &k, e))?;
            if entry.log_id.index != index {
                return Err(StoreError::Damaged {
                    cf: cf::RAFT_LOG,
                    key: crate::error::printable(&k),
                    detail: format!("entry holds index {}", entry.log_id.index),
                });
            }
            if let Some(p) = prev {
                if index != p + 1 {
                    return Err(StoreError::Damaged {
                        cf: cf::RAFT_LOG,
                        key: crate::error::printable(&k),
                        detail: format!("hole in the log after index {p}"),
                    });
                }
            }
            prev = Some(index);
            n += 1;
        }
        Ok(n)
    }
}

/// Decode a value read from `family`/`key` under `tag`; `None` when absent. Damage names the
/// family and key.
pub(crate) fn decode_at<T: DeserializeOwned>(
    family: &'static str,
    key: &[u8],
    tag: Tag,
    value: Option<Vec<u8>>,
) -> Result<Option<T>, StoreError> {
    value
        .map(|v| codec::decode(tag, &v).map_err(|e| StoreError::damaged(family, key, e)))
        .transpose()
}

/// The state machine's metadata, as one consistent read.
#[derive(Debug, Clone, Default)]
pub(crate) struct SmMeta {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub head: ArchiveHead,
}

/// Read [`SmMeta`] through `get` (the live DB or a RocksDB snapshot of it).
pub(crate) fn read_sm_meta(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<SmMeta, StoreError> {
    let read =
        |key: &'static [u8]| get(key).map_err(StoreError::rocks("read state-machine metadata"));
    Ok(SmMeta {
        applied: decode_at::<Option<LogId>>(
            cf::SM_META,
            cf::KEY_APPLIED,
            cf::TAG_LOG_ID,
            read(cf::KEY_APPLIED)?,
        )?
        .flatten(),
        membership: decode_at(
            cf::SM_META,
            cf::KEY_MEMBERSHIP,
            cf::TAG_MEMBERSHIP,
            read(cf::KEY_MEMBERSHIP)?,
        )?
        .unwrap_or_default(),
        head: decode_at(
            cf::SM_META,
            cf::KEY_HEAD,
            Tag::ARCHIVE_HEAD,
            read(cf::KEY_HEAD)?,
        )?
        .unwrap_or_default(),
    })
}
