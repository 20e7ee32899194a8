//! The short chaos suite, five nodes: leader kills, an isolated leader, a minority of two
//! cut off, a paused leader and flapping partitions, then every invariant.

use authsec_chaos_tests::init_test_tracing;
use authsec_chaos_tests::nemesis::Scenario;
use authsec_chaos_tests::runner::{self, RunConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_partitions_and_kills_no_violation() -> anyhow::Result<()> {
    init_test_tracing();
    let mut cfg = RunConfig::new(5, runner::seed_from_env());
    cfg.tag = "c5".into();
    cfg.scenarios = vec![
        Scenario::LeaderKillLoop,
        Scenario::LeaderIsolated,
        Scenario::MinorityPartition,
        Scenario::PausedLeader,
        Scenario::FlappingPartitions,
    ];
    let summary = runner::run(cfg).await?;
    assert!(
        summary.violations.is_empty(),
        "seed {}: {:?}",
        summary.seed,
        summary.violations
    );
    Ok(())
}
