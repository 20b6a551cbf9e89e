// A real OpenID Provider for tests: panva's oidc-provider 8.8.1 (the last major that supports Node 20 without a warning).
// Run by tests/support/peers.py:  node tests/peers/oidc_provider.mjs PORT [REDIRECT_URI,...]
// (or PEER_PORT / PEER_REDIRECT_URIS). Binds 127.0.0.1 only; the issuer is http://localhost:PORT.
// Logins go through devInteractions (any password), so tests can drive them with plain HTTP.
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number(process.argv[2] || process.env.PEER_PORT || 3000);
const redirectUris = (process.argv[3] || process.env.PEER_REDIRECT_URIS || 'http://localhost:8765/callback')
  .split(',').filter(Boolean);
const issuer = `http://localhost:${port}`;

export const CLIENT_ID = 'pgwarden';
export const CLIENT_SECRET = 'pgwarden-peer-secret';
// A second client whose device codes live 1 s, so "expired_token" can be tested without waiting 10 minutes.
export const SHORT_DEVICE_CLIENT_ID = 'pgwarden-short-device';

const accounts = {
  alice: { sub: 'alice', email: 'alice@example.com', email_verified: true, name: 'Alice', groups: ['admins'] },
  bob: { sub: 'bob', email: 'bob@example.com', email_verified: true, name: 'Bob', groups: [] },
  // carol's address was never confirmed at the provider: nothing may map her by email.
  carol: { sub: 'carol', email: 'carol@example.com', email_verified: false, name: 'Carol', groups: [] },
};

// Keys made per process but handed over explicitly, so oidc-provider neither warns about "development-only
// signing keys" nor about missing cookie keys. Tests read the public half from /jwks.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'peer-rs256', alg: 'RS256', use: 'sig' };

// The default memory adapter forgets expired entries, so an expired device code answers "invalid_grant"
// instead of RFC 8628's "expired_token". This one keeps them (the process lives for one test module).
const store = new Map();
class KeepingAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload) {
    store.set(this.key(id), payload);
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, id);
    if (this.model === 'Session') store.set(`sessionUid:${payload.uid}`, id);
    if (payload.grantId) store.set(`grant:${payload.grantId}`, [...(store.get(`grant:${payload.grantId}`) || []), this.key(id)]);
  }
  async find(id) { return store.get(this.key(id)); }
  async findByUserCode(code) { return this.find(store.get(`userCode:${code}`)); }
  async findByUid(uid) { return this.find(store.get(`sessionUid:${uid}`)); }
  async consume(id) { const v = store.get(this.key(id)); if (v) v.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const key of store.get(`grant:${grantId}`) || []) store.delete(key);
    store.delete(`grant:${grantId}`);
  }
}

const confidential = {
  client_secret: CLIENT_SECRET,
  redirect_uris: redirectUris,
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  scope: 'openid email profile groups offline_access',
};

const provider = new Provider(issuer, {
  adapter: KeepingAdapter,
  clients: [
    { client_id: CLIENT_ID, ...confidential },
    { client_id: SHORT_DEVICE_CLIENT_ID, ...confidential },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: ['pgwarden-test-peer-cookie-key'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  pkce: { methods: ['S256'], required: () => true },
  ttl: {
    DeviceCode: (ctx, code, client) => (client.clientId === SHORT_DEVICE_CLIENT_ID ? 1 : 600),
  },
  async findAccount(ctx, id) {
    const account = accounts[id];
    return account && { accountId: id, async claims() { return account; } };
  },
});

const server = provider.listen(port, '127.0.0.1', () => console.log(`listening ${issuer}`));
// Stopped by PID from Python: close the listener and go.
process.on('SIGTERM', () => server.close(() => process.exit(0)));
