# Sourced by the token benchmarks (bench-oauth.sh, bench-audit.sh).

# A work folder ($work) and the background processes ($pids) removed and stopped on exit.
bench_work() {
  work="$(mktemp -d)"
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

# Start `BIN dev` in DIR on a
# free base port (log in LOG), wait until its three nodes issue, and create the benchmark's
# client (`bench`, a role granting orders:read). Sets base, dev_pid (also added to pids) and
# secret. The caller sets XDG_CONFIG_HOME, so the dev CLI config stays in its work folder.
bench_dev_cluster() {
  local b="$1" dir="$2" log="$3"
  base="$(python3 scripts/free-base.py)"
  "$b" dev --dir "$dir" --base-port "$base" >"$log" 2>&1 &
  dev_pid=$!
  pids+=("$dev_pid")
  local deadline=$((SECONDS + 90))
  until "$b" cluster status --json 2>/dev/null | grep -q '"issuing":true.*"issuing":true.*"issuing":true'; do
    [ $SECONDS -lt $deadline ] || { tail -20 "$log"; exit 1; }
    sleep 0.2
  done
  "$b" role create bench-reader --permission orders:read >/dev/null
  secret="$("$b" client create --id bench --kind service --scope 'orders:*' --audience https://orders.example \
    --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')"
  "$b" bind bench-reader client:bench >/dev/null
}
