"""An AI agent in Python against authsec, with two standard libraries authsec did not write:
py-spiffe (the SPIFFE Workload API) and Authlib (OAuth 2.0).

1. py-spiffe fetches this process's X.509-SVID from the authsec agent's socket
   (SPIFFE_ENDPOINT_SOCKET), and a JWT-SVID, which it validates against the JWT bundle it
   fetched too.
2. Authlib asks authsec's token endpoint for an access token, authenticating with the SVID
   over mutual TLS (tls_client_auth): no secret anywhere.

Environment: SPIFFE_ENDPOINT_SOCKET, TOKEN_ENDPOINT, CLIENT_ID, SCOPE, CA_FILE (the
cluster's root, which signs the nodes' certificates). Prints one JSON line.
"""

import json
import os
import tempfile

from authlib.integrations.requests_client import OAuth2Session
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import JwtSvid, WorkloadApiClient

with WorkloadApiClient() as client:  # SPIFFE_ENDPOINT_SOCKET
    svid = client.fetch_x509_svid()
    jwt = client.fetch_jwt_svid(audience={"python-demo"})
    bundles = client.fetch_jwt_bundles()
    checked = JwtSvid.parse_and_validate(
        jwt.token, bundles.get_bundle_for_trust_domain(jwt.spiffe_id.trust_domain), {"python-demo"}
    )

with tempfile.TemporaryDirectory() as d:
    cert, key = os.path.join(d, "svid.pem"), os.path.join(d, "svid.key")
    svid.save(cert, key, Encoding.PEM)
    # tls_client_auth: the client is named in the body, proven by the certificate.
    oauth = OAuth2Session(
        client_id=os.environ["CLIENT_ID"],
        token_endpoint_auth_method="none",
        scope=os.environ.get("SCOPE", ""),
    )
    token = oauth.fetch_token(
        os.environ["TOKEN_ENDPOINT"],
        grant_type="client_credentials",
        cert=(cert, key),
        verify=os.environ["CA_FILE"],
    )

print(
    json.dumps(
        {
            "x509_svid": str(svid.spiffe_id),
            "jwt_svid_validated": str(checked.spiffe_id),
            "token_type": token["token_type"],
            "scope": token.get("scope", ""),
            "expires_in": token["expires_in"],
        }
    )
)
