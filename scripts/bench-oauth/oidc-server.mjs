// node-oidc-provider configured as the peer in scripts/bench-oauth.sh: client credentials with
// client_secret_basic, JWT access tokens signed ES256 (authsec's default) or EdDSA (Ed25519),
// the same algorithm as authsec in the run, over HTTPS (TLS like authsec), one Node process.
// Usage: node oidc-server.mjs PORT CERT.pem KEY.pem CLIENT_ID CLIENT_SECRET [ES256|EdDSA]
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, certFile, keyFile, clientId, clientSecret, alg = 'ES256'] = process.argv.slice(2);
const { privateKey } = alg === 'EdDSA'
  ? generateKeyPairSync('ed25519')
  : generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench', alg, use: 'sig' };
const resource = 'https://orders.example';

const provider = new Provider(`https://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    // The only key is of this algorithm.
    id_token_signed_response_alg: alg,
  }],
  cookies: { keys: [clientSecret] },
  jwks: { keys: [jwk] },
  scopes: ['orders:read'],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'orders:read',
        audience: resource,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg } },
      }),
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

https
  .createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, provider.callback())
  .listen(Number(port), '127.0.0.1', () => console.log(`node-oidc-provider on ${port}`));
