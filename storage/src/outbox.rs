//! The node-local issuance outbox ("no audit, no credential"): every credential this node
//! issues is recorded here, synced, before the credential is returned, then proposed to the
//! log in batches. Never replicated, never in a snapshot.
//!
//! It lives in its own files under `{data_dir}/outbox`, not in RocksDB. The sync is on every
//! credential's path, so it must cost as little as a sync can:
//! - segments are preallocated with zeros, so a write overwrites blocks the file already has
//!   and `fdatasync` flushes the data alone, never the file's size or block map;
//! - the sync flushes only this file, where a synced RocksDB write also flushes the Raft and
//!   archive writes that share its WAL;
//! - a record committed to the log is never deleted or read back from an index: a segment
//!   whose records are all in the log is dropped whole, or recycled as the next segment.
//!
//! A segment `{epoch:020}.seg` holds frames `len (u32 LE) | crc (u32 LE) | record`, where the
//! CRC-32C covers the segment's epoch, the length and the record, and the epoch is the first
//! sequence the segment was opened for. A recycled segment's old frames carry another epoch,
//! so they fail the check and end the scan like the zeros of a new one. Opening the outbox
//! reads every segment up to its first frame that does not check, and zeroes whatever the
//! newest segment holds past that point: a torn write was never acknowledged, and no later
//! write may land in front of its remains.
//!
//! Sequences only grow. A new outbox numbers from the clock (see [`fresh_start`]) because the
//! log drops, per node, every sequence at or below the highest it recorded; the newest
//! segment is never dropped, so a restart always knows where numbering stopped.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use authsec_domain::codec::{self, Tag};
use authsec_domain::issuance::Issuance;
use rocksdb::{WriteBatch, WriteOptions};

use crate::cf;
use crate::db::{decode_at, Store};
use crate::error::StoreError;

/// Bytes in one segment file.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// The largest encoded record the outbox takes (the domain bounds a record far below this).
pub const RECORD_BYTES_MAX: usize = 256 << 10;
const HEADER: usize = 8;
/// Bytes read per step when the flusher reads records back (at least one whole frame).
const READ_CHUNK: usize = 1 << 20;
const SUFFIX: &str = ".seg";
const SPARE: &str = "spare";
/// The RocksDB outbox of earlier versions: its next sequence (moved into the files at open).
const LEGACY_KEY_NEXT: &[u8] = b"outbox_next";

/// The first sequence of a new outbox: wall time in ms times 2^20, which leaves room for a
/// million credentials per millisecond between incarnations of a node wiped and rejoined
/// under the same id.
fn fresh_start(last: u64) -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (ms << 20).max(last + 1).max(1)
}

fn seg_name(epoch: u64) -> String {
    format!("{epoch:020}{SUFFIX}")
}

fn checksum(epoch: u64, record: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&(record.len() as u32).to_le_bytes());
    h.update(record);
    h.finalize()
}

fn outbox_err(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Outbox {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync the outbox directory", dir))
}

/// Write zeros over `from..to` of `f`.
fn zero(f: &File, path: &Path, from: u64, to: u64) -> Result<(), StoreError> {
    let zeros = vec![0u8; READ_CHUNK];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)
            .map_err(StoreError::io("write zeros into an outbox segment", path))?;
        at += n as u64;
    }
    Ok(())
}

/// Create `path` as a segment's worth of zeros, synced.
fn create_zeroed(path: &Path) -> Result<(), StoreError> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(StoreError::io("create an outbox segment", path))?;
    zero(&f, path, 0, SEGMENT_BYTES)?;
    f.sync_all()
        .map_err(StoreError::io("sync a new outbox segment", path))
}

/// Open a segment for writing: the file and its size.
fn open_segment(path: &Path) -> Result<(File, u64), StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(StoreError::io("open an outbox segment", path))?;
    let len = file
        .metadata()
        .map_err(StoreError::io("open an outbox segment", path))?
        .len();
    Ok((file, len))
}

/// One record, encoded and checked against the outbox's bound.
#[derive(Debug, Clone)]
pub struct Frame {
    seq: u64,
    record: Vec<u8>,
}

