//! The snapshot file: every replicated column family, streamed to and from disk in frames, so a
//! snapshot is never one buffer in memory however large the archive grows.
//!
//! Layout: `"AUTHSNAP" | version u8 | frame* | 0xFF | frames u64 LE | sha256 (32)`, where a frame
//! is `family u8 | key_len u32 LE | key | value_len u32 LE | value` and the hash covers every
//! byte before the `0xFF` end marker. Family bytes index [`cf::REPLICATED`].

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use rocksdb::WriteBatch;
use sha2::{Digest, Sha256};

use crate::cf;
use crate::db::{read_sm_meta, SmMeta, Store};
use crate::error::StoreError;
use crate::types::{LogId, StoredMembership};

const MAGIC: &[u8; 8] = b"AUTHSNAP";
const FORMAT_VERSION: u8 = 1;
const END: u8 = 0xFF;
const KEY_BYTES_MAX: u32 = 4096;
/// How much an install writes per RocksDB batch.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// What a written snapshot holds, all from the one view it was taken from.
#[derive(Debug, Clone)]
pub struct Written {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub head: authsec_domain::ArchiveHead,
    /// The projection digest at `applied`, as `cluster status` computes it.
    pub digest: [u8; 32],
    pub bytes: u64,
}

/// Write a consistent snapshot of the replicated families to `path` (fsynced).
pub fn write(
    store: &Store,
    path: &Path,
    lock: &std::sync::Mutex<()>,
) -> Result<Written, StoreError> {
    let io = |what: &'static str| StoreError::io(what, path);
    // The view is taken under the snapshot lock, so never in the middle of an installation.
    let snap = {
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        store.db.snapshot()
    };
    let meta_cf = store.cf(cf::SM_META);
    let SmMeta {
        applied,
        membership,
        head,
    } = read_sm_meta(|k| snap.get_cf(meta_cf, k))?;
    let projections = crate::reader::projection_digest(store, &snap)?;
    let file = File::create(path).map_err(io("create snapshot file"))?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    w.write_all(MAGIC).map_err(io("write snapshot"))?;
    w.write_all(&[FORMAT_VERSION])
        .map_err(io("write snapshot"))?;
    let mut frames = 0u64;
    for (family, name) in cf::REPLICATED.iter().enumerate() {
        let handle = store.cf(name);
        for item in snap.iterator_cf(handle, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(StoreError::rocks(format!("scan {name} for snapshot")))?;
            w.write_all(&[family as u8]).map_err(io("write snapshot"))?;
            w.write_all(&(k.len() as u32).to_le_bytes())
                .map_err(io("write snapshot"))?;
            w.write_all(&k).map_err(io("write snapshot"))?;
            w.write_all(&(v.len() as u32).to_le_bytes())
                .map_err(io("write snapshot"))?;
            w.write_all(&v).map_err(io("write snapshot"))?;
            frames += 1;
        }
    }
    let digest: [u8; 32] = w.hasher.clone().finalize().into();
    let mut inner = w.inner;
    inner.write_all(&[END]).map_err(io("write snapshot"))?;
    inner
        .write_all(&frames.to_le_bytes())
        .map_err(io("write snapshot"))?;
    inner.write_all(&digest).map_err(io("write snapshot"))?;
    let file = inner
        .into_inner()
        .map_err(|e| StoreError::io("flush snapshot", path)(e.into_error()))?;
    file.sync_all().map_err(io("sync snapshot"))?;
    let bytes = file.metadata().map_err(io("stat snapshot"))?.len();
    Ok(Written {
        applied,
        membership,
        head,
        digest: projections,
        bytes,
    })
}

