//! A checker that cannot fail is not a checker. Each test here plants a deliberate defect
//! in debug-built nodes (`AUTHSEC_PLANTED_BUG`, compiled out of release builds), runs the
//! chaos harness, and expects the checker made for that defect to report it.
//!
//! - acknowledging before the entry is synced on a majority, then killing leaders:
//!   acknowledged writes are lost;
//! - acknowledging a write and proposing it late: two writes land out of real-time order;
//! - one node dropping one applied record: that node's projection, archive and chain differ.

use std::collections::BTreeMap;

use authsec_chaos_tests::checkers::{chain, convergence, linearizable, lost_writes};

use authsec_chaos_tests::init_test_tracing;
use authsec_chaos_tests::nemesis::Scenario;
use authsec_chaos_tests::runner::{self, RunConfig, Summary};

/// One cluster at a time: these tests share two cores with nothing else in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bug_everywhere(cfg: &mut RunConfig, bug: &str) {
    for id in 1..=cfg.nodes + 1 {
        cfg.env
            .insert(id, vec![("AUTHSEC_PLANTED_BUG".into(), bug.into())]);
    }
}

fn caught(s: &Summary, checker: &str) -> usize {
    s.violations.iter().filter(|v| v.checker == checker).count()
}

async fn planted(mut cfg: RunConfig) -> anyhow::Result<Summary> {
    let _serial = SERIAL.lock().await;
    cfg.converge_timeout = std::time::Duration::from_secs(15);
    runner::run(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_before_sync_is_caught_as_lost_writes() -> anyhow::Result<()> {
    init_test_tracing();
    let mut cfg = RunConfig::new(3, runner::seed_from_env());
    cfg.tag = "bug-ack".into();
    cfg.scenarios = vec![Scenario::LeaderKillLoop];
    bug_everywhere(&mut cfg, "ack-before-sync");
    let s = planted(cfg).await?;
    assert!(
        caught(&s, lost_writes::NAME) > 0,
        "the lost-write checker missed acknowledged writes lost with the leader: {:?}",
        s.violations
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_writes_are_caught_as_not_linearizable() -> anyhow::Result<()> {
    init_test_tracing();
    let mut cfg = RunConfig::new(3, runner::seed_from_env());
    cfg.tag = "bug-reorder".into();
    cfg.scenarios = vec![Scenario::Steady];
    bug_everywhere(&mut cfg, "reorder-writes");
    let s = planted(cfg).await?;
    assert!(
        caught(&s, linearizable::NAME) > 0,
        "the linearizability checker missed writes ordered against real time: {:?}",
        s.violations
    );
    // Every node's chain is intact: the order is wrong everywhere alike. (Writes acked in the
    // last 300 ms may also be missing, or still committing, when the run ends: an early ack is
    // an early ack.)
    assert_eq!(caught(&s, chain::NAME), 0, "{:?}", s.violations);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_record_is_caught_by_three_checkers() -> anyhow::Result<()> {
    init_test_tracing();
    let mut cfg = RunConfig::new(3, runner::seed_from_env());
    cfg.tag = "bug-drop".into();
    cfg.scenarios = vec![Scenario::Steady];
    cfg.env = BTreeMap::from([(
        2,
        vec![("AUTHSEC_PLANTED_BUG".into(), "drop-record=40".into())],
    )]);
    let s = planted(cfg).await?;
    for checker in [lost_writes::NAME, convergence::NAME, chain::NAME] {
        assert!(
            caught(&s, checker) > 0,
            "{checker} missed the record node 2 dropped: {:?}",
            s.violations
        );
    }
    assert!(
        s.violations
            .iter()
            .filter(|v| v.checker != linearizable::NAME)
            .all(|v| v.detail.contains("node 2")),
        "only node 2 is blamed: {:?}",
        s.violations
    );
    Ok(())
}
