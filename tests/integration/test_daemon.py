#!/usr/bin/python3
"""End-to-end test of hsmjwtd: a fresh SoftHSM token, the daemon with every
asymmetric algorithm, tokens issued over HTTP and verified by three verifiers
that share no code with the service (PyJWT, jwcrypto, npm's jose) and by the
service itself; then the error paths, a clean SIGTERM exit and a log free of
tokens.

Usage: test_daemon.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Skip, Token, Workdir, b64url_decode, b64url_encode,  # noqa: E402
                            jwt_parts, main_with_dirs, require_tools, run_daemon_test)

ALGORITHMS = ["ES256", "ES384", "RS256", "PS256", "EdDSA"]
AUDIENCE = "api-integration"
TTL = 600
MAX_BODY = 16384
JWK_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def import_verifiers():
    try:
        import jwt  # PyJWT
        import jwcrypto.jwk
        import jwcrypto.jwt
    except ImportError as e:
        raise Skip(f"a Python JWT library is missing ({e}); apt-get install python3-jwt python3-jwcrypto")
    return jwt, jwcrypto


def check_jwks(c, daemon, jwks_resp):
    c.section("JWKS")
    c.equal(jwks_resp.status, 200, "GET /.well-known/jwks.json answers 200")
    c.check((jwks_resp.header("Content-Type") or "").startswith("application/json"),
            "JWKS is served as application/json", jwks_resp.header("Content-Type"))
    cache = jwks_resp.header("Cache-Control") or ""
    m = re.search(r"max-age=(\d+)", cache)
    c.check(m is not None and "public" in cache, "JWKS carries Cache-Control: public, max-age", cache)
    c.check(jwks_resp.header("ETag") is not None, "JWKS carries an ETag")
    jwks = jwks_resp.json()
    keys = jwks.get("keys", []) if isinstance(jwks, dict) else []
    c.check(len(keys) >= len(ALGORITHMS), f"JWKS publishes at least {len(ALGORITHMS)} keys", f"{len(keys)} keys")
    for k in keys:
        leaked = [m for m in JWK_PRIVATE_MEMBERS if m in k]
        c.check(not leaked, f"JWK {k.get('kid')} has no private members", f"has {leaked}")
        c.equal(k.get("use"), "sig", f"JWK {k.get('kid')} use")
    c.equal(sorted(k.get("alg") for k in keys if k.get("alg") in ALGORITHMS), sorted(ALGORITHMS),
            "JWKS has one key per configured algorithm")
    c.equal(sorted(k.get("kid") for k in keys), daemon.token_kids(),
            "JWKS kids are the kids hsmjwtctl reads from the token")
    if jwks_resp.header("ETag"):
        again = daemon.request("GET", "/.well-known/jwks.json", headers={"If-None-Match": jwks_resp.header("ETag")})
        c.equal(again.status, 304, "JWKS with a matching If-None-Match answers 304")
    return jwks


def issue_tokens(c, daemon, admin):
    c.section("POST /token, one token per algorithm")
    tokens = {}
    for alg in ALGORITHMS:
        body = {"subject": f"user-{alg}", "audience": AUDIENCE, "scope": "read write",
                "client_id": "integration-client", "expires_in": TTL, "alg": alg}
        r = daemon.request("POST", "/token", body, {"Authorization": f"Bearer {admin}"})
        doc = r.json() or {}
        if not c.equal(r.status, 200, f"{alg}: POST /token answers 200"):
            print(f"        body: {r.body[:300]!r}")
            continue
        c.check(isinstance(doc.get("access_token"), str) and doc["access_token"].count(".") == 2,
                f"{alg}: response has a compact access_token")
        c.equal(doc.get("token_type"), "Bearer", f"{alg}: token_type")
        c.equal(doc.get("expires_in"), TTL, f"{alg}: expires_in")
        c.check((r.header("Cache-Control") or "") == "no-store", f"{alg}: token response is Cache-Control: no-store",
                r.header("Cache-Control"))
        if isinstance(doc.get("access_token"), str):
            tokens[alg] = doc["access_token"]
            c.equal(jwt_parts(doc["access_token"])[1].get("jti"), doc.get("jti"), f"{alg}: response jti is the token's")
    return tokens


def check_claims(c, daemon, alg, token, jwks, jwcrypto, issued_at):
    header, claims = jwt_parts(token)
    c.equal(header.get("alg"), alg, f"{alg}: header alg")
    c.equal(header.get("typ"), "at+jwt", f"{alg}: header typ")
    c.equal(sorted(header), ["alg", "kid", "typ"], f"{alg}: header members")
    by_kid = {k["kid"]: k for k in jwks["keys"]}
    kid = header.get("kid")
    if c.check(kid in by_kid, f"{alg}: header kid is a JWKS kid", kid):
        c.equal(by_kid[kid].get("alg"), alg, f"{alg}: the JWK of that kid is for {alg}")
        thumb = jwcrypto.jwk.JWK(**by_kid[kid]).thumbprint()
        c.equal(kid, thumb, f"{alg}: kid is the RFC 7638 thumbprint (jwcrypto)")
    c.equal(claims.get("iss"), daemon.issuer, f"{alg}: iss")
    c.equal(claims.get("sub"), f"user-{alg}", f"{alg}: sub")
    c.equal(claims.get("aud"), AUDIENCE, f"{alg}: aud")
    c.equal(claims.get("token_type"), "access", f"{alg}: token_type")
    c.equal(claims.get("client_id"), "integration-client", f"{alg}: client_id")
    c.equal(claims.get("scope"), "read write", f"{alg}: scope")
    for name in ("iat", "nbf", "exp"):
        c.check(type(claims.get(name)) is int, f"{alg}: {name} is an integer", repr(claims.get(name)))
    if all(type(claims.get(n)) is int for n in ("iat", "nbf", "exp")):
        c.check(issued_at[0] - 5 <= claims["iat"] <= issued_at[1] + 5, f"{alg}: iat is the time of issue",
                f"iat {claims['iat']} outside {issued_at}")
        c.equal(claims["nbf"], claims["iat"], f"{alg}: nbf = iat")
        c.equal(claims["exp"] - claims["iat"], TTL, f"{alg}: exp - iat = expires_in")
    jti = claims.get("jti", "")
    ok = isinstance(jti, str) and re.fullmatch(r"[A-Za-z0-9_-]{22}", jti) is not None
    # 22 characters carry 132 bits: canonical only when the 4 spare bits are 0.
    c.check(ok and len(b64url_decode(jti)) == 16 and b64url_encode(b64url_decode(jti)) == jti,
            f"{alg}: jti is 128 bits of canonical base64url (22 chars)", repr(jti))


def verify_pyjwt(c, jwt, alg, token, jwks, issuer):
    try:
        keyset = jwt.PyJWKSet.from_dict(jwks)
        kid = jwt.get_unverified_header(token)["kid"]
        claims = jwt.decode(token, key=keyset[kid].key, algorithms=[alg], audience=AUDIENCE, issuer=issuer,
                            options={"require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]})
        c.equal(claims.get("sub"), f"user-{alg}", f"{alg}: PyJWT verifies (alg pinned, aud and iss checked)")
    except Exception as e:  # every PyJWT failure is a failed check
        c.check(False, f"{alg}: PyJWT verifies (alg pinned, aud and iss checked)", f"{type(e).__name__}: {e}")


def verify_jwcrypto(c, jwcrypto, alg, token, jwks_text, issuer):
    try:
        keyset = jwcrypto.jwk.JWKSet.from_json(jwks_text)
        t = jwcrypto.jwt.JWT(key=keyset, jwt=token, algs=[alg],
                             check_claims={"iss": issuer, "aud": AUDIENCE, "exp": None, "nbf": None})
        claims = json.loads(t.claims)
        c.check(claims.get("sub") == f"user-{alg}" and claims.get("token_type") == "access",
                f"{alg}: jwcrypto verifies (JWKSet by kid, iss/aud/exp/nbf checked)", repr(claims.get("sub")))
    except Exception as e:
        c.check(False, f"{alg}: jwcrypto verifies (JWKSet by kid, iss/aud/exp/nbf checked)", f"{type(e).__name__}: {e}")


def verify_jose(c, workdir, tokens, jwks, issuer):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify_jose.mjs")
    path = os.path.join(workdir, "jose-input.json")
    with open(path, "w") as f:
        json.dump({"jwks": jwks, "issuer": issuer, "audience": AUDIENCE,
                   "tokens": [{"alg": a, "token": t} for a, t in tokens.items()]}, f)
    out = subprocess.run(["node", script, path], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(script))
    results = {}
    for line in out.stdout.splitlines():
        try:
            r = json.loads(line)
            results[r["alg"]] = r
        except (ValueError, KeyError):
            pass
    for alg in tokens:
        r = results.get(alg, {})
        c.check(r.get("ok") is True, f"{alg}: npm jose jwtVerify (createLocalJWKSet, iss/aud/typ checked)",
                r.get("error") or out.stderr.strip()[-500:])
    os.unlink(path)


def verify_service(c, daemon, alg, token):
    body = {"token": token, "audience": AUDIENCE, "issuer": daemon.issuer, "token_type": "access"}
    r = daemon.request("POST", "/token/verify", body)
    doc = r.json() or {}
    c.equal(r.status, 200, f"{alg}: POST /token/verify answers 200")
    c.equal(doc.get("valid"), True, f"{alg}: /token/verify says valid")
    # Issued over POST /token, hence registered (SPEC §7).
    c.equal(doc.get("status"), "active", f"{alg}: /token/verify status")
    _, claims = jwt_parts(token)
    c.equal((doc.get("claims") or {}).get("jti"), claims.get("jti"), f"{alg}: /token/verify returns the claims")
    c.equal((doc.get("header") or {}).get("alg"), alg, f"{alg}: /token/verify returns the header")
    wrong = daemon.request("POST", "/token/verify", {"token": token, "audience": "someone-else"})
    c.equal((wrong.json() or {}).get("error"), "wrong_audience", f"{alg}: /token/verify refuses another audience")


def tamper_payload(token):
    h, p, s = token.split(".")
    claims = json.loads(b64url_decode(p))
    claims["sub"] = "mallory"
    return ".".join([h, b64url_encode(json.dumps(claims, separators=(",", ":")).encode()), s])


def tamper_signature(token):
    # A character near the start of the signature: for ECDSA that is a high
    # byte of r, where a change keeps r < n, so the reason must be the
    # signature and not its range.
    h, p, s = token.split(".")
    i = 10
    s = s[:i] + ("B" if s[i] == "A" else "A") + s[i + 1:]
    return ".".join([h, p, s])


def check_error_paths(c, daemon, admin, reader, tokens):
    c.section("error paths")
    r = daemon.request("POST", "/token", {"subject": "x"})
    c.equal(r.status, 401, "POST /token without a bearer answers 401")
    c.check((r.header("WWW-Authenticate") or "").startswith("Bearer"), "401 carries WWW-Authenticate: Bearer",
            r.header("WWW-Authenticate"))
    c.equal((r.json() or {}).get("error"), "invalid_token", "401 error code")

    r = daemon.request("POST", "/token", {"subject": "x"}, {"Authorization": "Bearer not.a.token"})
    c.equal(r.status, 401, "POST /token with a garbage bearer answers 401")

    r = daemon.request("POST", "/token", {"subject": "x"}, {"Authorization": f"Bearer {reader}"})
    c.equal(r.status, 403, "POST /token with roles tokens:read only answers 403")
    c.equal((r.json() or {}).get("error"), "insufficient_scope", "403 error code")

    r = daemon.request("POST", "/token", b'{"subject": "x"}',
                       {"Authorization": f"Bearer {admin}", "Content-Type": "text/plain"})
    c.equal(r.status, 415, "POST /token with Content-Type text/plain answers 415")
    c.equal((r.json() or {}).get("error"), "unsupported_media_type", "415 error code")

    big = json.dumps({"token": "x" * (MAX_BODY + 100)}).encode()
    r = daemon.request("POST", "/token/verify", big, {"Content-Type": "application/json"})
    c.equal(r.status, 413, f"a body over max_body ({MAX_BODY}) answers 413")
    c.equal((r.json() or {}).get("error"), "request_too_large", "413 error code")

    r = daemon.request("POST", "/token", b'{"subject": "x",',
                       {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    c.equal(r.status, 400, "POST /token with malformed JSON answers 400")
    c.equal((r.json() or {}).get("error"), "invalid_request", "400 error code")
    r = daemon.request("POST", "/token/verify", b'{"token": "a", "token": "b"}', {"Content-Type": "application/json"})
    c.equal((r.status, (r.json() or {}).get("error")), (400, "invalid_request"),
            "/token/verify with a duplicate member answers 400 invalid_request")

    r = daemon.request("GET", "/no/such/endpoint")
    c.equal(r.status, 404, "an unknown path answers 404")
    c.equal((r.json() or {}).get("error"), "not_found", "404 error code")

    for alg, token in tokens.items():
        r = daemon.request("POST", "/token/verify", {"token": tamper_payload(token)})
        c.equal((r.status, (r.json() or {}).get("valid"), (r.json() or {}).get("error")), (200, False, "bad_signature"),
                f"{alg}: a token with a changed payload is bad_signature")
    for alg in ("RS256", "ES256"):
        if alg in tokens:
            r = daemon.request("POST", "/token/verify", {"token": tamper_signature(tokens[alg])})
            c.equal((r.status, (r.json() or {}).get("valid"), (r.json() or {}).get("error")),
                    (200, False, "bad_signature"), f"{alg}: a token with a changed signature is bad_signature")
    r = daemon.request("POST", "/token/verify", {"token": "not-a-jwt"})
    c.equal((r.status, (r.json() or {}).get("valid")), (200, False), "/token/verify of garbage answers valid: false")


def send_garbage(c, daemon):
    c.section("garbage on a raw socket")
    payloads = [
        bytes(range(256)) * 4,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(512),   # a TLS ClientHello
        b"GET /" + b"A" * 70000 + b" HTTP/1.1\r\n\r\n",                      # an overlong request line
        b"POST /token HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /token/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\nzz\r\n",
        b"\r\n\r\n\r\n",
    ]
    for i, data in enumerate(payloads):
        try:
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=15)
        except OSError as e:
            c.check(False, f"garbage #{i}: connect", str(e))
            continue
        with s:
            # The daemon may drop the connection at any point: a reset or
            # "not connected" is an acceptable answer to garbage.
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except OSError:
                pass
    # A connection that sends half a request and goes away.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(b"POST /token HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(0.2)
    r = daemon.request("GET", "/health")
    c.equal(r.status, 200, "the daemon is healthy after garbage bytes")
    c.equal((r.json() or {}).get("status"), "ok", "/health status after garbage bytes")


def run(build_dir, source_dir):
    require_tools(["softhsm2-util", "node"])
    jwt, jwcrypto = import_verifiers()
    if not os.path.isdir(os.path.join(source_dir, "tests", "integration", "node_modules", "jose")):
        raise Skip("npm's jose is not installed (cd tests/integration && npm ci)")
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_daemon: FAILED: {build_dir}/{exe} is not built")
            return False

    c = Checker("test_daemon")
    work = Workdir("hsmjwt-daemon-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-it")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"),
                    {"HSMJWT_MAX_BODY": str(MAX_BODY)})
    secrets = []

    def body():
        c.section("start")
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} (pid {daemon.proc.pid})")
        health = daemon.request("GET", "/health").json() or {}
        c.equal((health.get("status"), health.get("hsm")), ("ok", "ok"), "/health says ok")
        c.check(health.get("keys", 0) >= len(ALGORITHMS), "/health counts a key per algorithm", repr(health))

        admin = daemon.mint("admin")
        reader = daemon.mint("tokens:read")
        secrets.extend([admin, reader])
        c.check(admin.count(".") == 2 and reader.count(".") == 2, "hsmjwtctl mint prints compact tokens")
        c.equal(jwt_parts(admin)[1].get("roles"), ["admin"], "the minted admin token carries roles [admin]")

        jwks_resp = daemon.request("GET", "/.well-known/jwks.json")
        jwks = check_jwks(c, daemon, jwks_resp)

        before = int(time.time())
        tokens = issue_tokens(c, daemon, admin)
        after = int(time.time())
        secrets.extend(tokens.values())
        c.equal(sorted(tokens), sorted(ALGORITHMS), "a token was issued for every algorithm")
        c.equal(len({jwt_parts(t)[1].get("jti") for t in tokens.values()}), len(tokens), "every jti is distinct")
        c.equal(len({jwt_parts(t)[0].get("kid") for t in tokens.values()}), len(tokens),
                "every algorithm signs with its own kid")

        c.section("claims, header and kid")
        for alg, t in tokens.items():
            check_claims(c, daemon, alg, t, jwks, jwcrypto, (before, after))
        c.section("PyJWT")
        for alg, t in tokens.items():
            verify_pyjwt(c, jwt, alg, t, jwks, daemon.issuer)
        c.section("jwcrypto")
        for alg, t in tokens.items():
            verify_jwcrypto(c, jwcrypto, alg, t, jwks_resp.body.decode(), daemon.issuer)
        c.section("npm jose")
        verify_jose(c, work.path, tokens, jwks, daemon.issuer)
        c.section("the service's own /token/verify")
        for alg, t in tokens.items():
            verify_service(c, daemon, alg, t)

        check_error_paths(c, daemon, admin, reader, tokens)
        secrets.extend(tamper_payload(t) for t in tokens.values())
        send_garbage(c, daemon)

        c.section("no answer echoes a credential")
        leaks = [r.status for r in daemon.responses if admin.encode() in r.body or reader.encode() in r.body]
        c.check(not leaks, f"none of {len(daemon.responses)} response bodies contains a bearer token",
                f"statuses {leaks}")
        signatures = [t.split(".")[2].encode() for t in secrets]
        leaks = [r.status for r in daemon.responses if r.status >= 400 and any(s in r.body for s in signatures)]
        c.check(not leaks, "no error response contains a token signature", f"statuses {leaks}")

    def log_checks(log):
        c.check('"request"' in log, "the daemon logged its requests", "no request line in the log")
        leaked = [i for i, s in enumerate(secrets) if s in log or s.split(".")[2] in log]
        c.check(not leaked, f"the log contains none of the {len(secrets)} tokens (nor their signatures)",
                f"token #{leaked} found")
        c.check(token.pin not in log, "the log does not contain the PIN")

    return run_daemon_test(c, work, daemon, body, log_checks)


if __name__ == "__main__":
    main_with_dirs("test_daemon", run)
