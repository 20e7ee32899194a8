//! Workload attestation: who is calling, from the kernel, not from anything the caller says.
//!
//! The caller's pid, uid and gid come from `SO_PEERCRED` on the unix socket. From `/proc/<pid>`
//! come its executable's path and, only when some entry asks for it, its SHA-256. Pid reuse is
//! guarded against as SPIRE's unix attestor does: the process's start time is read before and
//! after everything else, and a change (the caller exited and another process took its pid)
//! fails the attestation rather than attesting the newcomer.
//!
//! Selectors: `unix:uid:N`, `unix:gid:N`, `unix:user:NAME`, `unix:group:NAME`,
//! `unix:path:/abs/exe`, `unix:sha256:HEX`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Largest executable hashed for `unix:sha256` (bounded work per attestation).
pub const EXE_HASH_BYTES_MAX: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the caller's credentials are unknown (no SO_PEERCRED on this connection)")]
    NoCredentials,
    #[error("the caller's pid is unknown")]
    NoPid,
    #[error("the caller (pid {pid}) exited or was replaced during attestation")]
    Replaced { pid: i32 },
    #[error("reading /proc/{pid}: {source}")]
    Proc {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// What the kernel says about the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

/// Which selector kinds the current entries use: what is expensive is computed only if needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub path: bool,
    pub sha256: bool,
    pub names: bool,
}

impl Needs {
    pub fn of<'a>(selectors: impl Iterator<Item = &'a str>) -> Self {
        let mut n = Needs::default();
        for s in selectors {
            n.path |= s.starts_with("unix:path:");
            n.sha256 |= s.starts_with("unix:sha256:");
            n.names |= s.starts_with("unix:user:") || s.starts_with("unix:group:");
        }
        n
    }
}

/// `/proc/<pid>/stat` field 22 (start time in clock ticks since boot).
fn start_time(proc_root: &Path, pid: i32) -> Result<u64, AttestError> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))
        .map_err(|source| AttestError::Proc { pid, source })?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or(AttestError::Replaced { pid })?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .ok_or(AttestError::Replaced { pid })
}

/// Attests callers; caches executables' hashes by (path, size, modification time).
#[derive(Debug)]
pub struct Attestor {
    proc_root: PathBuf,
    hashes: Mutex<HashMap<(PathBuf, u64, i128), String>>,
}

impl Default for Attestor {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl Attestor {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            hashes: Mutex::new(HashMap::new()),
        }
    }

    /// The caller's selectors.
    pub fn selectors(&self, c: Caller, needs: Needs) -> Result<BTreeSet<String>, AttestError> {
        let mut out = BTreeSet::new();
        out.insert(format!("unix:uid:{}", c.uid));
        out.insert(format!("unix:gid:{}", c.gid));
        if needs.names {
            if let Some(u) = name_of("/etc/passwd", c.uid) {
                out.insert(format!("unix:user:{u}"));
            }
            if let Some(g) = name_of("/etc/group", c.gid) {
                out.insert(format!("unix:group:{g}"));
            }
        }
        if needs.path || needs.sha256 {
            let pid = c.pid.ok_or(AttestError::NoPid)?;
            let before = start_time(&self.proc_root, pid)?;
            let exe_link = self.proc_root.join(pid.to_string()).join("exe");
            let path = std::fs::read_link(&exe_link)
                .map_err(|source| AttestError::Proc { pid, source })?;
            let sha = if needs.sha256 {
                Some(self.sha256(pid, &exe_link, &path)?)
            } else {
                None
            };
            if start_time(&self.proc_root, pid)? != before {
                return Err(AttestError::Replaced { pid });
            }
            out.insert(format!("unix:path:{}", path.display()));
            if let Some(h) = sha {
                out.insert(format!("unix:sha256:{h}"));
            }
        }
        Ok(out)
    }

    fn sha256(&self, pid: i32, exe_link: &Path, path: &Path) -> Result<String, AttestError> {
        use std::io::Read;
        let err = |source| AttestError::Proc { pid, source };
        // Through /proc/<pid>/exe: the very file the process runs, even if renamed since.
        let mut f = std::fs::File::open(exe_link).map_err(err)?;
        let meta = f.metadata().map_err(err)?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        let key = (path.to_path_buf(), meta.len(), mtime);
        if let Some(h) = self
            .hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(h.clone());
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = EXE_HASH_BYTES_MAX;
        loop {
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 || left == 0 {
                break;
            }
            let n = n.min(left as usize);
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let hex = hex::encode(h.finalize());
        let mut cache = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(key, hex.clone());
        Ok(hex)
    }
}

/// The name of `id` in a passwd- or group-format file.
fn name_of(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == id).then(|| name.to_owned())
    })
}

/// Whether an entry with `selectors` matches a caller holding `held`: all of the entry's
/// selectors are among the caller's (an entry with none matches nobody).
pub fn matches(selectors: &BTreeSet<String>, held: &BTreeSet<String>) -> bool {
    !selectors.is_empty() && selectors.is_subset(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Caller {
        let pid = std::process::id() as i32;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX)
        };
        Caller {
            pid: Some(pid),
            uid: field("Uid:"),
            gid: field("Gid:"),
        }
    }

    #[test]
    fn own_process_has_its_path_and_hash() {
        let a = Attestor::default();
        let s = a
            .selectors(
                own(),
                Needs {
                    path: true,
                    sha256: true,
                    names: true,
                },
            )
            .expect("attest self");
        let exe = std::env::current_exe().expect("exe");
        assert!(s.contains(&format!("unix:path:{}", exe.display())), "{s:?}");
        let bytes = std::fs::read(&exe).expect("read exe");
        let want = hex::encode(Sha256::digest(&bytes));
        assert!(s.contains(&format!("unix:sha256:{want}")), "{s:?}");
        assert!(s.iter().any(|x| x.starts_with("unix:uid:")));
    }

    #[test]
    fn a_gone_pid_fails_attestation() {
        // Pid 0 never names a user process in /proc.
        let c = Caller {
            pid: Some(i32::MAX),
            uid: 0,
            gid: 0,
        };
        let e = Attestor::default()
            .selectors(
                c,
                Needs {
                    path: true,
                    ..Needs::default()
                },
            )
            .expect_err("a gone pid cannot be attested");
        assert!(matches!(e, AttestError::Proc { .. }), "{e}");
    }

    #[test]
    fn a_changed_start_time_is_a_replaced_process() {
        // A fake /proc whose stat changes between the two reads cannot be built without
        // racing; check the parser on a name holding ") " instead, which a naive split misreads.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("42");
        std::fs::create_dir_all(&p).expect("mkdir");
        let fields: Vec<String> = (3..=22).map(|i| i.to_string()).collect();
        std::fs::write(
            p.join("stat"),
            format!("42 (evil) 1 2) S {}", fields.join(" ")),
        )
        .expect("write");
        // Fields after the last ')': "S", then 4.., so field 22 is the 20th after it.
        let t = start_time(dir.path(), 42).expect("parse");
        assert_eq!(t, 21);
    }

    #[test]
    fn matching_needs_every_selector() {
        let held: BTreeSet<String> = ["unix:uid:1", "unix:gid:2"].map(String::from).into();
        let one: BTreeSet<String> = ["unix:uid:1"].map(String::from).into();
        let two: BTreeSet<String> = ["unix:uid:1", "unix:path:/x"].map(String::from).into();
        assert!(matches(&one, &held));
        assert!(!matches(&two, &held));
        assert!(!matches(&BTreeSet::new(), &held));
    }
}
