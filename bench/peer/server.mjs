// The bench's reference peer: hsmjwtd's token routes written the way a
// careful Node.js developer would, on npm's jose with in-memory keys.  It is
// the yardstick of bench/bench.py, so it must do the same work as hsmjwtd
// for each route (same bodies, claims, checks and answers) and nothing less;
// see bench/README.md.
//
//   PEER_PORT        the port to listen on, 127.0.0.1 (required)
//   PEER_WORKERS     node:cluster workers (default 2, 1..64)
//   PEER_ISSUER      iss of its tokens (default http://127.0.0.1:PEER_PORT)
//   PEER_ADMIN_FILE  where the admin bearer token is written (mode 0600)
//                    once every worker listens; then `ready` on stdout
//
// The primary generates the keys and hands them to the workers as JWK over
// the cluster's IPC channel (never in the environment, which /proc shows),
// so that every worker signs with the same keys and a token issued by one
// verifies on all.
import cluster from "node:cluster";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import process from "node:process";
import * as jose from "jose";

const ALGS = ["ES256", "RS256", "PS256", "EdDSA"];
const RSA_BITS = 2048;
const MAX_BODY = 64 * 1024;          // hsmjwtd's max_body default
const MAX_TOKEN = 16 * 1024;         // hsmjwtd refuses longer tokens as malformed
const ACCESS_TTL = 3600;             // access_ttl
const MAX_TTL = 2592000;             // max_ttl
const LEEWAY = 30;                   // leeway
const ADMIN_TTL = 3600;
const DEFAULT_AUDIENCE = "api";
const MAX_FIELD = 1024;
const STATUS_LIST_SIZE = 65536;      // entries per status list, as hsmjwtd's
// The per-worker registry is in memory: bounded like every resource a
// request can make the server allocate; expired records go first.
const MAX_RECORDS = 1 << 21;
const REGISTERED = new Set(["subject", "alg", "audience", "scope", "client_id", "expires_in"]);

function env(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === "" ? fallback : v;
}

function intEnv(name, fallback, min, max) {
  const text = env(name, String(fallback));
  const v = Number(text);
  if (!/^[0-9]+$/.test(text) || v < min || v > max) {
    console.error(`peer: ${name}=${text} must be an integer in ${min}..${max}`);
    process.exit(2);
  }
  return v;
}

const port = intEnv("PEER_PORT", 0, 1, 65535);
const workers = intEnv("PEER_WORKERS", 2, 1, 64);
const issuer = env("PEER_ISSUER", `http://127.0.0.1:${port}`);

if (cluster.isPrimary) {
  await primary();
} else {
  worker();
}

async function primary() {
  const keys = [];
  for (const alg of ALGS) {
    const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, modulusLength: RSA_BITS });
    const jwk = await jose.exportJWK(privateKey);
    const kid = await jose.calculateJwkThumbprint(jwk, "sha256");
    keys.push({ alg, kid, jwk });
  }
  let listening = 0;
  let stopping = false;
  for (let i = 0; i < workers; i++) {
    const w = cluster.fork();
    // Asked for by the worker once it listens for the answer: a message
    // sent before that would be lost.
    w.on("message", (msg) => {
      if (msg === "keys?") w.send({ keys });
    });
    w.on("listening", async () => {
      if (++listening === workers) {
        await ready(keys);
      }
    });
  }
  cluster.on("exit", (w, code, signal) => {
    if (!stopping) {
      // A worker that dies leaves a peer that is not the one measured.
      console.error(`peer: worker ${w.process.pid} exited (code ${code}, signal ${signal}); stopping`);
      stop(1);
    }
  });
  const stop = (status) => {
    if (stopping) return;
    stopping = true;
    let left = Object.keys(cluster.workers).length;
    if (left === 0) process.exit(status);
    for (const w of Object.values(cluster.workers)) {
      w.once("exit", () => {
        if (--left === 0) process.exit(status);
      });
      w.process.kill("SIGTERM");
    }
  };
  process.on("SIGTERM", () => stop(0));
  process.on("SIGINT", () => stop(0));
}

// The admin bearer token, minted like `hsmjwtctl mint --roles admin`.
async function ready(keys) {
  const file = env("PEER_ADMIN_FILE", "");
  if (file !== "") {
    const { alg, kid, jwk } = keys[0];
    const key = await jose.importJWK(jwk, alg);
    const now = Math.floor(Date.now() / 1000);
    const token = await new jose.SignJWT({
      iss: issuer, sub: "admin", aud: [issuer], iat: now, nbf: now, exp: now + ADMIN_TTL,
      jti: crypto.randomBytes(16).toString("base64url"), token_type: "access", roles: ["admin"],
    }).setProtectedHeader({ alg, kid, typ: "at+jwt" }).sign(key);
    // Written whole or not at all: the bench reads it as soon as it exists.
    const tmp = `${file}.tmp`;
    fs.writeFileSync(tmp, token + "\n", { mode: 0o600 });
    fs.renameSync(tmp, file);
  }
  console.log("ready");
}

