#!/usr/bin/env bash
# Benchmark: X.509-SVID minting per node, against this machine's signature ceiling measured in
# the same run (`openssl speed ecdsap256`). Three figures, release build:
#  1. openssl: P-256 signatures (and verifications) per second on one core;
#  2. in process: SVIDs per second from one issuer (CSR parse and proof-of-possession check,
#     certificate build, signature), 1 and 2 threads, beside aws-lc P-256 signatures in the
#     same process;
#  3. through the API: SVIDs per second from one node of a three-node dev cluster over mutual
#     TLS (client and cluster share the machine's two cores).
# docs/benchmarks.md records the results with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
cargo build --release --locked -p authsec-node
bin="$CARGO_TARGET_DIR/release/authsec"
secs="${AUTHSEC_BENCH_SECS:-10}"

echo "== openssl speed -seconds $secs ecdsap256 (one core)"
openssl speed -seconds "$secs" ecdsap256 2>/dev/null | tail -2
echo "== in process"
"$bin" svid bench --seconds "$secs" --threads 1 2>/dev/null
"$bin" svid bench --seconds "$secs" --threads 2 2>/dev/null

echo "== through the API of one node"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data"
base="$(python3 scripts/free-base.py)"
"$bin" dev --dir "$work/cluster" --base-port "$base" >"$work/dev.log" 2>&1 &
pid=$!
deadline=$((SECONDS + 90))
until "$bin" cluster status --json 2>/dev/null | grep -q '"issuing":true.*"issuing":true.*"issuing":true'; do
  [ $SECONDS -lt $deadline ] || { tail -20 "$work/dev.log"; exit 1; }
  sleep 0.2
done
entry="$("$bin" entry create --spiffe-id spiffe://authsec.local/bench/web --output json | sed -n 's/.*"entry_id":"\([^"]*\)".*/\1/p')"
for c in 1 32; do
  "$bin" svid bench --entry "$entry" --endpoint "127.0.0.1:$((base + 2))" --concurrency "$c" --seconds "$secs"
done
