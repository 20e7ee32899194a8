#!/usr/bin/env bash
# The test command: set up, check formatting and lints, then build once and run every test
# (unit, property, golden, openraft's storage suite, architecture rules, and the multi-process
# cluster tests). Long chaos runs and benchmarks have their own commands.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo build --locked --workspace --all-targets
cargo test --locked --workspace -- --test-threads 2 --skip no_violation
# The short chaos suite (3 and 5 nodes, and 3 nodes with an issuer replica through the
# credential scenarios; about two minutes), with its seed, fault schedule and summary table
# on the output. Same build selection as above, so nothing is rebuilt.
cargo test --locked --workspace -- --test-threads 1 --nocapture no_violation
# SVIDs against other verifiers: openssl for X.509-SVIDs from every node, PyJWT for JWT-SVIDs.
scripts/svid-acceptance.sh
# Federation between two dev clusters with different trust domains.
scripts/federation-acceptance.sh
# OAuth 2.0 from every node: curl for tokens, PyJWT against every node's JWKS, revocation seen
# across nodes within a second, every token in the audit log.
scripts/oauth-acceptance.sh
