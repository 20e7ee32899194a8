#!/usr/bin/env bash
# Certificate rotation under load, the long run: 60 s node certificates, 5 minutes of writes
# (half of them over a new TLS connection each), zero failed requests required.
#   scripts/rotation.sh                       # the acceptance run
#   AUTHSEC_ROTATION_TTL_S=30 AUTHSEC_ROTATION_SECS=600 scripts/rotation.sh
# The default test run (scripts/test.sh) runs the same test for 65 s with 30 s certificates.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
export AUTHSEC_ROTATION_TTL_S="${AUTHSEC_ROTATION_TTL_S:-60}"
export AUTHSEC_ROTATION_SECS="${AUTHSEC_ROTATION_SECS:-300}"
cargo build --locked --workspace --all-targets
exec cargo test --locked --workspace -- --exact --nocapture \
    node_certificates_and_their_root_rotate_under_load_without_a_failed_request