impl Frame {
    pub fn encode(rec: &Issuance) -> Result<Frame, StoreError> {
        let record = codec::encode(Tag::ISSUANCE, rec);
        if record.len() > RECORD_BYTES_MAX {
            return Err(StoreError::Outbox {
                path: PathBuf::new(),
                detail: format!(
                    "an issuance record of {} bytes is over the outbox's bound of {RECORD_BYTES_MAX}",
                    record.len()
                ),
            });
        }
        Ok(Frame {
            seq: rec.seq,
            record,
        })
    }

    fn len(&self) -> u64 {
        (HEADER + self.record.len()) as u64
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    epoch: u64,
    /// Bytes of synced frames.
    end: u64,
    /// The last record's sequence, 0 when the segment holds none.
    last_seq: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// Oldest first; the last one is the one being written.
    segments: Mutex<Vec<Segment>>,
    /// Taken to move or make the spare segment.
    spare: Mutex<()>,
}

impl Shared {
    fn segments(&self) -> std::sync::MutexGuard<'_, Vec<Segment>> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, epoch: u64) -> PathBuf {
        self.dir.join(seg_name(epoch))
    }
}

/// What a scan of one segment found.
struct Scanned {
    end: u64,
    last_seq: u64,
    records: Vec<Issuance>,
    /// Something other than zeros lies past `end`.
    dirty_tail: bool,
}

/// Read a segment's frames up to the first one that does not check.
fn scan(path: &Path, epoch: u64, keep: bool) -> Result<Scanned, StoreError> {
    let bytes = fs::read(path).map_err(StoreError::io("read an outbox segment", path))?;
    let mut at = 0;
    let mut last_seq = 0;
    let mut records = Vec::new();
    while at + HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let sum = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let body = at + HEADER;
        if len == 0 || len > RECORD_BYTES_MAX || body + len > bytes.len() {
            break;
        }
        let record = &bytes[body..body + len];
        if checksum(epoch, record) != sum {
            break;
        }
        let Ok(rec) = codec::decode::<Issuance>(Tag::ISSUANCE, record) else {
            break;
        };
        if rec.seq < epoch || rec.seq <= last_seq {
            break;
        }
        last_seq = rec.seq;
        if keep {
            records.push(rec);
        }
        at = body + len;
    }
    Ok(Scanned {
        end: at as u64,
        last_seq,
        records,
        dirty_tail: bytes[at..].iter().any(|b| *b != 0),
    })
}

