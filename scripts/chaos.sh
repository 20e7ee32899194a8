#!/usr/bin/env bash
# The long chaos soak, by hand: a five-node cluster of real processes with a fault-injecting
# proxy on every link, random scenarios for the given time, then every invariant checker.
#   scripts/chaos.sh --duration 30m                 # the soak the issue asks for
#   scripts/chaos.sh --nodes 3 --scenario disk-full --seed 42
# Prints the seed and each fault as it starts, ends with the summary table; exit 1 on any
# violation (node logs are then kept under /tmp/authsec-chaos-logs-*). The disk-full fault
# needs root (a tmpfs); without it the fault is skipped and the run says so.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
cargo build --locked --workspace
exec "$CARGO_TARGET_DIR/debug/authsec-chaos" "$@"