function worker() {
  process.once("message", (msg) => {
    start(msg).catch((e) => {
      console.error(`peer: worker ${process.pid} cannot start: ${e.message}`);
      process.exit(1);
    });
  });
  process.on("SIGTERM", () => process.exit(0));
  process.send("keys?");
}

async function start({ keys }) {
  const signers = new Map();
  const publicKeys = [];
  for (const { alg, kid, jwk } of keys) {
    signers.set(alg, { kid, key: await jose.importJWK(jwk, alg) });
    const { d, p, q, dp, dq, qi, ...pub } = jwk;
    publicKeys.push({ ...pub, kid, alg, use: "sig" });
  }
  publicKeys.sort((a, b) => (a.kid < b.kid ? -1 : a.kid > b.kid ? 1 : 0));
  const keySet = jose.createLocalJWKSet({ keys: publicKeys });
  // The JWKS never changes while the peer runs: its bytes and ETag are made
  // once.
  const jwksBody = Buffer.from(JSON.stringify({ keys: publicKeys }));
  const jwksEtag = `"${crypto.createHash("sha256").update(jwksBody).digest("base64url").slice(0, 22)}"`;
  const registry = new Map();   // jti -> { exp, status }
  // Status-list indices as hsmjwtd hands them out, never twice: the peer
  // serves no status list, but its tokens carry the same claims (and size).
  let statusIdx = cluster.worker.id - 1;

  const ctx = { signers, keySet, jwksBody, jwksEtag, registry };
  ctx.nextStatusIdx = () => {
    const idx = statusIdx;
    statusIdx += workers;
    return idx;
  };

  const server = http.createServer((req, res) => {
    route(ctx, req, res).catch((e) => {
      console.error(`peer: ${req.method} ${req.url}: ${e.message}`);
      if (!res.headersSent) reply(res, 500, { error: "server_error" });
      else res.destroy();
    });
  });
  // evhttp's idle timeout in hsmjwtd.
  server.keepAliveTimeout = 10000;
  server.headersTimeout = 15000;
  server.requestTimeout = 30000;
  server.listen(port, "127.0.0.1");
}

const JSON_HEADERS = {
  "content-type": "application/json",
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
};

function reply(res, status, obj, extra) {
  const body = JSON.stringify(obj) + "\n";
  res.writeHead(status, { ...JSON_HEADERS, ...extra, "content-length": Buffer.byteLength(body) });
  res.end(body);
}

class HttpError extends Error {
  constructor(status, error, description, headers) {
    super(description);
    this.status = status;
    this.error = error;
    this.headers = headers;
  }
}

async function route(ctx, req, res) {
  const path = req.url.split("?", 1)[0];
  try {
    if (path === "/.well-known/jwks.json") {
      if (req.method !== "GET" && req.method !== "HEAD") throw new HttpError(405, "method_not_allowed", "GET only");
      return jwks(ctx, req, res);
    }
    if (path === "/token" || path === "/token/verify" || path === "/token/introspect") {
      if (req.method !== "POST") throw new HttpError(405, "method_not_allowed", "POST only");
      if (path === "/token") return await issue(ctx, req, res);
      if (path === "/token/verify") return await verifyRoute(ctx, req, res);
      return await introspect(ctx, req, res);
    }
    throw new HttpError(404, "not_found", "no such route");
  } catch (e) {
    if (!(e instanceof HttpError)) throw e;
    // The rest of a refused body is not read: the connection cannot carry
    // another request.
    const extra = { ...e.headers };
    if (!req.complete) extra.connection = "close";
    reply(res, e.status, { error: e.error, error_description: e.message }, extra);
  }
}

function jwks(ctx, req, res) {
  const headers = {
    "content-type": "application/json",
    "cache-control": "public, max-age=600",
    etag: ctx.jwksEtag,
  };
  if (req.headers["if-none-match"] === ctx.jwksEtag) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  res.writeHead(200, { ...headers, "content-length": ctx.jwksBody.length });
  res.end(req.method === "HEAD" ? undefined : ctx.jwksBody);
}

