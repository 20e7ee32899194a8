//! The Workload API socket: created fresh (a stale one from a crash is replaced), readable
//! and writable by every local user (attestation, not file permissions, decides who gets
//! what), removed at shutdown.

use std::path::Path;

use tokio::net::UnixListener;

pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::anyhow!(
                "removing stale socket {}: {e}",
                path.display()
            ))
        }
    }
    let l = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("binding the Workload API socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(l)
}
