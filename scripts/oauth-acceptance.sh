#!/usr/bin/env bash
# OAuth 2.0 as a new user would try it against the dev cluster, checked from outside the
# project:
#  1. a client made with the CLI gets a token with curl from each of the three nodes;
#  2. every token validates with PyJWT against the JWKS served by every node, with typ, iss,
#     aud, exp and the RFC 9068 claims checked;
#  3. a token revoked through node 1 is reported {"active": false} by node 2's introspection
#     within one second of the revoke's answer;
#  4. every issued token is in the event log within 5 s.
# Part of the test command; needs the built `authsec` binary (scripts/test.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bin="$CARGO_TARGET_DIR/debug/authsec"
py="${AUTHSEC_PY:-$HOME/.cache/authsec-py}/bin/python"
[ -x "$bin" ] || { echo "oauth-acceptance: build first (cargo build -p authsec-node)" >&2; exit 1; }
[ -x "$py" ] || { echo "oauth-acceptance: run scripts/setup.sh first (PyJWT virtualenv)" >&2; exit 1; }

work="$(mktemp -d)"
. scripts/dev-cluster.sh
start_dev a authsec.local
wait_issuing a
ca="$work/a/cluster/admin/ca.crt"
url() { echo "https://127.0.0.1:$(( base_a + 300 + $1 ))"; }

cx a role create orders-reader --permission orders:read --permission orders:list >/dev/null
secret="$(cx a client create --id billing --kind service --scope 'orders:*' --default-scope orders:read \
  --audience https://orders.example -o json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')"
cx a bind orders-reader client:billing >/dev/null
rs_secret="$(cx a client create --id orders-api --kind service --audience https://orders.example -o json \
  | "$py" -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')"

for n in 1 2 3; do
  curl -sS --fail-with-body --cacert "$ca" -u "billing:$secret" -d grant_type=client_credentials \
    -d scope=orders:read "$(url "$n")/oauth2/token" >"$work/token$n.json"
  curl -sS --fail --cacert "$ca" "$(url "$n")/.well-known/jwks.json" >"$work/jwks$n.json"
  echo "node $n: $(head -c 60 "$work/token$n.json")..."
done

"$py" - "$work" "$(url 1)" "$(url 2)" "$(url 3)" <<'PY'
import json, sys, time
import jwt
work, issuers = sys.argv[1], sys.argv[2:]
for n in (1, 2, 3):
    token = json.load(open(f"{work}/token{n}.json"))["access_token"]
    head = jwt.get_unverified_header(token)
    assert head["typ"] == "at+jwt", head
    for m in (1, 2, 3):
        jwks = jwt.PyJWKSet.from_dict(json.load(open(f"{work}/jwks{m}.json")))
        key = next(k for k in jwks.keys if k.key_id == head["kid"])
        claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="https://orders.example",
                            issuer=issuers[n - 1],
                            options={"require": ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]})
        assert claims["sub"] == "billing" and claims["client_id"] == "billing", claims
        assert claims["scope"] == "orders:read", claims
        assert claims["exp"] > time.time(), claims
    try:
        jwt.decode(token, key.key, algorithms=["ES256"], audience="https://other.example", issuer=issuers[n - 1])
        raise SystemExit("a wrong audience was accepted")
    except jwt.InvalidAudienceError:
        pass
    print(f"token from node {n} ({head['kid']}) validates with the JWKS of nodes 1, 2 and 3")
PY

tok="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$work/token1.json")"
active() {
  curl -sS --fail-with-body --cacert "$ca" -u "orders-api:$rs_secret" --data-urlencode "token=$tok" \
    "$(url 2)/oauth2/introspect"
}
[ "$(active | "$py" -c 'import json,sys; print(json.load(sys.stdin)["active"])')" = True ]
curl -sS --fail-with-body --cacert "$ca" -u "billing:$secret" --data-urlencode "token=$tok" \
  "$(url 1)/oauth2/revoke" >/dev/null
acked=$(date +%s%N)
until [ "$(active)" = '{"active":false}' ]; do
  if [ $(( ($(date +%s%N) - acked) / 1000000 )) -gt 1000 ]; then
    echo "oauth-acceptance: node 2 still reports the revoked token active after 1 s" >&2; exit 1
  fi
  sleep 0.02
done
echo "revoked via node 1: node 2 reports {\"active\": false} after $(( ($(date +%s%N) - acked) / 1000000 )) ms"

# Every issued token's jti is in the audit log within 5 s.
jtis="$("$py" - "$work" <<'PY'
import json, sys, base64
for n in (1, 2, 3):
    t = json.load(open(f"{sys.argv[1]}/token{n}.json"))["access_token"].split(".")[1]
    print(json.loads(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)))["jti"])
PY
)"
deadline=$((SECONDS + 5))
for j in $jtis; do
  until XDG_CONFIG_HOME="$work/a/config" timeout 10 "$bin" events tail --endpoint "$(ep a 1)" 2>/dev/null | grep -q "\"id\":\"$j\""; do
    [ $SECONDS -lt $deadline ] || { echo "oauth-acceptance: token $j is not in the event log after 5 s" >&2; exit 1; }
    sleep 0.2
  done
done
echo "the three tokens are credential.issued records in the event log"
echo "oauth-acceptance: ok"