function readJson(req) {
  const type = (req.headers["content-type"] || "").split(";", 1)[0].trim().toLowerCase();
  if (type !== "application/json") {
    return Promise.reject(new HttpError(415, "unsupported_media_type", "the body must be application/json"));
  }
  const declared = Number(req.headers["content-length"]);
  if (declared > MAX_BODY) return Promise.reject(new HttpError(413, "request_too_large", "body over 64 KiB"));
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    let refused = false;
    req.on("data", (chunk) => {
      if (refused) return;
      size += chunk.length;
      if (size > MAX_BODY) {
        refused = true;
        reject(new HttpError(413, "request_too_large", "body over 64 KiB"));
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      if (refused) return;
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks, size).toString("utf8"));
      } catch {
        reject(new HttpError(400, "invalid_request", "the body is not JSON"));
        return;
      }
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        reject(new HttpError(400, "invalid_request", "the body must be a JSON object"));
        return;
      }
      resolve(body);
    });
    req.on("error", reject);
  });
}

// jose's verdicts as /token/verify names them.
function reason(e) {
  switch (e.code) {
    case "ERR_JWT_EXPIRED":
      return "expired";
    case "ERR_JWT_CLAIM_VALIDATION_FAILED":
      return { iss: "wrong_issuer", aud: "wrong_audience", nbf: "not_yet_valid", typ: "wrong_type" }[e.claim] ||
        "malformed";
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
      return "bad_signature";
    case "ERR_JWKS_NO_MATCHING_KEY":
      return "unknown_kid";
    case "ERR_JOSE_ALG_NOT_ALLOWED":
    case "ERR_JOSE_NOT_SUPPORTED":
      return "unsupported_alg";
    default:
      return "malformed";
  }
}

// What hsmjwtd's jws_verify memo does, so that both servers are compared
// doing the same work: a token whose exact bytes verified before (with the
// same issuer and audience asked) skips the signature check; only the
// time-dependent checks run again.  Successes only, at most VERIFY_MEMO
// entries per worker (hsmjwtd: 4096 per worker thread), oldest evicted
// first.  PEER_VERIFY_MEMO=0 turns it off.
const VERIFY_MEMO = Number(process.env.PEER_VERIFY_MEMO ?? 4096);
const verifyMemo = new Map();

function memoKey(token, options) {
  const digest = crypto.createHash("sha256").update(token).digest("base64url");
  return `${digest}|${options.issuer ?? ""}|${options.audience ?? ""}`;
}

function memoStillValid(payload) {
  const now = Math.floor(Date.now() / 1000);
  return payload.exp + LEEWAY >= now && (payload.nbf === undefined || payload.nbf - LEEWAY <= now);
}

// SPEC §5.2 as jose does it: an allowed alg, a known kid, the signature,
// typ, iss, exp/nbf with the leeway; then the registry.
async function verifyToken(ctx, token, options) {
  if (typeof token !== "string" || token.length === 0 || token.length > MAX_TOKEN) {
    return { valid: false, error: "malformed" };
  }
  const key = VERIFY_MEMO > 0 ? memoKey(token, options) : null;
  let result = key ? verifyMemo.get(key) : undefined;
  if (result && !memoStillValid(result.payload)) result = undefined;
  if (result === undefined) {
    try {
      result = await jose.jwtVerify(token, ctx.keySet, {
        algorithms: ALGS,
        issuer: options.issuer ?? issuer,
        audience: options.audience,
        typ: "at+jwt",
        clockTolerance: LEEWAY,
        requiredClaims: ["iss", "sub", "exp", "iat", "jti"],
      });
    } catch (e) {
      if (!(e instanceof jose.errors.JOSEError)) throw e;
      return { valid: false, error: reason(e) };
    }
    if (key) {
      verifyMemo.set(key, result);
      if (verifyMemo.size > VERIFY_MEMO) verifyMemo.delete(verifyMemo.keys().next().value);
    }
  }
  const { payload, protectedHeader } = result;
  const record = ctx.registry.get(payload.jti);
  if (record && record.status !== "active") return { valid: false, error: record.status };
  return { valid: true, header: protectedHeader, claims: payload, status: record ? "active" : "unregistered" };
}

async function authenticate(ctx, req, role) {
  const challenge = { "www-authenticate": 'Bearer realm="hsmjwt"' };
  const m = /^Bearer ([A-Za-z0-9._-]+)$/.exec(req.headers.authorization || "");
  if (!m) throw new HttpError(401, "invalid_token", "a bearer token is required", challenge);
  const v = await verifyToken(ctx, m[1], { audience: issuer });
  if (!v.valid) {
    throw new HttpError(401, "invalid_token", "the bearer token was refused",
      { "www-authenticate": 'Bearer realm="hsmjwt", error="invalid_token"' });
  }
  const roles = Array.isArray(v.claims.roles) ? v.claims.roles : [];
  if (!roles.includes("admin") && !roles.includes(role)) {
    throw new HttpError(403, "insufficient_scope", `the caller lacks ${role}`,
      { "www-authenticate": 'Bearer realm="hsmjwt", error="insufficient_scope"' });
  }
  return v.claims;
}

