#!/usr/bin/env bash
# Benchmark: OAuth 2.0 client_credentials tokens per second, authsec beside node-oidc-provider
# 8.8.1 (Node 20) in the same run, on this machine, with:
#  - the same load generator (`authsec oauth bench`: HTTP/1.1 keep-alive, 64 connections,
#    client_secret_basic, one form request after another on each connection);
#  - the same signature algorithm (ES256 JWT access tokens, or EdDSA with
#    AUTHSEC_BENCH_ALG=EdDSA) and the same transport (TLS 1.3 on loopback, a server
#    certificate for 127.0.0.1);
#  - the cost per token: the server's CPU time (utime + stime from /proc) per token, against
#    one signature of that algorithm from `openssl speed ecdsap256` (or `ed25519`) in the
#    same run.
# authsec runs as a three-node dev cluster in one process (release build): its CPU includes all
# three nodes, the Raft replication of the issuance records and the outbox fsyncs. The load
# generator shares the two cores with the servers in both cases.
# docs/benchmarks.md records the results with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
cargo build --release --locked -p authsec-node
bin="$CARGO_TARGET_DIR/release/authsec"
secs="${AUTHSEC_BENCH_SECS:-10}"
conns="${AUTHSEC_BENCH_CONNECTIONS:-64}"
oidc="$HOME/.cache/authsec-oidc"
if [ ! -d "$oidc/node_modules/oidc-provider" ]; then
  command -v npm >/dev/null || { echo "bench-oauth: needs Node 20 and npm for node-oidc-provider" >&2; exit 1; }
  mkdir -p "$oidc"
  (cd "$oidc" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --no-audit --no-fund oidc-provider@8.8.1 >/dev/null)
fi

. scripts/bench-dev.sh
bench_work
tck="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

alg="${AUTHSEC_BENCH_ALG:-ES256}"
case "$alg" in
  ES256) speed=ecdsap256 line='256 bits ecdsa' ;;
  EdDSA) speed=ed25519 line='EdDSA \(Ed25519\)' ;;
  *) echo "bench-oauth: AUTHSEC_BENCH_ALG is ES256 or EdDSA, not $alg" >&2; exit 2 ;;
esac
export AUTHSEC_DEV_TOKEN_ALG="$alg"
echo "== openssl speed -seconds 5 $speed (one core)"
sign_s="$(openssl speed -seconds 5 "$speed" 2>/dev/null | awk "/$line/ {print \$(NF-1)}")"
echo "$alg signatures per second: $sign_s"

# One run: bench URL(s) while watching PID's CPU. Prints the load generator's JSON with the
# server's CPU per token added.
run() {
  local name="$1" pid="$2" secret="$3"; shift 3
  local args=()
  for u in "$@"; do args+=(--url "$u"); done
  local before after out
  before="$(cpu_ticks "$pid")"
  out="$("$bin" oauth bench "${args[@]}" --cacert "$ca" --basic "bench:$secret" \
    --form 'grant_type=client_credentials&scope=orders:read' --connections "$conns" \
    --seconds "$secs" --warmup-seconds 2)"
  after="$(cpu_ticks "$pid")"
  python3 - "$name" "$out" "$before" "$after" "$tck" "$sign_s" "$secs" <<'PY'
import json, sys
name, out, before, after, tck, sign_s, secs = sys.argv[1:]
r = json.loads(out)
# CPU over warm-up and measurement; tokens over the measurement only: scale by the time.
cpu_s = (int(after) - int(before)) / int(tck) * float(r["seconds"]) / (float(r["seconds"]) + 2)
per_token_us = cpu_s / max(r["tokens"], 1) * 1e6
sig_us = 1e6 / float(sign_s)
print(f"{name}: {r['tokens_per_s']:.0f} tokens/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
      f"failures {r['failures']}, server CPU {per_token_us:.1f} us/token = {per_token_us / sig_us:.2f} signatures")
print("RESULT " + json.dumps({"name": name, "tokens_per_s": r["tokens_per_s"], "p99_ms": r["p99_ms"],
      "failures": r["failures"], "cpu_us_per_token": per_token_us, "signatures_per_token": per_token_us / sig_us}))
PY
}

# The peer: node-oidc-provider over HTTPS with a certificate for 127.0.0.1.
# A CA and a P-256 leaf for 127.0.0.1 (rustls refuses a CA certificate as the server's own).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "/CN=bench CA" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$work/oidc.key" -out "$work/oidc.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext"
openssl x509 -req -in "$work/oidc.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
  -extfile "$work/ext" -out "$work/oidc.crt" 2>/dev/null
ca="$work/ca.crt"
port="$(free_port)"
secret_oidc="bench-secret-$(openssl rand -hex 16)"
(cd "$oidc" && cp "$OLDPWD/scripts/bench-oauth/oidc-server.mjs" ./oidc-server.mjs && \
  exec node oidc-server.mjs "$port" "$work/oidc.crt" "$work/oidc.key" bench "$secret_oidc" "$alg") >"$work/oidc.log" 2>&1 &
pids+=($!)
oidc_pid=$!
for _ in $(seq 100); do grep -q "node-oidc-provider on" "$work/oidc.log" && break; sleep 0.1; done
grep -q "node-oidc-provider on" "$work/oidc.log" || { cat "$work/oidc.log"; exit 1; }
echo "== node-oidc-provider 8.8.1 (Node $(node --version)), one process"
peer="$(run "node-oidc-provider" "$oidc_pid" "$secret_oidc" "https://127.0.0.1:$port/token")"
echo "$peer" | grep -v '^RESULT'
kill "$oidc_pid"; wait "$oidc_pid" 2>/dev/null || true

# authsec: a three-node dev cluster.
export XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data"
bench_dev_cluster "$bin" "$work/cluster" "$work/dev.log"
ca="$work/cluster/admin/ca.crt"
u() { echo "https://127.0.0.1:$((base + 300 + $1))/oauth2/token"; }
echo "== authsec, three-node cluster in one process"
one="$(run "authsec, one node" "$dev_pid" "$secret" "$(u 1)")"
echo "$one" | grep -v '^RESULT'
three="$(run "authsec, spread over three nodes" "$dev_pid" "$secret" "$(u 1)" "$(u 2)" "$(u 3)")"
echo "$three" | grep -v '^RESULT'
python3 - "$(echo "$peer" | sed -n 's/^RESULT //p')" "$(echo "$one" | sed -n 's/^RESULT //p')" "$(echo "$three" | sed -n 's/^RESULT //p')" <<'PY'
import json, sys
peer, one, three = (json.loads(a) for a in sys.argv[1:])
for r in (one, three):
    print(f"{r['name']}: {r['tokens_per_s'] / peer['tokens_per_s']:.2f}x node-oidc-provider's throughput, "
          f"{r['signatures_per_token']:.2f} signatures of CPU per token (targets: 3x, 2 signatures)")
PY
