// A real OpenID provider (panva/oidc-provider) for host/tests/oidc.rs.
//
// Usage: node provider.mjs [PORT] [KID]
//
// Listens on 127.0.0.1:PORT (PORT 0 or absent: a free port chosen by the OS), with
// the issuer http://127.0.0.1:PORT, and prints one line `READY <issuer>` once it
// accepts connections. The signing key is a fresh RS256 key pair each start, named
// KID (default: random), so restarting with another KID is a key rotation.
//
// Clients use the client_credentials grant (secret = client id + "-secret") and get
// JWT access tokens for the resource (audience) they ask for with `resource=`. Each
// client's roles travel in the claim `https://guardian.test/roles`, an array of this
// provider's own role names; the test maps them to the server's roles.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] ?? process.env.OIDC_PORT ?? 0);
const kid = process.argv[3] ?? process.env.OIDC_KID ?? randomUUID();

// Audiences a client may ask a token for. `https://other.test` exists so that the
// test can obtain a correctly signed token for someone else's API.
const RESOURCES = ['https://guardian.test', 'https://other.test'];
const ROLES_CLAIM = 'https://guardian.test/roles';

// client id -> the roles its tokens carry.
const CLIENTS = {
  reporter: ['reporter'],
  builder: ['plugin-dev'],
  researcher: ['researcher'],
  operator: ['ops-admin'],
  // Values nobody maps: a valid token without any app role.
  stranger: ['guest', 'admin '],
};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };

// Listen first, so that a port chosen by the OS is known before the issuer is named.
const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: Object.entries(CLIENTS).map(([id, roles]) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    guardian_roles: roles,
  })),
  extraClientMetadata: { properties: ['guardian_roles'] },
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomUUID()] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCES[0],
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (!RESOURCES.includes(resource)) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: 'api',
          audience: resource,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims: (ctx, token) => {
    const client = ctx.oidc.client;
    if (token.kind !== 'ClientCredentials' || !client) {
      return undefined;
    }
    return { [ROLES_CLAIM]: client.guardian_roles ?? [] };
  },
});
// Loopback http only: no proxy in front.
provider.proxy = false;

server.on('request', provider.callback());

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

console.log(`READY ${issuer}`);
