#!/usr/bin/env bash
# SVIDs checked with other people's verifiers, as a new user would against the dev cluster:
#  1. an X.509-SVID minted from a CSR on each of the three nodes verifies with `openssl verify`
#     against the trust bundle fetched from a different node, and has exactly one URI SAN;
#  2. a JWT-SVID from node 1 validates with PyJWT against the JWT bundle fetched from node 3,
#     with `aud` and `exp` checked (and a wrong audience is refused).
# Part of the test command; needs the built `authsec` binary (scripts/test.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bin="$CARGO_TARGET_DIR/debug/authsec"
py="${AUTHSEC_PY:-$HOME/.cache/authsec-py}/bin/python"
[ -x "$bin" ] || { echo "svid-acceptance: build first (cargo build -p authsec-node)" >&2; exit 1; }
[ -x "$py" ] || { echo "svid-acceptance: run scripts/setup.sh first (PyJWT virtualenv)" >&2; exit 1; }

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data"
unset AUTHSEC_ENDPOINT AUTHSEC_ADMIN_DIR AUTHSEC_OUTPUT

# Free ports: base+1..3 (gRPC) and base+101..103 (HTTP).
base="$("$py" - <<'PY'
import random, socket
for _ in range(200):
    b = random.randrange(20000, 60000)
    try:
        socks = []
        for p in [b + i for i in (1, 2, 3, 101, 102, 103)]:
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        for s in socks: s.close()
        print(b); break
    except OSError:
        for s in socks: s.close()
PY
)"
"$bin" dev --dir "$work/cluster" --base-port "$base" >"$work/dev.log" 2>&1 &
pid=$!
ep() { echo "127.0.0.1:$((base + $1))"; }

# Wait (bounded) until every node issues: keys published and active, within the freshness bound.
deadline=$((SECONDS + 90))
until "$bin" cluster status --json 2>/dev/null | "$py" -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if len(s) == 3 and all(n.get("issuing") for n in s) else 1)' 2>/dev/null; do
  if [ $SECONDS -ge $deadline ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "svid-acceptance: the dev cluster did not start issuing within 90 s" >&2
    tail -n 40 "$work/dev.log" >&2
    "$bin" cluster status >&2 || true
    exit 1
  fi
  sleep 0.2
done
"$bin" cluster status

entry="$("$bin" entry create --spiffe-id spiffe://authsec.local/acceptance/web \
  --dns-name web.acceptance.internal --output json | "$py" -c 'import json,sys; print(json.loads(sys.stdin.readline())["entry_id"])')"
echo "entry: $entry"

for n in 1 2 3; do
  other=$(( n % 3 + 1 ))
  d="$work/svid$n"
  mkdir -p "$d"
  # The workload's own key and CSR, made with openssl: only the CSR leaves it.
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=web" \
    -keyout "$d/key.pem" -out "$d/csr.pem" 2>/dev/null
  "$bin" svid x509 --endpoint "$(ep "$n")" --entry "$entry" --csr "$d/csr.pem" --out "$d" >/dev/null
  "$bin" bundle show --endpoint "$(ep "$other")" --format pem >"$d/bundle-from-node$other.pem"
  # svid.pem: leaf, then node n's intermediate.
  awk -v d="$d" '/BEGIN CERT/{i++} {print > (d "/cert" i ".pem")}' "$d/svid.pem"
  openssl verify -CAfile "$d/bundle-from-node$other.pem" -untrusted "$d/cert2.pem" "$d/cert1.pem"
  uris="$(openssl x509 -in "$d/cert1.pem" -noout -ext subjectAltName | grep -o 'URI:[^,]*' || true)"
  if [ "$(printf '%s\n' "$uris" | grep -c '^URI:')" != 1 ]; then
    echo "svid-acceptance: node $n's SVID has URI SANs: $uris" >&2; exit 1
  fi
  echo "node $n: $uris; issuer $(openssl x509 -in "$d/cert1.pem" -noout -issuer)"
  # The leaf is for the workload's key.
  [ "$(openssl x509 -in "$d/cert1.pem" -noout -pubkey)" = "$(openssl pkey -in "$d/key.pem" -pubout)" ]
done
serials="$(for n in 1 2 3; do openssl x509 -in "$work/svid$n/cert1.pem" -noout -serial; done | sort -u | wc -l)"
[ "$serials" = 3 ] || { echo "svid-acceptance: serial numbers repeat" >&2; exit 1; }

token="$("$bin" svid jwt --endpoint "$(ep 1)" --entry "$entry" --audience https://orders.internal)"
"$bin" bundle show --endpoint "$(ep 3)" >"$work/bundle.json"
"$py" - "$token" "$work/bundle.json" <<'PY'
import json, sys
import jwt
token, bundle = sys.argv[1], json.load(open(sys.argv[2]))
kid = jwt.get_unverified_header(token)["kid"]
jwk = next(k for k in bundle["keys"] if k.get("use") == "jwt-svid" and k.get("kid") == kid)
key = jwt.PyJWK.from_dict({k: v for k, v in jwk.items() if k != "use"}, algorithm="ES256")
claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="https://orders.internal",
                    options={"require": ["exp", "sub", "aud"]})
assert claims["sub"] == "spiffe://authsec.local/acceptance/web", claims
try:
    jwt.decode(token, key.key, algorithms=["ES256"], audience="https://elsewhere.internal")
    raise SystemExit("a wrong audience was accepted")
except jwt.InvalidAudienceError:
    pass
print(f"JWT-SVID from node 1 verified with node 3's bundle (kid {kid}): sub={claims['sub']} aud={claims['aud']} exp={claims['exp']}")
PY
echo "svid-acceptance: ok"
