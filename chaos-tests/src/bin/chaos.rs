//! `authsec-chaos`: a chaos soak against real node processes, by hand.
//!
//! ```text
//! authsec-chaos --nodes 5 --duration 30m            # random scenarios for 30 minutes
//! authsec-chaos --nodes 3 --scenario leader-kill-loop --scenario disk-full
//! authsec-chaos --seed 1234 ...                      # replay a run's fault schedule
//! authsec-chaos --nodes 5 --duration 30m --credentials --replica   # part two's soak
//! ```
//! It prints the seed and every fault as it starts, and ends with the summary table; the
//! exit code is 1 if any invariant was violated.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use authsec_chaos_tests::nemesis::Scenario;
use authsec_chaos_tests::runner::{self, RunConfig};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "authsec-chaos",
    about = "Chaos soak of an authsec cluster of real processes"
)]
struct Args {
    /// Voters in the cluster (3 or 5 are the tested sizes).
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Draw random scenarios until this much time has passed (e.g. 90s, 30m, 1h).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Run these scenarios once each instead (repeatable); default all.
    #[arg(long)]
    scenario: Vec<String>,
    /// The seed of the fault schedule; default from the clock (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Pause between one writer's operations, in ms.
    #[arg(long, default_value_t = 20)]
    think_ms: u64,
    /// Build a snapshot every this many log entries (snapshots carry the whole archive).
    #[arg(long, default_value_t = 2000)]
    snapshot_every: u64,
    /// Run the credential workload too (part two): its checkers and its scenarios.
    #[arg(long)]
    credentials: bool,
    /// With --credentials: add an issuer replica (a learner that issues).
    #[arg(long)]
    replica: bool,
    /// Write the summary table (markdown) to this file too.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "ms" => Duration::from_millis(n),
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let a = Args::parse();
    let mut cfg = RunConfig::new(a.nodes, a.seed.unwrap_or_else(runner::seed_from_env));
    cfg.duration = a.duration;
    if !a.scenario.is_empty() {
        cfg.scenarios = a
            .scenario
            .iter()
            .map(|s| Scenario::parse(s))
            .collect::<anyhow::Result<_>>()?;
    }
    cfg.workload.writers = a.writers;
    cfg.workload.think = Duration::from_millis(a.think_ms);
    cfg.tmpfs_mib = 2048;
    cfg.snapshot_logs_since_last = a.snapshot_every;
    cfg.credentials = a.credentials;
    cfg.replica = a.credentials && a.replica;
    let summary = runner::run(cfg).await?;
    if let Some(p) = a.report {
        let mut text = summary.table();
        text += "\nfaults:\n";
        for (t, f) in &summary.faults {
            text += &format!("- {:.1}s {f}\n", t.as_secs_f64());
        }
        for n in &summary.notes {
            text += &format!("- note: {n}\n");
        }
        for v in &summary.violations {
            text += &format!("- VIOLATION {v}\n");
        }
        std::fs::write(p, text)?;
    }
    Ok(if summary.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