/// The segments in `dir`, oldest first. `tidy` also removes what a crash left half-made.
fn list(dir: &Path, tidy: bool) -> Result<Vec<u64>, StoreError> {
    let mut epochs = Vec::new();
    for entry in fs::read_dir(dir).map_err(StoreError::io("list the outbox", dir))? {
        let entry = entry.map_err(StoreError::io("list the outbox", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(epoch) = name
            .strip_suffix(SUFFIX)
            .and_then(|e| e.parse::<u64>().ok())
        {
            epochs.push(epoch);
        } else if tidy && name.ends_with(".tmp") {
            // A segment or spare whose making was cut short: never used.
            let p = entry.path();
            fs::remove_file(&p).map_err(StoreError::io("remove a half-made segment", &p))?;
        }
    }
    epochs.sort_unstable();
    Ok(epochs)
}

/// The records waiting in the outbox under `data_dir`, read without changing anything (for
/// `authsec node outbox` and tests; the node must not be running).
pub fn pending(data_dir: &Path) -> Result<Vec<Issuance>, StoreError> {
    let dir = data_dir.join("outbox");
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for epoch in list(&dir, false)? {
        out.extend(scan(&dir.join(seg_name(epoch)), epoch, true)?.records);
    }
    Ok(out)
}

/// Appends records; owned by the node's one outbox writer thread.
#[derive(Debug)]
pub struct OutboxWriter {
    shared: Arc<Shared>,
    file: File,
    epoch: u64,
    end: u64,
    capacity: u64,
    buf: Vec<u8>,
    /// A write or sync failed: what reached the disk is unknown, so nothing more is
    /// acknowledged.
    failed: bool,
}

/// What a read got before it failed, or the failure if it got nothing: the cursor stops in
/// front of the failure, so the next read meets it again.
fn partial(out: Vec<Issuance>, e: StoreError) -> Result<Vec<Issuance>, StoreError> {
    if out.is_empty() {
        Err(e)
    } else {
        Ok(out)
    }
}

/// Reads records back and drops what the log has; shared by the node's flusher.
#[derive(Debug, Clone)]
pub struct OutboxLog {
    shared: Arc<Shared>,
}

/// Where the flusher has read to.
#[derive(Debug)]
pub struct Cursor {
    epoch: u64,
    offset: u64,
    /// Records at or below this sequence are already in the log: skipped.
    after: u64,
    file: Option<(u64, File)>,
    /// Reused between reads.
    buf: Vec<u8>,
}

impl Cursor {
    /// From the oldest record after `after` (the log's mark for this node).
    pub fn after(after: u64) -> Self {
        Self {
            epoch: 0,
            offset: 0,
            after,
            file: None,
            buf: Vec::new(),
        }
    }
}

/// Open (or make) the outbox of `store`'s node: the writer, the reader, and the next unused
/// sequence. Records of the RocksDB outbox of earlier versions are moved into the files.
pub fn open(store: &Store) -> Result<(OutboxWriter, OutboxLog, u64), StoreError> {
    let dir = store.dir.join("outbox");
    if !dir.exists() {
        create(store, &dir)?;
    }
    clear_legacy(store)?;

    let mut segments = Vec::new();
    let epochs = list(&dir, true)?;
    let newest = epochs.last().copied();
    for epoch in epochs {
        let path = dir.join(seg_name(epoch));
        let s = scan(&path, epoch, false)?;
        if Some(epoch) == newest && s.dirty_tail {
            // A torn write from before a crash: zero it so that no later write can leave an
            // unacknowledged record of it readable behind its own.
            let (f, len) = open_segment(&path)?;
            zero(&f, &path, s.end, len)?;
            f.sync_data()
                .map_err(StoreError::io("zero an outbox segment's torn tail", &path))?;
            tracing::warn!(segment = %path.display(), end = s.end, "zeroed an unacknowledged torn write at the end of the issuance outbox");
        }
        segments.push(Segment {
            epoch,
            end: s.end,
            last_seq: s.last_seq,
        });
    }
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        segments: Mutex::new(Vec::new()),
        spare: Mutex::new(()),
    });
    let Some(active) = segments.last().copied() else {
        // Every segment is gone (removed by hand): start above anything used before.
        let next = fresh_start(0);
        let w = OutboxWriter::new_segment(shared.clone(), next)?;
        let log = OutboxLog { shared };
        log.ensure_spare()?;
        return Ok((w, log, next));
    };
    let next = segments
        .iter()
        .map(|s| s.last_seq + 1)
        .max()
        .unwrap_or(1)
        .max(active.epoch);
    *shared.segments() = segments;
    let (file, capacity) = open_segment(&shared.path(active.epoch))?;
    let writer = OutboxWriter {
        shared: shared.clone(),
        file,
        epoch: active.epoch,
        end: active.end,
        capacity,
        buf: Vec::new(),
        failed: false,
    };
    let log = OutboxLog { shared };
    log.ensure_spare()?;
    Ok((writer, log, next))
}

