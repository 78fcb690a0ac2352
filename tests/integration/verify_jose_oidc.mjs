// Verifies an hsmjwt ID token as an OpenID Connect relying party would,
// with npm's "jose" (no code shared with the service): signature against the
// JWKS, iss, aud = the client, the algorithms discovery lists, typ JWT, the
// nonce the client sent, and azp and auth_time present.
//
// Usage: node verify_jose_oidc.mjs INPUT.json
// INPUT.json: {"jwks": {...}, "issuer": "...", "client_id": "...",
//              "algorithms": ["ES256", "RS256"], "nonce": "...", "token": "..."}
// Prints one JSON line ({"ok", "alg"?, "error"?}), never the token, and exits
// 0 when it verifies, 1 when not.
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify } from 'jose';

async function main() {
  if (process.argv.length !== 3) {
    console.error('usage: node verify_jose_oidc.mjs INPUT.json');
    process.exit(2);
  }
  const input = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  try {
    const { payload, protectedHeader } = await jwtVerify(input.token, createLocalJWKSet(input.jwks), {
      issuer: input.issuer,
      audience: input.client_id,
      algorithms: input.algorithms,
      typ: 'JWT',
      requiredClaims: ['iss', 'sub', 'aud', 'iat', 'exp', 'nonce', 'auth_time', 'azp'],
    });
    if (payload.nonce !== input.nonce)
      throw new Error('nonce is not the one sent');
    if (payload.azp !== input.client_id)
      throw new Error('azp is not the client');
    console.log(JSON.stringify({ ok: true, alg: protectedHeader.alg }));
    process.exit(0);
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: `${e.code ?? e.name}: ${e.message}` }));
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(`verify_jose_oidc: ${e.stack ?? e}`);
  process.exit(2);
});
