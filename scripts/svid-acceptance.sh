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
. scripts/dev-cluster.sh
start_dev a authsec.local
wait_issuing a
cx a cluster status

entry="$(cx a entry create --spiffe-id spiffe://authsec.local/acceptance/web \
  --dns-name web.acceptance.internal --output json | "$py" -c 'import json,sys; print(json.loads(sys.stdin.readline())["entry_id"])')"
echo "entry: $entry"

for n in 1 2 3; do
  other=$(( n % 3 + 1 ))
  d="$work/svid$n"
  mkdir -p "$d"
  # The workload's own key and CSR, made with openssl: only the CSR leaves it.
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=web" \
    -keyout "$d/key.pem" -out "$d/csr.pem" 2>/dev/null
  cx a svid x509 --endpoint "$(ep a "$n")" --entry "$entry" --csr "$d/csr.pem" --out "$d" >/dev/null
  cx a bundle show --endpoint "$(ep a "$other")" --format pem >"$d/bundle-from-node$other.pem"
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

token="$(cx a svid jwt --endpoint "$(ep a 1)" --entry "$entry" --audience https://orders.internal)"
cx a bundle show --endpoint "$(ep a 3)" >"$work/bundle.json"
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