/// Make the outbox directory, with the legacy RocksDB outbox's records in it, all or nothing.
fn create(store: &Store, dir: &Path) -> Result<(), StoreError> {
    let (legacy, legacy_next) = legacy(store)?;
    let first = match (legacy.first(), legacy_next) {
        (Some(r), _) => r.seq,
        (None, Some(next)) => next.max(1),
        (None, None) => fresh_start(0),
    };
    let tmp = store.dir.join("outbox.tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(StoreError::io("remove a half-made outbox", &tmp))?;
    }
    fs::create_dir(&tmp).map_err(StoreError::io("create the outbox", &tmp))?;
    let path = tmp.join(seg_name(first));
    create_zeroed(&path)?;
    if !legacy.is_empty() {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open an outbox segment", &path))?;
        let mut buf = Vec::new();
        let mut last = 0;
        for r in &legacy {
            if r.seq <= last {
                continue;
            }
            last = r.seq;
            let frame = Frame::encode(r)?;
            put_frame(&mut buf, first, &frame);
        }
        if buf.len() as u64 > SEGMENT_BYTES {
            return Err(outbox_err(
                &path,
                "the earlier outbox holds more than one segment of records",
            ));
        }
        f.write_all_at(&buf, 0)
            .map_err(StoreError::io("move the earlier outbox", &path))?;
        f.sync_data()
            .map_err(StoreError::io("move the earlier outbox", &path))?;
        tracing::info!(
            records = legacy.len(),
            "moved the issuance outbox out of RocksDB into its own files"
        );
    }
    sync_dir(&tmp)?;
    fs::rename(&tmp, dir).map_err(StoreError::io("create the outbox", dir))?;
    sync_dir(&store.dir)
}

/// The records and next sequence of the RocksDB outbox of earlier versions.
fn legacy(store: &Store) -> Result<(Vec<Issuance>, Option<u64>), StoreError> {
    let kept = store
        .db
        .get_cf(store.cf(cf::LOCAL_META), LEGACY_KEY_NEXT)
        .map_err(StoreError::rocks("read the earlier outbox's next sequence"))?;
    let next =
        decode_at::<Option<u64>>(cf::LOCAL_META, LEGACY_KEY_NEXT, Tag::ISSUANCE, kept)?.flatten();
    let mut out = Vec::new();
    let mut it = store.db.raw_iterator_cf(store.cf(cf::LOCAL_OUTBOX));
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let r: Issuance = codec::decode(Tag::ISSUANCE, v)
            .map_err(|e| StoreError::damaged(cf::LOCAL_OUTBOX, k, e))?;
        out.push(r);
        it.next();
    }
    it.status()
        .map_err(StoreError::rocks("scan the earlier issuance outbox"))?;
    Ok((out, next))
}

/// Empty the RocksDB outbox of earlier versions (its records are in the files).
fn clear_legacy(store: &Store) -> Result<(), StoreError> {
    let (records, next) = legacy(store)?;
    if records.is_empty() && next.is_none() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    for r in &records {
        batch.delete_cf(store.cf(cf::LOCAL_OUTBOX), cf::u64_key(r.seq));
    }
    batch.delete_cf(store.cf(cf::LOCAL_META), LEGACY_KEY_NEXT);
    let mut o = WriteOptions::default();
    o.set_sync(true);
    store
        .db
        .write_opt(batch, &o)
        .map_err(StoreError::rocks("clear the earlier issuance outbox"))
}

