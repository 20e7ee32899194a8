# Sourced by the acceptance scripts: dev clusters on free loopback ports, each with its own CLI
# configuration, stopped and removed on exit. Needs `bin`, `py` and `work` set by the caller.
#   start_dev NAME TRUST_DOMAIN   start `authsec dev` (prints nothing; sets base_NAME)
#   cx NAME ARGS...               run the CLI against cluster NAME
#   ep NAME N                     node N's gRPC address
#   wait_issuing NAME             until all three nodes issue (bounded: 90 s)

dev_pids=()
dev_cleanup() {
  for p in "${dev_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap dev_cleanup EXIT
unset AUTHSEC_ENDPOINT AUTHSEC_ADMIN_DIR AUTHSEC_OUTPUT

# A base port whose gRPC (base+N), HTTP (base+100+N), federation (base+200+N) and OAuth
# (base+300+N) ports are free.
free_base() { python3 "$(dirname "${BASH_SOURCE[0]}")/free-base.py"; }

cx() { local n="$1"; shift; XDG_CONFIG_HOME="$work/$n/config" "$bin" "$@"; }

start_dev() {
  local n="$1" td="$2" base
  base="$(free_base)"
  printf -v "base_$n" '%s' "$base"
  mkdir -p "$work/$n"
  XDG_CONFIG_HOME="$work/$n/config" XDG_DATA_HOME="$work/$n/data" \
    "$bin" dev --dir "$work/$n/cluster" --base-port "$base" --trust-domain "$td" >"$work/$n/dev.log" 2>&1 &
  dev_pids+=($!)
}

ep() { local b="base_$1"; echo "127.0.0.1:$(( ${!b} + $2 ))"; }

wait_issuing() {
  local n="$1" deadline=$((SECONDS + 90))
  until cx "$n" cluster status --json 2>/dev/null | "$py" -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if len(s) == 3 and all(x.get("issuing") for x in s) else 1)' 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster $n does not issue within 90 s" >&2
      tail -n 30 "$work/$n/dev.log" >&2
      cx "$n" cluster status >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}
