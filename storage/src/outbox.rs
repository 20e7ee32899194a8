//! The node-local issuance outbox ("no audit, no credential"): every credential this node
//! issues is recorded here, synced, before the credential is returned, then proposed to the
//! log in batches and removed once committed. Never replicated, never in a snapshot.
//!
//! Keys are the node's outbox sequence (u64 BE). The next sequence is kept in `local_meta` in
//! the same synced batch as the records it numbers, so a restart never reuses a sequence, even
//! after every record was proposed and removed (the log drops a sequence it has seen).

use authsec_domain::codec::{self, Tag};
use authsec_domain::issuance::Issuance;
use rocksdb::{WriteBatch, WriteOptions};

use crate::cf;
use crate::db::{decode_at, Store};
use crate::error::StoreError;

const KEY_NEXT: &[u8] = b"outbox_next";

#[derive(Debug, Clone)]
pub struct Outbox {
    store: Store,
}

/// The first sequence of a new outbox (see [`Outbox::open`]).
fn fresh_start(last: u64) -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (ms << 20).max(last + 1).max(1)
}

impl Outbox {
    /// Open the outbox and answer the next unused sequence.
    pub fn open(store: Store) -> Result<(Self, u64), StoreError> {
        let meta = store.cf(cf::LOCAL_META);
        let kept = store
            .db
            .get_cf(meta, KEY_NEXT)
            .map_err(StoreError::rocks("read the outbox's next sequence"))?;
        let kept_raw =
            decode_at::<Option<u64>>(cf::LOCAL_META, KEY_NEXT, Tag::ISSUANCE, kept)?.flatten();
        let last = {
            let mut it = store.db.raw_iterator_cf(store.cf(cf::LOCAL_OUTBOX));
            it.seek_to_last();
            let last = it.key().and_then(cf::key_u64).unwrap_or(0);
            it.status()
                .map_err(StoreError::rocks("scan the issuance outbox"))?;
            last
        };
        let next = match kept_raw {
            Some(n) => n.max(last + 1).max(1),
            // A new outbox: this node's data is new, or was wiped and the node rejoined under
            // the same id. The log remembers the highest sequence it recorded for the node and
            // drops anything at or below it as a duplicate, so numbering from 1 again would
            // lose every issuance record until the old mark was passed. Start above any
            // sequence an earlier incarnation can have used: wall time in ms times 2^20
            // leaves room for a million credentials per millisecond between incarnations.
            None => fresh_start(last),
        };
        Ok((Self { store }, next))
    }

    /// Append records (their `seq` already set, increasing) and the next free sequence, in one
    /// synced write. When this returns, the records survive a crash.
    pub fn append(&self, records: &[Issuance], next: u64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let cf_out = self.store.cf(cf::LOCAL_OUTBOX);
        for r in records {
            batch.put_cf(cf_out, cf::u64_key(r.seq), codec::encode(Tag::ISSUANCE, r));
        }
        batch.put_cf(
            self.store.cf(cf::LOCAL_META),
            KEY_NEXT,
            codec::encode(Tag::ISSUANCE, &Some(next)),
        );
        let mut o = WriteOptions::default();
        o.set_sync(true);
        self.store
            .db
            .write_opt(batch, &o)
            .map_err(StoreError::rocks("append to the issuance outbox"))
    }

    /// The oldest records from sequence `from` on, at most `limit`. Seeking past what was
    /// already removed keeps the scan off the deletion tombstones.
    pub fn oldest(&self, from: u64, limit: usize) -> Result<Vec<Issuance>, StoreError> {
        let mut out = Vec::new();
        let mut it = self
            .store
            .db
            .raw_iterator_cf(self.store.cf(cf::LOCAL_OUTBOX));
        it.seek(cf::u64_key(from));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if out.len() >= limit {
                break;
            }
            let r: Issuance = codec::decode(Tag::ISSUANCE, v)
                .map_err(|e| StoreError::damaged(cf::LOCAL_OUTBOX, k, e))?;
            out.push(r);
            it.next();
        }
        it.status()
            .map_err(StoreError::rocks("scan the issuance outbox"))?;
        Ok(out)
    }

    /// Remove these records (they are in the log). Point deletions: a range deletion would
    /// make every later iterator fragment all of them again.
    pub fn remove(&self, seqs: impl IntoIterator<Item = u64>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let cf_out = self.store.cf(cf::LOCAL_OUTBOX);
        for s in seqs {
            batch.delete_cf(cf_out, cf::u64_key(s));
        }
        self.store
            .db
            .write_opt(batch, &WriteOptions::default())
            .map_err(StoreError::rocks("clear the issuance outbox"))
    }

    /// How many records wait to be proposed.
    pub fn len(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        let mut it = self
            .store
            .db
            .raw_iterator_cf(self.store.cf(cf::LOCAL_OUTBOX));
        it.seek_to_first();
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()
            .map_err(StoreError::rocks("scan the issuance outbox"))?;
        Ok(n)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authsec_domain::issuance::CredentialKind;

    fn rec(seq: u64) -> Issuance {
        Issuance {
            seq,
            kind: CredentialKind::AccessToken,
            id: format!("j{seq}"),
            subject: "c".into(),
            client_id: "c".into(),
            method: "client_secret_basic".into(),
            audience: vec![],
            scopes: vec![],
            delegation: None,
            actor: None,
            issued_at_ms: 0,
            expires_at_ms: 0,
            applied_index: 0,
        }
    }

    #[test]
    fn sequences_are_never_reused_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::open(dir.path()).expect("open");
        let (ob, first) = Outbox::open(store.clone()).expect("outbox");
        assert!(
            first > 1 << 40,
            "a new outbox numbers from the clock: {first}"
        );
        ob.append(&[rec(1), rec(2), rec(3)], 4).expect("append");
        assert_eq!(
            ob.oldest(0, 2)
                .expect("oldest")
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(ob.oldest(3, 9).expect("oldest").len(), 1);
        ob.remove([1, 2, 3]).expect("remove");
        assert!(ob.is_empty().expect("len"));
        drop((ob, store));
        let store = crate::open(dir.path()).expect("reopen");
        let (_, next) = Outbox::open(store).expect("outbox");
        assert_eq!(next, 4, "an emptied outbox still remembers its sequence");
    }

    /// A node wiped and rejoined under the same id starts a new outbox: its sequences must
    /// start above the old incarnation's, which the log remembers and would drop as
    /// duplicates.
    #[test]
    fn a_new_outbox_numbers_above_a_wiped_one() {
        let old = tempfile::tempdir().expect("tempdir");
        let store = crate::open(old.path()).expect("open");
        let (ob, first) = Outbox::open(store.clone()).expect("outbox");
        let used: Vec<Issuance> = (first..first + 1000).map(rec).collect();
        ob.append(&used, first + 1000).expect("append");
        drop((ob, store));
        // The rejoin comes later in time (seconds, in practice); here, the next millisecond.
        while fresh_start(0) >> 20 <= first >> 20 {
            std::thread::yield_now();
        }
        let wiped = tempfile::tempdir().expect("tempdir");
        let store = crate::open(wiped.path()).expect("open");
        let (_, again) = Outbox::open(store).expect("outbox");
        assert!(
            again > first + 1000,
            "{again} must be above {}",
            first + 1000
        );
    }
}
