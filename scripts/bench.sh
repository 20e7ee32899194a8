#!/usr/bin/env bash
# Benchmark: committed writes per second and commit latency on a three-node authsec cluster
# (fsync on) beside a three-member etcd cluster driven by the same load generator.
# Results go to stdout; docs/benchmarks.md records them with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh etcd-server
# Release build (its own RocksDB build, about nine minutes the first time): both systems run
# optimized code, as etcd's Debian binary is.
cargo build --release --locked -p authsec-node -p authsec-chaos-tests
exec "$CARGO_TARGET_DIR/release/authsec-bench" --authsec "$CARGO_TARGET_DIR/release/authsec" "$@"
