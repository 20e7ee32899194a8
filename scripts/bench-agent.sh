#!/usr/bin/env bash
# Benchmark: issue 8's figures from real processes on loopback (a three-node cluster and an
# authsec-agent; chaos-tests/src/bin/agent_bench.rs):
#  1. agent memory with 1,000 entries synced and their X.509-SVIDs minted;
#  2. time from an entry's creation to its SVID in a workload's open stream, p50 and p99;
#  3. FetchJWTSVID served from the agent's cache, calls per second;
#  4. the SDK's token verification on one core, ES256 and EdDSA, against `openssl speed`'s
#     verify ceiling measured in the same run.
# The dev profile by default (what the tests build; the crypto is aws-lc's C either way);
# AUTHSEC_BENCH_PROFILE=release for release binaries. Extra arguments go to the bench
# (--entries, --samples, --seconds, --concurrency, --tokens).
# docs/benchmarks.md records the results with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
profile="${AUTHSEC_BENCH_PROFILE:-dev}"
dir=debug
flag=()
if [ "$profile" = release ]; then dir=release; flag=(--release); fi
cargo build --locked "${flag[@]}" -p authsec-node -p authsec-agent -p authsec-chaos-tests --bins
"$CARGO_TARGET_DIR/$dir/authsec-agent-bench" "$@"
