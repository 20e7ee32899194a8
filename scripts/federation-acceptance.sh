#!/usr/bin/env bash
# Federation, as a user sets it up between two dev clusters with different trust domains:
#  - cluster B registers cluster A's trust domain (https_spiffe profile: A's node 1 serves its
#    bundle endpoint with its SVID; B starts from A's X.509 authorities only, obtained out of
#    band) and its leader fetches A's whole bundle (with A's JWT keys) from the endpoint;
#  - a B entry that federates with A gets A's bundle with its SVID; an X.509-SVID minted in A
#    verifies with it (`openssl verify`) and not with B's own bundle; a JWT-SVID minted in A
#    verifies (PyJWT) with the JWT keys B recorded for A.
# Part of the test command; needs the built `authsec` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bin="$CARGO_TARGET_DIR/debug/authsec"
py="${AUTHSEC_PY:-$HOME/.cache/authsec-py}/bin/python"
[ -x "$bin" ] || { echo "federation-acceptance: build first" >&2; exit 1; }
[ -x "$py" ] || { echo "federation-acceptance: run scripts/setup.sh first" >&2; exit 1; }

work="$(mktemp -d)"
. scripts/dev-cluster.sh

start_dev a alpha.test
start_dev b beta.test
wait_issuing a
wait_issuing b

# Out of band: A's X.509 authorities only (B learns A's JWT keys from A's endpoint).
cx a bundle show >"$work/a-full.json"
"$py" - "$work/a-full.json" "$work/a-x509.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["keys"] = [k for k in doc["keys"] if k.get("use") == "x509-svid"]
json.dump(doc, open(sys.argv[2], "w"))
PY
cx b federation create --trust-domain alpha.test --url "https://127.0.0.1:$((base_a + 201))/" \
  --profile https_spiffe --endpoint-spiffe-id spiffe://alpha.test/authsec/node/1 --bundle "$work/a-x509.json"

deadline=$((SECONDS + 60))
until [ "$(cx b federation list --output json | "$py" -c 'import json,sys; print(len(json.loads(sys.stdin.readline())["jwt_kids"]))')" = 3 ]; do
  [ $SECONDS -lt $deadline ] || { echo "federation-acceptance: B never fetched A's bundle" >&2; tail -n 30 "$work/b/dev.log" >&2; exit 1; }
  sleep 0.2
done
cx b federation list

# A workload in A.
a_entry="$(cx a entry create --spiffe-id spiffe://alpha.test/payments --output json | "$py" -c 'import json,sys; print(json.loads(sys.stdin.readline())["entry_id"])')"
cx a svid x509 --entry "$a_entry" --out "$work/a-svid" >/dev/null
awk -v d="$work/a-svid" '/BEGIN CERT/{i++} {print > (d "/cert" i ".pem")}' "$work/a-svid/svid.pem"
# A workload in B that federates with A gets A's bundle with its SVID.
b_entry="$(cx b entry create --spiffe-id spiffe://beta.test/orders --federates-with alpha.test --output json | "$py" -c 'import json,sys; print(json.loads(sys.stdin.readline())["entry_id"])')"
cx b svid x509 --endpoint "$(ep b 3)" --entry "$b_entry" --out "$work/b-svid"
ls "$work/b-svid/federated-alpha.test.pem" >/dev/null
openssl verify -CAfile "$work/b-svid/federated-alpha.test.pem" -untrusted "$work/a-svid/cert2.pem" "$work/a-svid/cert1.pem"
if openssl verify -CAfile "$work/b-svid/bundle.pem" -untrusted "$work/a-svid/cert2.pem" "$work/a-svid/cert1.pem" >/dev/null 2>&1; then
  echo "federation-acceptance: A's SVID verified with B's own bundle" >&2; exit 1
fi
echo "A's X.509-SVID verifies in B with the federated bundle, and not with B's own"

token="$(cx a svid jwt --entry "$a_entry" --audience spiffe://beta.test/orders)"
cx b federation bundle alpha.test >"$work/b-view-of-a.json"
"$py" - "$token" "$work/b-view-of-a.json" <<'PY'
import json, sys
import jwt
token, bundle = sys.argv[1], json.load(open(sys.argv[2]))
kid = jwt.get_unverified_header(token)["kid"]
jwk = next(k for k in bundle["keys"] if k.get("use") == "jwt-svid" and k.get("kid") == kid)
key = jwt.PyJWK.from_dict({k: v for k, v in jwk.items() if k != "use"}, algorithm="ES256")
claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="spiffe://beta.test/orders",
                    options={"require": ["exp", "sub", "aud"]})
assert claims["sub"] == "spiffe://alpha.test/payments", claims
print(f"A's JWT-SVID verifies with B's recorded bundle for A (kid {kid})")
PY
echo "federation-acceptance: ok"
