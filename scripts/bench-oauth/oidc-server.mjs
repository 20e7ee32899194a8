// node-oidc-provider configured as the peer in scripts/bench-oauth.sh: client credentials with
// client_secret_basic, JWT access tokens signed ES256 (the same algorithm as authsec's
// default), over HTTPS (TLS like authsec), one Node process.
// Usage: node oidc-server.mjs PORT CERT.pem KEY.pem CLIENT_ID CLIENT_SECRET
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, certFile, keyFile, clientId, clientSecret] = process.argv.slice(2);
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench', alg: 'ES256', use: 'sig' };
const resource = 'https://orders.example';

const provider = new Provider(`https://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    // The only key is ES256.
    id_token_signed_response_alg: 'ES256',
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
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

https
  .createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, provider.callback())
  .listen(Number(port), '127.0.0.1', () => console.log(`node-oidc-provider on ${port}`));
