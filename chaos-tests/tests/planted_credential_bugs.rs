//! Each credential checker catches the defect it exists for. Debug-built nodes run with a
//! planted bug (`AUTHSEC_PLANTED_BUG`, compiled out of release builds) under the credential
//! workload, and the test expects that checker to report it:
//!
//! - ignoring the freshness bound, with the leader cut off: the freshness checker;
//! - one node never applying revocations: the revocation checker, blaming that node only;
//! - token exchange granting what the agent asks beyond its delegation: the delegation
//!   checker.

use std::collections::BTreeMap;

use authsec_chaos_tests::checkers::{delegation, freshness, revocation};
use authsec_chaos_tests::init_test_tracing;
use authsec_chaos_tests::nemesis::Scenario;
use authsec_chaos_tests::runner::{self, RunConfig, Summary};

/// One cluster at a time: these tests share two cores with nothing else in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn caught(s: &Summary, checker: &str) -> Vec<String> {
    s.violations
        .iter()
        .filter(|v| v.checker == checker)
        .map(|v| v.detail.clone())
        .collect()
}

fn config(tag: &str, bug: &str, nodes: &[u64], scenarios: Vec<Scenario>) -> RunConfig {
    let mut cfg = RunConfig::new(3, runner::seed_from_env());
    cfg.tag = tag.into();
    cfg.credentials = true;
    cfg.scenarios = scenarios;
    cfg.converge_timeout = std::time::Duration::from_secs(15);
    cfg.env = nodes
        .iter()
        .map(|id| (*id, vec![("AUTHSEC_PLANTED_BUG".into(), bug.into())]))
        .collect::<BTreeMap<_, _>>();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignoring_the_freshness_bound_is_caught() -> anyhow::Result<()> {
    init_test_tracing();
    let _serial = SERIAL.lock().await;
    let s = runner::run(config(
        "bug-fresh",
        "ignore-freshness",
        &[1, 2, 3, 4],
        vec![Scenario::DeposedLeaderWithFollower],
    ))
    .await?;
    let v = caught(&s, freshness::NAME);
    assert!(
        !v.is_empty(),
        "the freshness checker missed a cut-off leader issuing: {:?}",
        s.violations
    );
    println!("caught: {}", v[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_skipping_revocations_is_caught() -> anyhow::Result<()> {
    init_test_tracing();
    let _serial = SERIAL.lock().await;
    let s = runner::run(config(
        "bug-revoke",
        "skip-revocations",
        &[2],
        vec![Scenario::Steady],
    ))
    .await?;
    let v = caught(&s, revocation::NAME);
    assert!(
        !v.is_empty(),
        "the revocation checker missed node 2 honouring revoked tokens: {:?}",
        s.violations
    );
    assert!(
        v.iter().all(|d| d.starts_with("node 2 ")),
        "only node 2 is blamed: {v:?}"
    );
    assert!(
        v.iter().any(|d| d.contains("introspection"))
            && v.iter().any(|d| d.contains("SDK verifier")),
        "both node 2's introspection and a verifier subscribed to it are caught: {v:?}"
    );
    println!("caught: {}", v[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widened_delegated_scope_is_caught() -> anyhow::Result<()> {
    init_test_tracing();
    let _serial = SERIAL.lock().await;
    let s = runner::run(config(
        "bug-widen",
        "widen-delegation",
        &[1, 2, 3, 4],
        vec![Scenario::Steady, Scenario::Steady],
    ))
    .await?;
    let v = caught(&s, delegation::NAME);
    assert!(
        !v.is_empty(),
        "the delegation checker missed tokens wider than their delegation: {:?}",
        s.violations
    );
    println!("caught: {}", v[0]);
    Ok(())
}
