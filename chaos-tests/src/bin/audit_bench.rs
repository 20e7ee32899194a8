//! `authsec-audit-bench`: how fast the audit log exports and verifies (issue 9).
//!
//! Starts a three-node cluster (the `authsec` of `AUTHSEC_BIN`), writes client registrations
//! with 128 concurrent writers until the archive holds `--records` records, waits for a
//! checkpoint over the head, then times, each `--rounds` times:
//! - the export stream itself (an in-process gRPC client reading `AuditService.Export`);
//! - `authsec audit export > file` (the CLI: stream, render JSON lines, write);
//! - `authsec audit verify file` (offline: chain, every line, every checkpoint).
//!
//! Prints one JSON object. `scripts/bench-audit.sh` runs it on a release build.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use authsec_api::v1;
use authsec_chaos_tests::{authsec_bin, register_req, Cluster, Options};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Records in the archive before measuring.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    #[arg(long, default_value_t = 128)]
    writers: u64,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let c = Cluster::start(
        3,
        Options {
            extra_toml: "[audit]\ncheckpoint_interval_s = 1\n".into(),
            ..Options::default()
        },
    )?;
    c.wait_issuing(&[1, 2, 3], Duration::from_secs(60)).await?;

    // Fill the archive.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let mut cl = c.clients(1 + w % 3).await?;
        let (next, want) = (next.clone(), a.records);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= want {
                    return Ok::<_, anyhow::Error>(());
                }
                cl.register_client(register_req(&format!("bench{n:07}")))
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let fill_s = started.elapsed().as_secs_f64();
    eprintln!("wrote {} records in {fill_s:.1} s", a.records);
    // A checkpoint over the head, on every node.
    let deadline = Instant::now() + Duration::from_secs(120);
    let h = loop {
        let h = c.audit_head(1).await?;
        if h.checkpoint_sequence + 1 >= h.head_sequence && h.head_sequence >= a.records {
            break h;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no checkpoint over the head: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let records = h.head_sequence;

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("export.jsonl");
    let bin = authsec_bin()?;
    let (mut stream, mut cli, mut verify) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds {
        // The stream alone.
        let t = Instant::now();
        let mut s = v1::audit_service_client::AuditServiceClient::new(c.channel(1).await?)
            .max_decoding_message_size(64 << 20)
            .export(v1::ExportRequest {
                to_sequence: records,
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut n = 0u64;
        while let Some(m) = s.message().await? {
            n += u64::from(m.record.is_some());
        }
        anyhow::ensure!(n == records, "the stream carried {n} of {records}");
        stream.push(n as f64 / t.elapsed().as_secs_f64());

        // The CLI, to a file.
        let t = Instant::now();
        let out = Command::new(&bin)
            .args(["audit", "export", "--to-seq", &records.to_string()])
            .args(["--endpoint", &c.addr(1)?])
            .arg("--admin-dir")
            .arg(c.admin_dir())
            .stdout(std::fs::File::create(&file)?)
            .output()?;
        anyhow::ensure!(out.status.success(), "export: {out:?}");
        cli.push(records as f64 / t.elapsed().as_secs_f64());

        // Offline verification.
        let t = Instant::now();
        let out = Command::new(&bin)
            .args(["audit", "verify"])
            .arg(&file)
            .arg("--admin-dir")
            .arg(c.admin_dir())
            .output()?;
        anyhow::ensure!(out.status.success(), "verify: {out:?}");
        verify.push(records as f64 / t.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: stream {:.0}/s, CLI export {:.0}/s, verify {:.0}/s ({})",
            stream[stream.len() - 1],
            cli[cli.len() - 1],
            verify[verify.len() - 1],
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    let bytes = std::fs::metadata(&file).context("export file")?.len();
    println!(
        "{}",
        serde_json::json!({
            "records": records,
            "export_bytes": bytes,
            "fill_seconds": fill_s,
            "stream_records_per_s": stream,
            "cli_export_records_per_s": cli,
            "verify_records_per_s": verify,
        })
    );
    Ok(())
}
