//! `authsec snapshot save` and `authsec snapshot restore`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use authsec_api::v1;
use authsec_domain::SEALED_ROOT_KEY;

use crate::config::NodeConfig;
use crate::pki::{self, Kek, NodeFiles, Root};

/// Stream a backup from the first endpoint that answers into `file` (written whole, then
/// renamed), with progress on stderr.
pub async fn save(eps: &[String], file: &Path) -> anyhow::Result<()> {
    let mut c = crate::cli::cluster(eps).await?;
    let mut stream = c
        .save_snapshot(v1::SaveSnapshotRequest {})
        .await
        .map_err(crate::cli::status_error)?
        .into_inner();
    let part = file.with_extension("part");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&part).with_context(|| format!("create {}", part.display()))?,
    );
    let mut info: Option<v1::SnapshotInfo> = None;
    let mut got = 0u64;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_report = 0u64;
    while let Some(chunk) = stream.message().await.map_err(crate::cli::status_error)? {
        if let Some(i) = chunk.info {
            info = Some(i);
        }
        out.write_all(&chunk.data)?;
        got += chunk.data.len() as u64;
        let total = info.as_ref().map_or(0, |i| i.total_bytes);
        // A line per 10 % (or a live counter on a terminal).
        if tty || total == 0 || got * 10 / total.max(1) > last_report {
            last_report = got * 10 / total.max(1);
            eprint!(
                "{}{:.1} / {:.1} MiB ({}%){}",
                if tty { "\r" } else { "" },
                got as f64 / 1048576.0,
                total as f64 / 1048576.0,
                (got * 100).checked_div(total).unwrap_or(100),
                if tty { "" } else { "\n" }
            );
        }
    }
    if tty {
        eprintln!();
    }
    let info = info.context("the node sent no snapshot")?;
    if got != info.total_bytes {
        let _ = std::fs::remove_file(&part);
        bail!(
            "the stream ended after {got} of {} bytes; nothing saved",
            info.total_bytes
        );
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    // The file's own hash must verify before it replaces anything.
    authsec_storage::snapshot::verify(&part)
        .with_context(|| format!("the backup in {} does not verify", part.display()))?;
    std::fs::rename(&part, file)?;
    let head = info.archive_head.unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "file": file.display().to_string(),
            "node_id": info.node_id,
            "last_log_index": info.last_log_index,
            "last_log_term": info.last_log_term,
            "projection_digest": info.projection_digest,
            "archive_head": {"sequence": head.sequence, "hash": head.hash},
            "bytes": info.total_bytes,
        })
    );
    Ok(())
}

/// Build a new cluster's first node from a backup (see the command's help).
pub fn restore(cfg: &NodeConfig, file: &Path) -> anyhow::Result<()> {
    if cfg.bootstrap.is_some() {
        bail!("remove [bootstrap] from the config: a restored node is already initialized, as the single voter of a new cluster");
    }
    std::fs::create_dir_all(&cfg.data_dir)?;
    let store = authsec_storage::open(&cfg.data_dir)?;
    let r = authsec_storage::restore::restore(&store, file, cfg.node_id, &cfg.advertise())
        .context("restore")?;
    let reader = authsec_storage::Reader::new(store.clone());
    let meta = reader.meta()?;
    let td = cfg.td()?;
    if let Some(t) = &meta.trust_domain {
        if *t != td {
            bail!("the backup is of trust domain {t}, the config says {td}");
        }
    }
    std::fs::write(cfg.data_dir.join("node_id"), format!("{}\n", cfg.node_id))?;
    if !cfg.insecure {
        // The node's identity, signed by the restored root: the sealed key came back with the
        // backup; this host's KEK opens it.
        let root_cert = reader
            .security()?
            .root_cert
            .context("the backup holds no root CA (it comes from an --insecure cluster); restore with --insecure")?;
        let sealed = reader
            .sealed(SEALED_ROOT_KEY)?
            .context("the backup holds no sealed root key (offline-root mode)")?;
        let kek = Kek::load(&cfg.kek_path()).with_context(|| {
            format!(
                "the KEK of the backed-up cluster must be at {}",
                cfg.kek_path().display()
            )
        })?;
        let root = Root::unseal(&kek, &td, &root_cert, &sealed)?;
        let files = NodeFiles::new(&cfg.data_dir);
        pki::write_file(&files.sealed_root(), &sealed, 0o600)?;
        files.write_bundle(std::slice::from_ref(&root.cert_der))?;
        let key = rcgen::KeyPair::generate()?;
        let cert = root.sign_node(&td, cfg.node_id, &key, &cfg.sans()?, cfg.cert_ttl())?;
        files.write_identity(&[cert], &key)?;
    }
    println!(
        "{}",
        serde_json::json!({
            "restored": file.display().to_string(),
            "node_id": cfg.node_id,
            "last_log_index": r.applied.index,
            "projection_digest": hex::encode(r.digest),
            "archive_head": {"sequence": r.head.sequence, "hash": hex::encode(r.head.hash)},
        })
    );
    Ok(())
}
