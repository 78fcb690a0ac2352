// Verifies hsmjwt tokens with npm's "jose", an implementation that shares no
// code with the service, so that an agreement proves the tokens are standard.
//
// Usage: node verify_jose.mjs INPUT.json
// INPUT.json: {"jwks": {...}, "issuer": "...", "audience": "...",
//              "tokens": [{"alg": "ES256", "token": "..."}, ...]}
// Prints one JSON line per token ({"alg", "ok", "kid"?, "error"?}), never the
// token itself, and exits 1 when any token fails to verify.
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify } from 'jose';

async function main() {
  if (process.argv.length !== 3) {
    console.error('usage: node verify_jose.mjs INPUT.json');
    process.exit(2);
  }
  const input = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  if (!Array.isArray(input.tokens) || input.tokens.length === 0) {
    console.error('verify_jose: no tokens in the input');
    process.exit(2);
  }
  const keySet = createLocalJWKSet(input.jwks);
  let failures = 0;
  for (const { alg, token } of input.tokens) {
    try {
      // The algorithm is pinned per token, as a careful relying party does
      // (RFC 8725 §3.1): jose then also refuses a key of another family.
      const { payload, protectedHeader } = await jwtVerify(token, keySet, {
        issuer: input.issuer,
        audience: input.audience,
        algorithms: [alg],
        typ: 'at+jwt',
        requiredClaims: ['iss', 'sub', 'aud', 'iat', 'nbf', 'exp', 'jti'],
      });
      if (protectedHeader.alg !== alg)
        throw new Error(`header alg ${protectedHeader.alg} is not ${alg}`);
      if (payload.token_type !== 'access')
        throw new Error(`token_type is ${JSON.stringify(payload.token_type)}`);
      console.log(JSON.stringify({ alg, ok: true, kid: protectedHeader.kid, sub: payload.sub }));
    } catch (e) {
      failures++;
      console.log(JSON.stringify({ alg, ok: false, error: `${e.code ?? e.name}: ${e.message}` }));
    }
  }
  process.exit(failures === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(`verify_jose: ${e.stack ?? e}`);
  process.exit(2);
});
