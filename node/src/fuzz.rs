//! Time-boxed property fuzzing (proptest) of what a stranger can send before it is
//! authenticated: the join request (token, node id, names, CSR) and the certificates a TLS
//! peer presents. No input may panic, and what passes must be what we expect.
//!
//! Each target runs batches of cases from fresh seeds until its time budget is spent:
//! `AUTHSEC_FUZZ_SECS` (default 3 s in the test run; `scripts/fuzz.sh` gives each 10 minutes).
//! Inputs are both arbitrary bytes and mutations (bit flips, truncations, splices) of valid
//! ones, so the fuzzing reaches past the first length check into the DER parsers.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use authsec_api::v1;
use authsec_domain::TrustDomain;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use crate::pki::{self, JoinToken};

fn budget() -> Duration {
    Duration::from_secs(
        std::env::var("AUTHSEC_FUZZ_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    )
}

/// Run `test` on cases of `strategy` until the budget is spent; panics on the first failure
/// with proptest's minimized input.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let start = Instant::now();
    let deadline = start + budget();
    let base: u64 = std::env::var("AUTHSEC_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let (mut cases, mut batch) = (0u64, 0u64);
    while Instant::now() < deadline {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&base.to_le_bytes());
        seed[8..16].copy_from_slice(&batch.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 500,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("fuzz {name}: seed {base}, batch {batch}: {e}");
        }
        cases += 500;
        batch += 1;
    }
    println!(
        "fuzz {name}: {cases} cases in {:.1} s without a failure (seed {base})",
        start.elapsed().as_secs_f64()
    );
}

/// Bit flips, a truncation and a splice applied to `base`.
fn mutated(base: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        proptest::option::of(any::<usize>()),
        proptest::option::of((
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 0..16),
        )),
    )
        .prop_map(move |(flips, cut, splice)| {
            let mut b = base.to_vec();
            for (pos, x) in flips {
                if !b.is_empty() {
                    let i = pos % b.len();
                    b[i] ^= x;
                }
            }
            if let Some(c) = cut {
                b.truncate(c % (b.len() + 1));
            }
            if let Some((pos, bytes)) = splice {
                let i = pos % (b.len() + 1);
                b.splice(i..i, bytes);
            }
            b
        })
}

fn td() -> TrustDomain {
    TrustDomain::parse("fuzz.example").unwrap_or_else(|_| unreachable!("a valid trust domain"))
}

fn valid_csr() -> &'static [u8] {
    static CSR: OnceLock<Vec<u8>> = OnceLock::new();
    CSR.get_or_init(|| {
        let id = authsec_raft::tls::node_spiffe_id(&td(), 4);
        pki::new_key_and_csr(&id)
            .map(|(_, csr)| csr)
            .unwrap_or_default()
    })
}

fn valid_cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    CERT.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        root()
            .sign_node(&td(), 4, &key, &pki::Sans::default(), pki::NODE_TTL_DEFAULT)
            .map(|c| c.to_vec())
            .unwrap_or_else(|e| panic!("sign: {e}"))
    })
}

fn valid_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| JoinToken::generate().reveal())
}

fn token_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,200}",
        "[0-9a-fA-F]{0,20}\\.[0-9a-fA-F]{0,70}",
        mutated(valid_token().as_bytes()).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn csr_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        mutated(valid_csr()),
        Just(valid_csr().to_vec()),
    ]
}

#[test]
fn fuzz_join_request() {
    let names = proptest::collection::vec(".{0,80}", 0..20);
    let strategy = (
        token_strategy(),
        any::<u64>(),
        csr_strategy(),
        names.clone(),
        names,
    );
    fuzz(
        "join_request",
        strategy,
        |(token, node_id, csr_der, dns_names, ip_addrs)| {
            let r = v1::JoinRequest {
                token: token.clone(),
                node_id,
                csr_der: csr_der.clone(),
                dns_names,
                ip_addrs,
            };
            match crate::join::check_join_request(&r) {
                Ok((t, sans)) => {
                    // Whatever passes is exactly well-formed.
                    prop_assert_eq!(t.reveal(), token.trim().to_ascii_lowercase());
                    prop_assert!(node_id > 0);
                    prop_assert!(
                        sans.dns.len() <= pki::SANS_MAX && sans.ips.len() <= pki::SANS_MAX
                    );
                    prop_assert!(csr_der.len() <= pki::CSR_BYTES_MAX);
                }
                Err(s) => {
                    prop_assert!(matches!(
                        s.code(),
                        tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
                    ));
                    prop_assert!(!s.message().is_empty());
                }
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_csr() {
    fuzz("csr", csr_strategy(), |der| {
        if let Ok(k) = pki::csr_public_key(&der) {
            // What passes verified its self-signature, within the bound, and its key is one a
            // certificate can be issued for.
            prop_assert!(der.len() <= pki::CSR_BYTES_MAX);
            let root = root();
            prop_assert!(root
                .sign_node(&td(), 4, &k, &pki::Sans::default(), pki::NODE_TTL_DEFAULT)
                .is_ok());
        }
        Ok(())
    });
}

fn root() -> &'static pki::Root {
    static ROOT: OnceLock<pki::Root> = OnceLock::new();
    ROOT.get_or_init(|| pki::Root::generate(&td()).unwrap_or_else(|e| panic!("root: {e}")))
}

#[test]
fn fuzz_peer_certificate() {
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        mutated(valid_cert()),
    ];
    fuzz("peer_certificate", strategy, |der| {
        let cert = rustls::pki_types::CertificateDer::from(der);
        if let Ok(id) = authsec_raft::tls::svid_id(&cert) {
            prop_assert!(id.as_str().starts_with("spiffe://"));
        }
        let _ = pki::not_after(&cert);
        let _ = pki::renew_in(&cert);
        Ok(())
    });
}
