//! The Raft log store (openraft `RaftLogStorage`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use authsec_domain::codec;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};
use rocksdb::{WriteBatch, WriteOptions};

use crate::cf;
use crate::db::Store;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Reads and writes the Raft log and Raft metadata. Cheap to clone; all clones share the DB.
#[derive(Debug, Clone)]
pub struct LogStore {
    store: Store,
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn get_log_id(&self, key: &[u8]) -> Result<Option<LogId>, StorageError> {
        let v = self
            .store
            .db
            .get_cf(self.store.cf(cf::RAFT_META), key)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        match v {
            None => Ok(None),
            Some(v) => codec::decode::<Option<LogId>>(cf::TAG_LOG_ID, &v)
                .map_err(|e| StorageIOError::read_logs(&e).into()),
        }
    }

    fn put_meta(&self, key: &[u8], value: Vec<u8>, sync: bool) -> Result<(), rocksdb::Error> {
        let opts = if sync {
            synced()
        } else {
            WriteOptions::default()
        };
        self.store
            .db
            .put_cf_opt(self.store.cf(cf::RAFT_META), key, value, &opts)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.store.cf(cf::RAFT_LOG);
        let key = cf::u64_key(start);
        let iter = self.store.db.iterator_cf(
            cf,
            rocksdb::IteratorMode::From(&key, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let Some(index) = cf::key_u64(&k) else { break };
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = codec::decode(cf::TAG_ENTRY, &v)
                .map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.get_log_id(cf::KEY_LAST_PURGED)?;
        let mut iter = self
            .store
            .db
            .iterator_cf(self.store.cf(cf::RAFT_LOG), rocksdb::IteratorMode::End);
        let last = match iter.next() {
            None => last_purged,
            Some(item) => {
                let (_, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: Entry =
                    codec::decode(cf::TAG_ENTRY, &v).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(cf::KEY_VOTE, codec::encode(cf::TAG_VOTE, vote), true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let v = self
            .store
            .db
            .get_cf(self.store.cf(cf::RAFT_META), cf::KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?;
        match v {
            None => Ok(None),
            Some(v) => codec::decode(cf::TAG_VOTE, &v)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(&e).into()),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: after a crash openraft re-learns the committed index from the leader; the
        // value only lets a restarted node re-apply what it already knew was committed.
        self.put_meta(
            cf::KEY_COMMITTED,
            codec::encode(cf::TAG_LOG_ID, &committed),
            false,
        )
        .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.get_log_id(cf::KEY_COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = self.store.cf(cf::RAFT_LOG);
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(
                cf,
                cf::u64_key(entry.log_id.index),
                codec::encode(cf::TAG_ENTRY, &entry),
            );
        }
        // One synced write for every entry of this append: the group commit. openraft is told
        // the entries are flushed only after the WAL is on disk.
        let res = self.store.db.write_opt(batch, &synced());
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.store.cf(cf::RAFT_LOG);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, cf::u64_key(log_id.index), cf::u64_key(u64::MAX));
        batch.delete_cf(cf, cf::u64_key(u64::MAX));
        self.store
            .db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.store.cf(cf::RAFT_LOG);
        let mut batch = WriteBatch::default();
        // The purge mark goes first in the same batch, so there is never a gap it does not cover.
        batch.put_cf(
            self.store.cf(cf::RAFT_META),
            cf::KEY_LAST_PURGED,
            codec::encode(cf::TAG_LOG_ID, &Some(log_id)),
        );
        batch.delete_range_cf(
            cf,
            cf::u64_key(0),
            cf::u64_key(log_id.index.saturating_add(1)),
        );
        self.store
            .db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