/// Read frames from a snapshot file, checking its hash; `visit` sees every frame. Nothing is
/// trusted until the trailer's hash matches, so callers verify before they install.
fn read_frames(
    path: &Path,
    mut visit: impl FnMut(usize, Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let bad = |detail: String| StoreError::Snapshot {
        path: path.to_owned(),
        detail,
    };
    let file = File::open(path).map_err(StoreError::io("open snapshot", path))?;
    let mut r = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let mut magic = [0u8; 9];
    r.read_exact(&mut magic)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    if &magic[..8] != MAGIC || magic[8] != FORMAT_VERSION {
        return Err(bad("not an authsec snapshot of format version 1".into()));
    }
    let mut frames = 0u64;
    loop {
        let mut family = [0u8; 1];
        let before = r.hasher.clone();
        r.read_exact(&mut family)
            .map_err(|e| bad(format!("truncated after {frames} frames: {e}")))?;
        if family[0] == END {
            let mut trailer = [0u8; 40];
            r.inner
                .read_exact(&mut trailer)
                .map_err(|e| bad(format!("truncated trailer: {e}")))?;
            let count = u64::from_le_bytes(trailer[..8].try_into().unwrap_or([0; 8]));
            let digest: [u8; 32] = before.finalize().into();
            if count != frames || digest[..] != trailer[8..] {
                return Err(bad(format!(
                    "checksum or frame count mismatch (trailer says {count} frames, read {frames})"
                )));
            }
            let mut rest = [0u8; 1];
            if r.inner.read(&mut rest).map_err(|e| bad(e.to_string()))? != 0 {
                return Err(bad("bytes after the trailer".into()));
            }
            return Ok(frames);
        }
        let family = family[0] as usize;
        if family >= cf::REPLICATED.len() {
            return Err(bad(format!("unknown column family byte {family}")));
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|e| bad(format!("truncated frame: {e}")))?;
        let klen = u32::from_le_bytes(len);
        if klen > KEY_BYTES_MAX {
            return Err(bad(format!("key of {klen} bytes")));
        }
        let mut key = vec![0u8; klen as usize];
        r.read_exact(&mut key)
            .map_err(|e| bad(format!("truncated frame: {e}")))?;
        r.read_exact(&mut len)
            .map_err(|e| bad(format!("truncated frame: {e}")))?;
        let vlen = u32::from_le_bytes(len) as usize;
        if vlen > authsec_domain::limits::CODEC_BYTES_MAX + 64 {
            return Err(bad(format!("value of {vlen} bytes")));
        }
        let mut value = vec![0u8; vlen];
        r.read_exact(&mut value)
            .map_err(|e| bad(format!("truncated frame: {e}")))?;
        visit(family, key, value)?;
        frames += 1;
    }
}

/// Check a snapshot file end to end without installing it.
pub fn verify(path: &Path) -> Result<u64, StoreError> {
    read_frames(path, |_, _, _| Ok(()))
}

/// Replace every replicated family with the snapshot's content. Node-local families are never
/// touched. The caller has verified the file and recorded the installation marker, so a crash
/// half-way is finished from the same file at the next start.
pub fn install(store: &Store, path: &Path) -> Result<u64, StoreError> {
    let mut batch = WriteBatch::default();
    for name in cf::REPLICATED.iter() {
        let handle = store.cf(name);
        // Every key we write is shorter than 4 KiB, so this range covers the whole family.
        batch.delete_range_cf(handle, &[][..], &[0xFFu8; KEY_BYTES_MAX as usize + 1][..]);
    }
    store
        .db
        .write(batch)
        .map_err(StoreError::rocks("clear replicated families"))?;
    let mut batch = WriteBatch::default();
    let frames = read_frames(path, |family, key, value| {
        batch.put_cf(store.cf(cf::REPLICATED[family]), key, value);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            let full = std::mem::take(&mut batch);
            store
                .db
                .write(full)
                .map_err(StoreError::rocks("write snapshot batch"))?;
        }
        Ok(())
    })?;
    store
        .db
        .write(batch)
        .map_err(StoreError::rocks("write snapshot batch"))?;
    store
        .db
        .flush_wal(true)
        .map_err(StoreError::rocks("sync installed snapshot"))?;
    Ok(frames)
}
