#!/usr/bin/env bash
# Benchmark: onboarding AI agents (client + secret + workload entry per committed command)
# through the admin API of a three-node cluster over mutual TLS, beside plain client
# registration in the same run. Prints the committed rate, node memory and snapshot size;
# docs/benchmarks.md records them with this command. Default: 100,000 agents.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
cargo build --release --locked -p authsec-node -p authsec-chaos-tests
exec "$CARGO_TARGET_DIR/release/authsec-onboard-bench" --authsec "$CARGO_TARGET_DIR/release/authsec" "$@"
