#!/usr/bin/env bash
# Fuzzing of what a stranger can send before it is authenticated: the join request (token,
# node id, names, CSR), the CSR parser alone, and the certificate a TLS peer presents.
# proptest, time-boxed: each target runs for AUTHSEC_FUZZ_SECS (default 600 s, the three in
# parallel); the default test run gives each 3 s. Reproduce a failure with the seed it prints:
#   AUTHSEC_FUZZ_SEED=<seed> AUTHSEC_FUZZ_SECS=10 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
export AUTHSEC_FUZZ_SECS="${AUTHSEC_FUZZ_SECS:-600}"
cargo build --locked --workspace --all-targets
exec cargo test --locked --workspace -- --nocapture --test-threads 3 fuzz_
