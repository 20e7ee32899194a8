//! The short chaos suite, three nodes: every scenario once, under a seeded schedule, with
//! writers on every node; then every invariant over the whole history. Replay a failure
//! with `AUTHSEC_CHAOS_SEED=<seed printed>`.

use authsec_chaos_tests::init_test_tracing;
use authsec_chaos_tests::runner::{self, RunConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_every_scenario_no_violation() -> anyhow::Result<()> {
    init_test_tracing();
    let mut cfg = RunConfig::new(3, runner::seed_from_env());
    cfg.tag = "c3".into();
    let summary = runner::run(cfg).await?;
    assert!(
        summary.violations.is_empty(),
        "seed {}: {} violations:\n{}",
        summary.seed,
        summary.violations.len(),
        summary
            .violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(summary.acked > 0 && !summary.faults.is_empty());
    Ok(())
}
