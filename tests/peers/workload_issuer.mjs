// A workload-identity issuer for tests: oauth2-mock-server 8.2.3 shaped like GitHub Actions' OIDC tokens.
// Run by tests/support/peers.py:  node tests/peers/workload_issuer.mjs PORT [AUDIENCE]
// (or PEER_PORT / PEER_AUDIENCE). Binds 127.0.0.1 only; the issuer is http://localhost:PORT.
//
// Mint a token with `POST /token  grant_type=client_credentials`. Optional form fields shape it for negative
// tests: `aud` (oauth2-mock-server's own), `expires_in_s` (negative gives an already expired token),
// `repository`, `ref`, `workflow`, `actor`.
import { OAuth2Server } from 'oauth2-mock-server';

const port = Number(process.argv[2] || process.env.PEER_PORT || 3001);
const defaultAudience = process.argv[3] || process.env.PEER_AUDIENCE || 'pgwarden';
const issuer = `http://localhost:${port}`;

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

server.service.on('beforeTokenSigning', (token, req) => {
  const body = req.body || {};
  const now = Math.floor(Date.now() / 1000);
  const repository = body.repository || 'acme/app';
  const ref = body.ref || 'refs/heads/main';
  // The claims GitHub Actions puts in its OIDC token (docs.github.com, "About security hardening with OpenID Connect").
  Object.assign(token.payload, {
    sub: `repo:${repository}:ref:${ref}`,
    aud: body.aud || defaultAudience,
    repository,
    repository_owner: repository.split('/')[0],
    ref,
    ref_type: 'branch',
    workflow: body.workflow || 'deploy',
    actor: body.actor || 'octocat',
    event_name: 'push',
    runner_environment: 'github-hosted',
    jti: `${now}-${Math.random().toString(36).slice(2)}`,
  });
  if (body.expires_in_s !== undefined) {
    const expiresIn = Number(body.expires_in_s);
    token.payload.exp = now + expiresIn;
    // A token that expired long ago was also issued long ago.
    token.payload.iat = Math.min(now, now + expiresIn - 60);
    token.payload.nbf = token.payload.iat;
  }
  delete token.payload.scope;
});

await server.start(port, '127.0.0.1');
server.issuer.url = issuer; // start() would advertise 127.0.0.1; tests and peers agree on localhost.
console.log(`listening ${issuer}`);
process.on('SIGTERM', () => server.stop().then(() => process.exit(0)));