fn put_frame(buf: &mut Vec<u8>, epoch: u64, frame: &Frame) {
    buf.extend_from_slice(&(frame.record.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum(epoch, &frame.record).to_le_bytes());
    buf.extend_from_slice(&frame.record);
}

impl OutboxWriter {
    /// Open a new segment for records from `epoch` on, from the spare if there is one.
    fn new_segment(shared: Arc<Shared>, epoch: u64) -> Result<Self, StoreError> {
        let path = shared.path(epoch);
        {
            let _g = shared.spare.lock().unwrap_or_else(|p| p.into_inner());
            let spare = shared.dir.join(SPARE);
            if spare.exists() {
                fs::rename(&spare, &path)
                    .map_err(StoreError::io("take the spare outbox segment", &path))?;
            } else {
                let tmp = shared.dir.join(format!("{}.tmp", seg_name(epoch)));
                create_zeroed(&tmp)?;
                fs::rename(&tmp, &path)
                    .map_err(StoreError::io("create an outbox segment", &path))?;
            }
        }
        // The segment's name must be on disk before any record in it is acknowledged.
        sync_dir(&shared.dir)?;
        let (file, capacity) = open_segment(&path)?;
        shared.segments().push(Segment {
            epoch,
            end: 0,
            last_seq: 0,
        });
        Ok(Self {
            shared,
            file,
            epoch,
            end: 0,
            capacity,
            buf: Vec::with_capacity(READ_CHUNK),
            failed: false,
        })
    }

    /// Append `frames` (sequences increasing, above every earlier one) and sync. When this
    /// returns `Ok`, the records survive a crash. After a failed write or sync nothing more is
    /// accepted: what reached the disk is unknown. A failed roll-over (no room for a new
    /// segment: a full disk and no spare) is not such a failure, since it happens before any
    /// byte of the frames it was for is written; this call fails and the next one tries again,
    /// so a node whose disk fills issues again once there is room, without a restart. The
    /// frames of this call that went before a failed roll-over are synced: they stay in the
    /// outbox and are proposed like the others (a record of a credential never handed out is
    /// the safe side of "no audit, no credential").
    pub fn append(&mut self, frames: &[Frame]) -> Result<(), StoreError> {
        if self.failed {
            return Err(outbox_err(
                &self.shared.dir,
                "an earlier outbox write failed; restart the node",
            ));
        }
        let mut i = 0;
        while i < frames.len() {
            self.buf.clear();
            let start = self.end;
            let mut at = start;
            let mut last_seq = 0;
            while let Some(f) = frames.get(i) {
                if at + f.len() > self.capacity {
                    break;
                }
                put_frame(&mut self.buf, self.epoch, f);
                at += f.len();
                last_seq = f.seq;
                i += 1;
            }
            if !self.buf.is_empty() {
                let path = self.shared.path(self.epoch);
                let written = self
                    .file
                    .write_all_at(&self.buf, start)
                    .map_err(StoreError::io("write the issuance outbox", &path))
                    .and_then(|()| {
                        self.file
                            .sync_data()
                            .map_err(StoreError::io("sync the issuance outbox", &path))
                    });
                if let Err(e) = written {
                    self.failed = true;
                    return Err(e);
                }
                self.end = at;
                if let Some(s) = self.shared.segments().last_mut() {
                    s.end = at;
                    s.last_seq = last_seq;
                }
            }
            if let Some(f) = frames.get(i) {
                if self.end == 0 {
                    return Err(outbox_err(
                        &self.shared.path(self.epoch),
                        "a record does not fit in an empty segment",
                    ));
                }
                // This segment is full: the rest goes to the next one. On failure this writer
                // is unchanged (still at the end of its full segment).
                *self = Self::new_segment(self.shared.clone(), f.seq)?;
            }
        }
        Ok(())
    }
}

/// Records a read reserves room for up front (a full proposal's worth), so a read of
/// thousands does not grow its vector a dozen times.
const READ_RESERVE_MAX: usize = 4096;

impl OutboxLog {
    /// Up to `limit` synced records after `cursor`, oldest first; moves the cursor past them.
    /// One task reads and releases.
    pub fn read(&self, cursor: &mut Cursor, limit: usize) -> Result<Vec<Issuance>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(READ_RESERVE_MAX));
        let mut buf = std::mem::take(&mut cursor.buf);
        let r = self.read_into(cursor, limit, &mut out, &mut buf);
        cursor.buf = buf;
        match r {
            Ok(()) => Ok(out),
            Err(e) => partial(out, e),
        }
    }

    fn read_into(
        &self,
        cursor: &mut Cursor,
        limit: usize,
        out: &mut Vec<Issuance>,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        while out.len() < limit {
            let (seg, has_next) = {
                let segs = self.shared.segments();
                let Some(pos) = segs.iter().position(|s| s.epoch >= cursor.epoch) else {
                    break;
                };
                let seg = segs[pos];
                if seg.epoch != cursor.epoch {
                    // The cursor's segment is gone (released) or the cursor is new.
                    cursor.epoch = seg.epoch;
                    cursor.offset = 0;
                }
                (seg, pos + 1 < segs.len())
            };
            if cursor.offset >= seg.end {
                if !has_next {
                    break;
                }
                cursor.epoch = seg.epoch + 1;
                cursor.offset = 0;
                continue;
            }
            let path = self.shared.path(seg.epoch);
            if cursor.file.as_ref().map(|(e, _)| *e) != Some(seg.epoch) {
                let f =
                    File::open(&path).map_err(StoreError::io("open an outbox segment", &path))?;
                cursor.file = Some((seg.epoch, f));
            }
            let Some((_, file)) = cursor.file.as_ref() else {
                break;
            };
            let n = (seg.end - cursor.offset).min(READ_CHUNK as u64) as usize;
            buf.resize(n, 0);
            if let Err(e) = file.read_exact_at(buf, cursor.offset) {
                return Err(StoreError::io("read the issuance outbox", &path)(e));
            }
            let mut at = 0;
            let mut bad = None;
            while at + HEADER <= n && out.len() < limit {
                let len =
                    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let sum = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap_or_default());
                let body = at + HEADER;
                if body + len > n {
                    break;
                }
                let record = &buf[body..body + len];
                let rec = if len == 0 || checksum(seg.epoch, record) != sum {
                    Err(format!(
                        "the synced record at byte {} does not check",
                        cursor.offset + at as u64
                    ))
                } else {
                    codec::decode::<Issuance>(Tag::ISSUANCE, record).map_err(|e| e.to_string())
                };
                match rec {
                    Ok(rec) => {
                        if rec.seq > cursor.after {
                            cursor.after = rec.seq;
                            out.push(rec);
                        }
                        at = body + len;
                    }
                    Err(e) => {
                        bad = Some(outbox_err(&path, e));
                        break;
                    }
                }
            }
            cursor.offset += at as u64;
            if let Some(e) = bad {
                return Err(e);
            }
            if at == 0 && out.len() < limit {
                return Err(outbox_err(&path, "a record is larger than the read step"));
            }
        }
        Ok(())
    }

    /// Drop every segment, but the one being written, whose records are all at or below
    /// `seq` (in the log). The first one dropped becomes the spare if there is none.
    pub fn release_through(&self, seq: u64) -> Result<(), StoreError> {
        let gone: Vec<u64> = {
            let mut segs = self.shared.segments();
            let keep_from = segs
                .iter()
                .take(segs.len().saturating_sub(1))
                .position(|s| s.last_seq > seq)
                .unwrap_or(segs.len().saturating_sub(1));
            segs.drain(..keep_from).map(|s| s.epoch).collect()
        };
        for epoch in gone {
            let path = self.shared.path(epoch);
            let _g = self.shared.spare.lock().unwrap_or_else(|p| p.into_inner());
            let spare = self.shared.dir.join(SPARE);
            if spare.exists() {
                fs::remove_file(&path)
                    .map_err(StoreError::io("remove a logged outbox segment", &path))?;
            } else {
                fs::rename(&path, &spare)
                    .map_err(StoreError::io("recycle a logged outbox segment", &path))?;
            }
        }
        Ok(())
    }

    /// Make the spare segment if there is none, so the writer never waits for one.
    pub fn ensure_spare(&self) -> Result<(), StoreError> {
        let spare = self.shared.dir.join(SPARE);
        if spare.exists() {
            return Ok(());
        }
        let tmp = self.shared.dir.join(format!("{SPARE}.tmp"));
        create_zeroed(&tmp)?;
        let _g = self.shared.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.exists() {
            fs::remove_file(&tmp).map_err(StoreError::io("remove a spare segment", &tmp))
        } else {
            fs::rename(&tmp, &spare).map_err(StoreError::io("make the spare segment", &spare))
        }
    }

    /// Segments on disk, the one being written included.
    pub fn segments(&self) -> usize {
        self.shared.segments().len()
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

    fn frames(seqs: std::ops::Range<u64>) -> Vec<Frame> {
        seqs.map(|s| Frame::encode(&rec(s)).expect("encode"))
            .collect()
    }

    /// A new store and its outbox.
    fn fresh() -> (tempfile::TempDir, Store, OutboxWriter, OutboxLog, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::open(dir.path()).expect("open");
        let (w, log, first) = open(&store).expect("outbox");
        (dir, store, w, log, first)
    }

    fn seqs(recs: &[Issuance]) -> Vec<u64> {
        recs.iter().map(|r| r.seq).collect()
    }

    /// Append records `from..to` in groups of 4,096; returns `to`.
    fn fill(w: &mut OutboxWriter, from: u64, to: u64) -> u64 {
        let mut next = from;
        while next < to {
            let n = 4096.min(to - next);
            w.append(&frames(next..next + n)).expect("append");
            next += n;
        }
        to
    }

    /// The sequences of every record after `cur`, read in batches.
    fn read_all(log: &OutboxLog, cur: &mut Cursor) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            let b = log.read(cur, 10_000).expect("read");
            if b.is_empty() {
                return got;
            }
            got.extend(seqs(&b));
        }
    }

    #[test]
    fn records_come_back_in_order_and_sequences_survive_reopen() {
        let (dir, store, mut w, log, first) = fresh();
        assert!(
            first > 1 << 40,
            "a new outbox numbers from the clock: {first}"
        );
        w.append(&frames(first..first + 3)).expect("append");
        let mut cur = Cursor::after(0);
        assert_eq!(
            seqs(&log.read(&mut cur, 2).expect("read")),
            [first, first + 1]
        );
        assert_eq!(seqs(&log.read(&mut cur, 9).expect("read")), [first + 2]);
        assert!(log.read(&mut cur, 9).expect("read").is_empty());
        w.append(&frames(first + 3..first + 4)).expect("append");
        assert_eq!(seqs(&log.read(&mut cur, 9).expect("read")), [first + 3]);
        drop((w, log, store));

        let store = crate::open(dir.path()).expect("reopen");
        let (_, log, next) = open(&store).expect("outbox");
        assert_eq!(next, first + 4, "numbering goes on where it stopped");
        assert_eq!(
            seqs(&pending(dir.path()).expect("pending")),
            (first..first + 4).collect::<Vec<_>>()
        );
        let mut cur = Cursor::after(first + 1);
        assert_eq!(
            seqs(&log.read(&mut cur, 9).expect("read")),
            [first + 2, first + 3],
            "what the log already has is skipped"
        );
    }

    /// Records past a segment go on in the next one; segments the log has are recycled, and
    /// the recycled file's old frames are never read as records of its new life.
    #[test]
    fn full_segments_roll_over_and_are_recycled_once_logged() {
        let (dir, store, mut w, log, first) = fresh();
        let per = Frame::encode(&rec(first)).expect("encode").len();
        let per_segment = SEGMENT_BYTES / per;
        let total = per_segment * 5 / 2;
        let next = fill(&mut w, first, first + total);
        assert_eq!(log.segments(), 3);
        let mut cur = Cursor::after(0);
        let got = read_all(&log, &mut cur);
        assert_eq!(got, (first..next).collect::<Vec<_>>());

        log.release_through(first + per_segment * 2)
            .expect("release");
        assert_eq!(log.segments(), 1, "only the segment being written stays");
        // The next roll-over takes the recycled file, full of old frames.
        let more = per_segment;
        w.append(&frames(next..next + more)).expect("append");
        let b = log.read(&mut cur, usize::MAX).expect("read");
        assert_eq!(seqs(&b), (next..next + more).collect::<Vec<_>>());
        drop((w, log, store));

        let store = crate::open(dir.path()).expect("reopen");
        let (_, _, again) = open(&store).expect("outbox");
        assert_eq!(again, next + more);
        let left = seqs(&pending(dir.path()).expect("pending"));
        assert_eq!(left.last(), Some(&(next + more - 1)));
        assert!(
            left.windows(2).all(|w| w[1] == w[0] + 1),
            "no old frame reads as a record"
        );
    }

    /// A roll-over that fails (here a directory sits where the next segment goes; in life, a
    /// full disk with no spare) fails that append only: nothing of it was written, and the
    /// next append rolls over. The failed append's sequence stays unused.
    #[test]
    fn a_failed_roll_over_is_tried_again() {
        let (dir, store, mut w, log, first) = fresh();
        let per = Frame::encode(&rec(first)).expect("encode").len();
        let full = first + SEGMENT_BYTES / per;
        let next = fill(&mut w, first, full);
        let blocker = log.shared.path(next);
        fs::create_dir(&blocker).expect("blocker");
        fs::write(blocker.join("x"), b"x").expect("blocker");
        let err = w
            .append(&frames(next..next + 1))
            .expect_err("no segment can be made");
        assert!(!err.to_string().contains("restart"), "{err}");
        fs::remove_dir_all(&blocker).expect("unblock");
        w.append(&frames(next + 1..next + 2))
            .expect("the next append rolls over");
        assert_eq!(log.segments(), 2);
        let mut want: Vec<u64> = (first..next).collect();
        want.push(next + 1);
        let mut cur = Cursor::after(0);
        let got = read_all(&log, &mut cur);
        assert_eq!(got, want);
        drop((w, log, store));

        let store = crate::open(dir.path()).expect("reopen");
        let (_, _, again) = open(&store).expect("outbox");
        assert_eq!(again, next + 2);
        assert_eq!(seqs(&pending(dir.path()).expect("pending")), want);
    }

    /// A torn write at the end (never acknowledged) is cut off and zeroed at open, so a
    /// later, shorter write cannot leave its remains readable.
    #[test]
    fn a_torn_tail_is_dropped_and_zeroed() {
        let (dir, store, mut w, _, first) = fresh();
        w.append(&frames(first..first + 2)).expect("append");
        let path = w.shared.path(w.epoch);
        let end = w.end;
        drop(w);
        // Two more frames written but torn: the first loses its last byte.
        let mut torn = Vec::new();
        for f in frames(first + 2..first + 4) {
            put_frame(&mut torn, first, &f);
        }
        let cut = torn.len() / 2 - 1;
        torn[cut] ^= 0xff;
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(&torn, end).expect("write");
        drop((f, store));

        let store = crate::open(dir.path()).expect("reopen");
        let (mut w, _, next) = open(&store).expect("outbox");
        assert_eq!(next, first + 2);
        w.append(&frames(next..next + 1)).expect("append");
        assert_eq!(
            seqs(&pending(dir.path()).expect("pending")),
            [first, first + 1, first + 2]
        );
    }

    /// A node wiped and rejoined under the same id starts a new outbox: its sequences must
    /// start above the old incarnation's, which the log remembers and would drop as
    /// duplicates.
    #[test]
    fn a_new_outbox_numbers_above_a_wiped_one() {
        let (_old, store, mut w, _, first) = fresh();
        w.append(&frames(first..first + 1000)).expect("append");
        drop((w, store));
        // The rejoin comes later in time (seconds, in practice); here, the next millisecond.
        while fresh_start(0) >> 20 <= first >> 20 {
            std::thread::yield_now();
        }
        let (_wiped, _, _, _, again) = fresh();
        assert!(
            again > first + 1000,
            "{again} must be above {}",
            first + 1000
        );
    }

    /// Records of the RocksDB outbox of earlier versions move into the files, and the
    /// numbering goes on above them.
    #[test]
    fn the_earlier_rocksdb_outbox_is_moved_into_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::open(dir.path()).expect("open");
        let mut batch = WriteBatch::default();
        for s in 7..10 {
            batch.put_cf(
                store.cf(cf::LOCAL_OUTBOX),
                cf::u64_key(s),
                codec::encode(Tag::ISSUANCE, &rec(s)),
            );
        }
        batch.put_cf(
            store.cf(cf::LOCAL_META),
            LEGACY_KEY_NEXT,
            codec::encode(Tag::ISSUANCE, &Some(10u64)),
        );
        store.db.write(batch).expect("write");
        let (_, log, next) = open(&store).expect("outbox");
        assert_eq!(next, 10);
        assert_eq!(
            seqs(&log.read(&mut Cursor::after(0), 9).expect("read")),
            [7, 8, 9]
        );
        assert_eq!(legacy(&store).expect("legacy"), (vec![], None));
    }
}