function stringField(body, name, required) {
  const v = body[name];
  if (v === undefined && !required) return undefined;
  if (typeof v !== "string" || v.length === 0 || v.length > MAX_FIELD) {
    throw new HttpError(400, "invalid_request", `${name} must be a non-empty string`);
  }
  return v;
}

function record(ctx, jti, exp, now) {
  const registry = ctx.registry;
  if (registry.size >= MAX_RECORDS) {
    for (const [k, r] of registry) {
      if (r.exp + LEEWAY >= now) break;
      registry.delete(k);
    }
    if (registry.size >= MAX_RECORDS) {
      throw new HttpError(503, "registry_unavailable", "the registry is full", { "retry-after": "1" });
    }
  }
  registry.set(jti, { exp, status: "active" });
}

async function issue(ctx, req, res) {
  const caller = await authenticate(ctx, req, "tokens:issue");
  const body = await readJson(req);
  for (const name of Object.keys(body)) {
    if (!REGISTERED.has(name)) throw new HttpError(400, "invalid_request", `unknown member ${name}`);
  }
  const subject = stringField(body, "subject", true);
  const alg = body.alg === undefined ? ALGS[0] : body.alg;
  const signer = ctx.signers.get(alg);
  if (!signer) throw new HttpError(400, "invalid_request", "alg is not one of the configured algorithms");
  let aud = DEFAULT_AUDIENCE;
  if (body.audience !== undefined) {
    aud = body.audience;
    const ok = typeof aud === "string" ? aud.length > 0 && aud.length <= MAX_FIELD
      : Array.isArray(aud) && aud.length > 0 && aud.length <= 16 &&
        aud.every((a) => typeof a === "string" && a.length > 0 && a.length <= MAX_FIELD);
    if (!ok) throw new HttpError(400, "invalid_request", "audience must be a string or an array of strings");
  }
  const scope = stringField(body, "scope", false);
  const clientId = stringField(body, "client_id", false) ?? caller.sub;
  let ttl = ACCESS_TTL;
  if (body.expires_in !== undefined) {
    if (!Number.isInteger(body.expires_in) || body.expires_in < 1 || body.expires_in > MAX_TTL) {
      throw new HttpError(400, "invalid_request", `expires_in must be an integer in 1..${MAX_TTL}`);
    }
    ttl = body.expires_in;
  }

  const now = Math.floor(Date.now() / 1000);
  const jti = crypto.randomBytes(16).toString("base64url");
  const claims = { iss: issuer, sub: subject, aud, iat: now, nbf: now, exp: now + ttl, jti, token_type: "access" };
  if (scope !== undefined) claims.scope = scope;
  claims.client_id = clientId;
  const idx = ctx.nextStatusIdx();
  claims.status = { status_list: { idx, uri: `${issuer}/statuslists/${Math.floor(idx / STATUS_LIST_SIZE)}` } };
  const token = await new jose.SignJWT(claims).setProtectedHeader({ alg, kid: signer.kid, typ: "at+jwt" })
    .sign(signer.key);
  // Recorded before it is handed out, as hsmjwtd's registry does.
  record(ctx, jti, claims.exp, now);
  reply(res, 200, { access_token: token, token_type: "Bearer", expires_in: ttl, jti });
}

async function verifyRoute(ctx, req, res) {
  const body = await readJson(req);
  for (const name of Object.keys(body)) {
    if (!["token", "audience", "issuer", "token_type"].includes(name)) {
      throw new HttpError(400, "invalid_request", `unknown member ${name}`);
    }
  }
  if (typeof body.token !== "string") throw new HttpError(400, "invalid_request", "token must be a string");
  if (body.token_type !== undefined && body.token_type !== "access") {
    reply(res, 200, { valid: false, error: "wrong_type" });
    return;
  }
  const audience = stringField(body, "audience", false);
  const iss = stringField(body, "issuer", false);
  reply(res, 200, await verifyToken(ctx, body.token, { audience, issuer: iss }));
}

async function introspect(ctx, req, res) {
  await authenticate(ctx, req, "tokens:introspect");
  const body = await readJson(req);
  if (typeof body.token !== "string") throw new HttpError(400, "invalid_request", "token must be a string");
  const v = await verifyToken(ctx, body.token, {});
  if (!v.valid) {
    reply(res, 200, { active: false });
    return;
  }
  reply(res, 200, { ...v.claims, active: true, registry_status: v.status });
}
