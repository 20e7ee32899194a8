//! The short chaos suite, credentials: three voters and an issuer replica, the credential
//! workload (onboarding, role changes, delegations, tokens and SVIDs from every node,
//! revocations probed through every node and every subscribed SDK verifier), and each
//! credential scenario once; then every invariant, part one's and part two's.

use authsec_chaos_tests::init_test_tracing;
use authsec_chaos_tests::nemesis::Scenario;
use authsec_chaos_tests::runner::{self, RunConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_under_partitions_skew_and_a_cut_off_replica_no_violation() -> anyhow::Result<()>
{
    init_test_tracing();
    let mut cfg = RunConfig::new(3, runner::seed_from_env());
    cfg.tag = "cred3".into();
    cfg.credentials = true;
    cfg.replica = true;
    cfg.scenarios = Scenario::CREDENTIAL.to_vec();
    let s = runner::run(cfg).await?;
    assert!(
        s.violations.is_empty(),
        "seed {}: {:?}",
        s.seed,
        s.violations
    );
    // The run did what it claims: credentials of every kind, revocations judged.
    assert!(
        s.cred_issued >= 100,
        "only {} credentials issued",
        s.cred_issued
    );
    assert!(
        s.cred_revocations >= 10,
        "only {} revocations",
        s.cred_revocations
    );
    let probes = s.probes.expect("a credential run tallies its probes");
    assert!(
        probes.judged >= 20,
        "too few revocation probes judged: {probes:?}"
    );
    Ok(())
}
