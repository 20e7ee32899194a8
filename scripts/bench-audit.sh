#!/usr/bin/env bash
# Benchmark: the audit log (issue 9), release build, on this machine, in one run:
#  1. export and verify throughput: `authsec-audit-bench` fills a three-node cluster's archive
#     with 200,000 records (AUTHSEC_BENCH_RECORDS), then times the export stream, the CLI
#     export to a file, and the offline `audit verify` of that file (three rounds each);
#  2. what auditing issuance costs: access tokens per second from one node of a three-node
#     `authsec dev` cluster (`authsec oauth bench`, 64 connections, 10 s after 2 s warm-up),
#     with the normal build and with a baseline build (`--features unaudited-bench`) whose
#     tokens are never recorded; two rounds, alternating.
# AUTHSEC_BENCH_ONLY=tokens runs part 2 alone.
# docs/benchmarks.md records the results with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
records="${AUTHSEC_BENCH_RECORDS:-200000}"
secs="${AUTHSEC_BENCH_SECS:-10}"
. scripts/bench-dev.sh
bench_work

# The baseline first, kept aside; then the normal build (left in place).
cargo build --release --locked -p authsec-node --features unaudited-bench
cp "$CARGO_TARGET_DIR/release/authsec" "$work/authsec-unaudited"
cargo build --release --locked -p authsec-node -p authsec-chaos-tests --bin authsec --bin authsec-audit-bench
bin="$CARGO_TARGET_DIR/release/authsec"

if [ "${AUTHSEC_BENCH_ONLY:-}" != tokens ]; then
  echo "== export and verify, $records records"
  AUTHSEC_BIN="$bin" "$CARGO_TARGET_DIR/release/authsec-audit-bench" --records "$records" | tee "$work/export.json"
fi

echo "== issuance with and without its audit"
export XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data"
tokens() {
  local b="$1" name="$2" base dev_pid secret
  rm -rf "$work/cluster" "$work/config"
  bench_dev_cluster "$b" "$work/cluster" "$work/dev-$name.log"
  "$bin" oauth bench --url "https://127.0.0.1:$((base + 301))/oauth2/token" --cacert "$work/cluster/admin/ca.crt" \
    --basic "bench:$secret" --form 'grant_type=client_credentials&scope=orders:read' --connections 64 \
    --seconds "$secs" --warmup-seconds 2 | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'build': '$name', **r}))"
  kill "$dev_pid"; wait "$dev_pid" 2>/dev/null || true
}
for round in 1 2; do
  tokens "$bin" audited | tee -a "$work/tokens.json"
  tokens "$work/authsec-unaudited" unaudited | tee -a "$work/tokens.json"
done
python3 - "$work/export.json" "$work/tokens.json" <<'PY'
import json, sys
try:
    e = json.load(open(sys.argv[1]))
except FileNotFoundError:
    e = None  # AUTHSEC_BENCH_ONLY=tokens
best = lambda k: max(e[k])
if e: print(f"export stream: {best('stream_records_per_s'):.0f} records/s; CLI export: {best('cli_export_records_per_s'):.0f} records/s "
      f"(target 100,000); verify: {best('verify_records_per_s'):.0f} records/s (target 200,000); "
      f"{e['records']} records, {e['export_bytes'] / e['records']:.0f} bytes per line")
rows = [json.loads(l) for l in open(sys.argv[2])]
for a, u in zip(rows[0::2], rows[1::2]):
    print(f"tokens/s audited {a['tokens_per_s']:.0f}, unaudited {u['tokens_per_s']:.0f}: auditing costs "
          f"{(1 - a['tokens_per_s'] / u['tokens_per_s']) * 100:.1f}% of token throughput (target at most 10%)")
PY
