#!/usr/bin/python3
"""End-to-end test of the OAuth 2.0 / OIDC flows (issue 5) over HTTP against
the real daemon on SoftHSM: POST /token for access, refresh and ID tokens
(RFC 9068 shape, lifetimes from the configuration, custom claims that cannot
override registered ones), the refresh_token grant (rotation as JSON and as a
form, scope narrowing, reuse detection revoking the whole family, two
concurrent uses), the authorization_code grant with PKCE S256 (POST /codes,
the three tokens verified independently with PyJWT, jwcrypto and npm's jose
against the JWKS the discovery document names, and every failure path), and
both discovery documents.

Every token, code and verifier the test sees is kept, and no error response
nor the daemon's log may contain one.

Usage: test_oauth.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Skip, Token, Workdir, b64url_encode, guarded, jwt_parts,  # noqa: E402
                            main_with_dirs, require_tools, run_daemon_test)

ALGORITHMS = ["ES256"]          # config_load adds RS256 for ID tokens
ACCESS_TTL = 600
REFRESH_TTL = 1200
ID_TTL = 300
CLIENT = "web-app"
REDIRECT = "https://app.example/callback"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LOGIN = "https://login.example/authorize?tenant=t1"   # the login front end (authorization_endpoint)


def import_verifiers():
    try:
        import jwt  # PyJWT
        import jwcrypto.jwk
        import jwcrypto.jwt
    except ImportError as e:
        raise Skip(f"a Python JWT library is missing ({e}); apt-get install python3-jwt python3-jwcrypto")
    return jwt, jwcrypto


def pkce_pair():
    verifier = b64url_encode(os.urandom(48))          # 64 characters
    challenge = b64url_encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge


class Api:
    def __init__(self, c, daemon, jwt, jwcrypto):
        self.c = c
        self.d = daemon
        self.jwt = jwt
        self.jwcrypto = jwcrypto
        self.secrets = []        # tokens, codes, verifiers: never in an error body or the log
        self.admin = None
        self.discovery = None

    def keep(self, *values):
        self.secrets.extend(v for v in values if v)
        return values[0] if len(values) == 1 else values

    def call(self, method, path, body=None, bearer=None, form=None, headers=None):
        h = dict(headers or {})
        if bearer is not None:
            h["Authorization"] = f"Bearer {bearer}"
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            h.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return self.d.request(method, path, body, h)

    def verify(self, token):
        """The service's own verdict: (valid, status or error)."""
        doc = self.call("POST", "/token/verify", {"token": token}).json() or {}
        return (doc.get("valid"), doc.get("status") if doc.get("valid") else doc.get("error"))

    def record(self, jti):
        r = self.call("GET", f"/tokens/{jti}", bearer=self.admin)
        return r.json() if r.status == 200 else None

    def jwks(self):
        return self.d.jwks()

    def pyjwt_key(self, token):
        kid = jwt_parts(token)[0]["kid"]
        for k in self.jwks()["keys"]:
            if k["kid"] == kid:
                return self.jwt.PyJWK.from_dict(k).key
        return None

    def error_of(self, r):
        return (r.status, (r.json() or {}).get("error"))

    def issue(self, what, **body):
        r = self.call("POST", "/token", body, bearer=self.admin)
        doc = r.json() or {}
        member = {"refresh": "refresh_token", "id": "id_token"}.get(body.get("token_type"), "access_token")
        if not self.c.check(r.status == 200 and isinstance(doc.get(member), str),
                            f"POST /token {what}: 200 with {member}", f"{r.status} {r.body[:300]!r}"):
            return None
        return self.keep(doc[member])

    def refresh(self, token, as_form=True, **extra):
        fields = {"grant_type": "refresh_token", "refresh_token": token, **extra}
        r = self.call("POST", "/token", form=fields) if as_form else self.call("POST", "/token", fields)
        doc = r.json() or {}
        self.keep(doc.get("access_token"), doc.get("refresh_token"))
        return r, doc

    def new_code(self, verifier_challenge=None, bearer=None, **extra):
        verifier, challenge = verifier_challenge or pkce_pair()
        self.keep(verifier)
        body = {"subject": "carol", "client_id": CLIENT, "redirect_uri": REDIRECT, "code_challenge": challenge,
                "code_challenge_method": "S256", **extra}
        r = self.call("POST", "/codes", body, bearer=bearer or self.admin)
        code = (r.json() or {}).get("code")
        self.keep(code)
        return r, code, verifier

    def redeem(self, code, verifier, client_id=CLIENT, redirect_uri=REDIRECT, as_form=True):
        fields = {"grant_type": "authorization_code", "code": code, "client_id": client_id,
                  "redirect_uri": redirect_uri, "code_verifier": verifier}
        r = self.call("POST", "/token", form=fields) if as_form else self.call("POST", "/token", fields)
        doc = r.json() or {}
        self.keep(doc.get("access_token"), doc.get("refresh_token"), doc.get("id_token"))
        return r, doc


# ---- discovery ----------------------------------------------------------------

def discovery(c, api):
    c.section("discovery")
    docs = {}
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        r = api.call("GET", path)
        c.equal(r.status, 200, f"GET {path} answers 200 without credentials")
        c.equal(r.header("Cache-Control"), "public, max-age=3600", f"{path}: Cache-Control")
        c.check((r.header("Content-Type") or "").startswith("application/json"), f"{path}: application/json")
        docs[path] = r.json() or {}
    oidc = docs["/.well-known/openid-configuration"]
    c.equal(oidc, docs["/.well-known/oauth-authorization-server"], "both documents are the same metadata")
    issuer = api.d.issuer
    c.equal(oidc.get("issuer"), issuer, "issuer is the configured issuer")
    for name, path in (("jwks_uri", "/.well-known/jwks.json"), ("token_endpoint", "/token")):
        c.equal(oidc.get(name), issuer + path, f"{name} derives from the issuer")
    for name in ("revocation_endpoint", "introspection_endpoint"):
        c.check(name not in oidc, f"no {name}: a management endpoint (bearer with roles), not a client's, "
                "which RFC 8414's default client_secret_basic would misstate")
    jwks_path = urllib.parse.urlsplit(oidc.get("jwks_uri", "")).path
    r = api.call("GET", jwks_path)
    c.check(r.status == 200 and len((r.json() or {}).get("keys", [])) >= 2, "the jwks_uri fetches a JWKS "
            "(ES256 and the RS256 key kept for ID tokens)", f"{r.status}")
    algs = oidc.get("id_token_signing_alg_values_supported") or []
    c.check("RS256" in algs and "ES256" in algs and "HS256" not in algs,
            "id_token_signing_alg_values_supported lists RS256 and ES256, never HS256", repr(algs))
    c.equal(oidc.get("response_types_supported"), ["code"], "response_types_supported")
    c.equal(oidc.get("grant_types_supported"), ["authorization_code", "refresh_token"], "grant_types_supported")
    c.equal(oidc.get("code_challenge_methods_supported"), ["S256"], "code_challenge_methods_supported: S256 only")
    c.equal(oidc.get("token_endpoint_auth_methods_supported"), ["none"], "public clients with PKCE")
    c.equal(oidc.get("subject_types_supported"), ["public"], "subject_types_supported")
    c.equal(oidc.get("authorization_endpoint"), LOGIN,
            "authorization_endpoint is the configured login front end (HSMJWT_AUTHORIZATION_ENDPOINT)")
    api.discovery = oidc


# ---- POST /token ------------------------------------------------------------

def issuance(c, api):
    c.section("POST /token: access, refresh and id tokens")
    t = api.issue("access", subject="alice", client_id=CLIENT, scope="read write", audience="api",
                  claims={"tier": "gold"})
    if t:
        h, p = jwt_parts(t)
        c.equal(h.get("typ"), "at+jwt", "access token: typ at+jwt (RFC 9068 §2.1)")
        for claim in ("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"):
            c.check(claim in p, f"access token carries {claim} (RFC 9068 §2.2)")
        c.equal((p.get("client_id"), p.get("scope"), p.get("tier"), p.get("token_type")),
                (CLIENT, "read write", "gold", "access"), "access token: client_id, scope, custom claim")
        c.equal(p["exp"] - p["iat"], ACCESS_TTL, f"access token lives access_ttl ({ACCESS_TTL} s)")
        api.jwt.decode(t, api.pyjwt_key(t), algorithms=["ES256"], audience="api", issuer=api.d.issuer)
        c.check(True, "PyJWT verifies the access token")
    t = api.issue("refresh", subject="alice", token_type="refresh", client_id=CLIENT, claims={"tier": "gold"})
    if t:
        h, p = jwt_parts(t)
        c.equal((h.get("typ"), p.get("token_type"), p.get("family")), ("rt+jwt", "refresh", p.get("jti")),
                "refresh token: typ rt+jwt, token_type refresh, family = its own jti")
        c.equal(p["exp"] - p["iat"], REFRESH_TTL, f"refresh token lives refresh_ttl ({REFRESH_TTL} s)")
    t = api.issue("id", subject="alice", token_type="id", client_id=CLIENT, nonce="n-42", auth_time=int(time.time()) - 60,
                  claims={"email": "alice@example.com"})
    if t:
        h, p = jwt_parts(t)
        c.equal((h.get("alg"), h.get("typ")), ("RS256", "JWT"), "ID token: RS256 by default, typ JWT")
        c.equal((p.get("aud"), p.get("azp"), p.get("nonce"), p.get("email")), (CLIENT, CLIENT, "n-42", "alice@example.com"),
                "ID token: aud = azp = client_id, nonce, custom claim")
        c.check(isinstance(p.get("auth_time"), int), "ID token: auth_time")
        c.equal(p["exp"] - p["iat"], ID_TTL, f"ID token lives id_ttl ({ID_TTL} s)")
        api.jwt.decode(t, api.pyjwt_key(t), algorithms=["RS256"], audience=CLIENT, issuer=api.d.issuer)
        c.check(True, "PyJWT verifies the ID token (RS256)")
    for claim in ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "typ", "token_type", "status", "nonce", "azp",
                  "client_id", "scope", "family"):
        r = api.call("POST", "/token", {"subject": "alice", "claims": {claim: "x"}}, bearer=api.admin)
        c.equal(api.error_of(r), (400, "invalid_request"), f"claims may not override {claim}")
    r = api.call("POST", "/token", {"subject": "alice", "token_type": "id"}, bearer=api.admin)
    c.equal(api.error_of(r), (400, "invalid_request"), "an ID token without client_id is refused")
    r = api.call("POST", "/token", form={"subject": "alice"}, bearer=api.admin)
    c.equal(api.error_of(r), (400, "invalid_request"), "a form without grant_type is no issuance request")


# ---- refresh_token grant ----------------------------------------------------

def new_family(api, what, scope="read write", org=None):
    body = {"subject": "bob", "token_type": "refresh", "client_id": CLIENT, "scope": scope,
            "audience": ["api", "files"], "claims": {"tier": "silver"}}
    if org:
        body["org"] = org
    return api.issue(what, **body)


def status_idx(token):
    return jwt_parts(token)[1].get("status", {}).get("status_list", {}).get("idx")


def next_idx_unmoved(c, api, what, refuse):
    """refuse() must sign nothing: every issued token reserves the next
    status-list index, so an access token issued before and one after are
    neighbours (nothing else issues meanwhile: no auto-renewed parents here)."""
    before = api.issue(f"an index probe before {what}", subject="probe")
    refuse()
    after = api.issue(f"an index probe after {what}", subject="probe")
    if before and after:
        c.equal(status_idx(after) - status_idx(before), 1,
                f"{what} signs nothing: no status-list index was reserved in between")


def check_no_store(c, r, what):
    c.equal((r.header("Cache-Control"), r.header("Pragma")), ("no-store", "no-cache"),
            f"{what}: Cache-Control no-store, Pragma no-cache (RFC 6749 §5.1)")


def rotation(c, api):
    c.section("refresh_token grant: rotation")
    rt0 = new_family(api, "family root", org="org-r")
    if not rt0:
        return
    _, p0 = jwt_parts(rt0)
    current = rt0
    for as_form in (False, True):
        kind = "form" if as_form else "JSON"
        r, doc = api.refresh(current, as_form=as_form)
        c.equal(r.status, 200, f"refresh as {kind} answers 200")
        check_no_store(c, r, f"refresh as {kind}")
        c.equal((doc.get("token_type"), doc.get("expires_in")), ("Bearer", ACCESS_TTL),
                f"refresh as {kind}: token_type Bearer, expires_in access_ttl")
        if r.status != 200:
            return
        h, a = jwt_parts(doc["access_token"])
        c.equal(h.get("typ"), "at+jwt", f"refresh as {kind}: new access token is at+jwt")
        c.equal((a.get("sub"), a.get("client_id"), a.get("scope"), a.get("aud"), a.get("org"), a.get("tier")),
                ("bob", CLIENT, "read write", ["api", "files"], "org-r", "silver"),
                f"refresh as {kind}: access token keeps sub, client_id, scope, aud, org and custom claims")
        c.equal(a["exp"] - a["iat"], ACCESS_TTL, f"refresh as {kind}: access token lives access_ttl")
        _, rp = jwt_parts(doc["refresh_token"])
        c.equal((rp.get("family"), rp.get("scope"), rp.get("token_type")), (p0["jti"], "read write", "refresh"),
                f"refresh as {kind}: new refresh token of the same family and scope")
        c.check(rp["exp"] <= p0["exp"], f"refresh as {kind}: the new refresh token expires no later than the "
                "family's first", f"{rp['exp']} > {p0['exp']}")
        rec = api.record(a["jti"]) or {}
        c.equal((rec.get("status"), rec.get("family")), ("active", p0["jti"]),
                f"refresh as {kind}: the access token's record names the family")
        api.jwt.decode(doc["access_token"], api.pyjwt_key(doc["access_token"]), algorithms=["ES256"],
                       audience="files", issuer=api.d.issuer)
        current = doc["refresh_token"]
    rec = api.record(p0["jti"]) or {}
    c.equal((rec.get("status"), rec.get("reason")), ("revoked", "rotated"), "the used refresh token is retired "
            "(revoked, reason rotated)")

    c.section("refresh_token grant: scope and client")
    r, doc = api.refresh(current, scope="write")
    c.equal(r.status, 200, "narrowing the scope answers 200")
    if r.status == 200:
        c.equal(doc.get("scope"), "write", "the response names the narrowed scope")
        c.equal(jwt_parts(doc["access_token"])[1].get("scope"), "write", "the access token has the narrowed scope")
        c.equal(jwt_parts(doc["refresh_token"])[1].get("scope"), "read write",
                "the new refresh token keeps the original scope (RFC 6749 §6)")
        current = doc["refresh_token"]
    for scope in ("read write admin", "admin", "rea"):
        r, _ = api.refresh(current, scope=scope)
        c.equal(api.error_of(r), (400, "invalid_scope"), f"widening the scope to {scope!r} is refused")
    r, _ = api.refresh(current, client_id="another-app")
    c.equal(api.error_of(r), (400, "invalid_grant"), "another client_id is refused")
    r, doc = api.refresh(current, client_id=CLIENT)
    c.equal(r.status, 200, "the refused requests did not consume the refresh token; the right client_id passes")


def reuse(c, api):
    c.section("refresh_token grant: reuse revokes the family")
    rt0 = new_family(api, "reuse family")
    other = new_family(api, "an unrelated family")
    if not rt0 or not other:
        return
    r1, d1 = api.refresh(rt0)
    r2, d2 = api.refresh(d1.get("refresh_token", ""))
    r3, d3 = api.refresh(other)
    if not c.check(r1.status == r2.status == r3.status == 200, "two rotations and an unrelated one answer 200"):
        return
    replay = []
    next_idx_unmoved(c, api, "the replay of a retired refresh token", lambda: replay.append(api.refresh(rt0)))
    r, doc = replay[0]
    c.equal(api.error_of(r), (400, "invalid_grant"), "replaying the first refresh token answers invalid_grant")
    check_no_store(c, r, "the replay's refusal")
    family = [("the first refresh token", rt0), ("the first access token", d1["access_token"]),
              ("the second refresh token", d1["refresh_token"]), ("the second access token", d2["access_token"]),
              ("the newest refresh token", d2["refresh_token"])]
    for what, t in family:
        c.equal(api.verify(t), (False, "revoked"), f"after the replay, {what} is revoked (/token/verify)")
        rec = api.record(jwt_parts(t)[1]["jti"]) or {}
        c.equal(rec.get("status"), "revoked", f"after the replay, {what} is revoked (GET /tokens/{{jti}})")
    rec = api.record(jwt_parts(d2["refresh_token"])[1]["jti"]) or {}
    c.equal(rec.get("reason"), "refresh token reuse", "the newest refresh token's reason: refresh token reuse")
    replay = []
    next_idx_unmoved(c, api, "a revoked refresh token's use",
                     lambda: replay.append(api.refresh(d2["refresh_token"])))
    c.equal(api.error_of(replay[0][0]), (400, "invalid_grant"), "the newest refresh token no longer refreshes")
    c.equal(api.verify(d3["access_token"]), (True, "active"), "the unrelated family is untouched")

    c.section("refresh_token grant: suspended, unknown, not a refresh token")
    rt = new_family(api, "suspended family")
    if rt:
        r1, d1 = api.refresh(rt)
        jti = jwt_parts(d1["refresh_token"])[1]["jti"]
        api.call("PATCH", f"/tokens/{jti}", {"status": "suspended"}, bearer=api.admin)
        refused = []
        next_idx_unmoved(c, api, "a suspended refresh token's use",
                         lambda: refused.append(api.refresh(d1["refresh_token"])))
        c.equal(api.error_of(refused[0][0]), (400, "invalid_grant"), "a suspended refresh token is refused")
        c.equal(api.verify(d1["access_token"]), (True, "active"),
                "a suspended refresh token is no reuse: its family stays active")
        api.call("PATCH", f"/tokens/{jti}", {"status": "active"}, bearer=api.admin)
        r, _ = api.refresh(d1["refresh_token"])
        c.equal(r.status, 200, "reactivated, it refreshes")
    access = api.issue("an access token", subject="bob")
    r, _ = api.refresh(access or "x")
    c.equal(api.error_of(r), (400, "invalid_grant"), "an access token is no refresh token")
    r, _ = api.refresh("eyJhbGciOiJFUzI1NiJ9.e30.AAAA")
    c.equal(api.error_of(r), (400, "invalid_grant"), "a forged refresh token is refused")
    r = api.call("POST", "/token", form={"grant_type": "refresh_token"})
    c.equal(api.error_of(r), (400, "invalid_request"), "a refresh grant without refresh_token: invalid_request")
    r = api.call("POST", "/token", form={"grant_type": "password", "username": "u", "password": "p"})
    c.equal(api.error_of(r), (400, "unsupported_grant_type"), "grant_type password: unsupported_grant_type")
    r = api.call("POST", "/token", {"grant_type": "client_credentials"})
    c.equal(api.error_of(r), (400, "unsupported_grant_type"), "grant_type client_credentials (JSON): "
            "unsupported_grant_type")


def logout(c, api):
    c.section("RFC 7009 logout with a rotated refresh token ends the grant")
    rt0 = new_family(api, "logout family")
    other = new_family(api, "a family left alone")
    if not rt0 or not other:
        return
    r1, d1 = api.refresh(rt0)
    r2, d2 = api.refresh(other)
    if not c.check(r1.status == r2.status == 200, "a rotation in each family answers 200"):
        return
    # What a client holds after one rotation: not the family's first token.
    r = api.call("POST", "/token/revoke", form={"token": d1["refresh_token"], "token_type_hint": "refresh_token"},
                 bearer=api.admin)
    c.equal(r.status, 200, "POST /token/revoke with the current refresh token answers 200")
    for what, t in (("the refresh token revoked", d1["refresh_token"]),
                    ("the access token of the rotation", d1["access_token"])):
        c.equal(api.verify(t), (False, "revoked"), f"after the logout, {what} is revoked")
    c.equal(api.error_of(api.refresh(d1["refresh_token"])[0]), (400, "invalid_grant"),
            "the revoked refresh token no longer refreshes")
    c.equal(api.verify(d2["access_token"]), (True, "active"), "the other family is untouched")


def concurrent(c, api):
    c.section("refresh_token grant: two concurrent uses")
    for round_ in range(5):
        rt = new_family(api, f"concurrent family {round_}")
        if not rt:
            return
        barrier = threading.Barrier(2)
        results = [None, None]

        def use(i):
            barrier.wait()
            results[i] = api.refresh(rt)

        threads = [threading.Thread(target=use, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status for r, _ in results)
        c.equal(statuses, [200, 400], f"round {round_}: one use wins, the other is refused")
        winner = [d for r, d in results if r.status == 200]
        loser = [r for r, _ in results if r.status == 400]
        if loser:
            c.equal((loser[0].json() or {}).get("error"), "invalid_grant", f"round {round_}: the loser gets invalid_grant")
        if winner:
            # RFC 9700 §4.14.2: the second use is a reuse, whichever came
            # first; the family is revoked, the winner's new tokens with it.
            c.equal(api.verify(winner[0]["access_token"]), (False, "revoked"),
                    f"round {round_}: the winner's new access token is revoked too")
            c.equal(api.verify(winner[0]["refresh_token"]), (False, "revoked"),
                    f"round {round_}: the winner's new refresh token is revoked too")


# ---- authorization_code grant -------------------------------------------------

def code_flow(c, api, node_ok, workdir):
    c.section("authorization_code grant")
    auth_time = int(time.time()) - 30
    r, code, verifier = api.new_code(scope="openid profile", nonce="nonce-xyz", auth_time=auth_time, org="org-c")
    c.equal(r.status, 200, "POST /codes answers 200")
    check_no_store(c, r, "POST /codes")
    c.equal((r.json() or {}).get("expires_in"), 60, "a code lives 60 s")
    c.check(isinstance(code, str) and len(code) == 43, "the code is 43 base64url characters (32 bytes)")
    r, doc = api.redeem(code, verifier)
    c.equal(r.status, 200, "the code grant (form) answers 200")
    check_no_store(c, r, "the code grant")
    if r.status != 200:
        return
    c.equal((doc.get("token_type"), doc.get("expires_in"), doc.get("scope")), ("Bearer", ACCESS_TTL, "openid profile"),
            "token_type, expires_in, scope")
    jwks = api.jwks()
    algs = api.discovery.get("id_token_signing_alg_values_supported", ["RS256"]) if api.discovery else ["RS256"]
    ah, a = jwt_parts(doc["access_token"])
    rh, rp = jwt_parts(doc["refresh_token"])
    ih, i = jwt_parts(doc["id_token"])
    c.equal((ah.get("typ"), a.get("sub"), a.get("client_id"), a.get("scope"), a.get("org"), a.get("aud")),
            ("at+jwt", "carol", CLIENT, "openid profile", "org-c", "api"), "access token: typ, sub, client_id, scope, org, aud")
    c.equal((rh.get("typ"), rp.get("family"), rp.get("sub")), ("rt+jwt", rp.get("jti"), "carol"),
            "refresh token: rt+jwt, the family's first")
    c.equal((ih.get("alg"), ih.get("typ"), i.get("aud"), i.get("azp"), i.get("nonce"), i.get("auth_time"), i.get("sub")),
            ("RS256", "JWT", CLIENT, CLIENT, "nonce-xyz", auth_time, "carol"),
            "ID token: RS256, aud = azp = client_id, nonce, auth_time as given")
    c.equal((a["exp"] - a["iat"], rp["exp"] - rp["iat"], i["exp"] - i["iat"]), (ACCESS_TTL, REFRESH_TTL, ID_TTL),
            "lifetimes are access_ttl, refresh_ttl and id_ttl")
    for what, t in (("access", doc["access_token"]), ("id", doc["id_token"])):
        rec = api.record(jwt_parts(t)[1]["jti"]) or {}
        c.equal(rec.get("family"), rp["jti"], f"the {what} token's record names the refresh token's family")

    # Independent verifiers, against the JWKS behind the discovery's jwks_uri.
    key = lambda t: api.pyjwt_key(t)  # noqa: E731
    try:
        api.jwt.decode(doc["id_token"], key(doc["id_token"]), algorithms=algs, audience=CLIENT, issuer=api.d.issuer,
                       options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        api.jwt.decode(doc["access_token"], key(doc["access_token"]), algorithms=algs, audience="api",
                       issuer=api.d.issuer)
        api.jwt.decode(doc["refresh_token"], key(doc["refresh_token"]), algorithms=algs, audience="api",
                       issuer=api.d.issuer)
        c.check(True, "PyJWT verifies the three tokens with the discovery's algorithms")
    except Exception as e:  # noqa: BLE001
        c.check(False, "PyJWT verifies the three tokens with the discovery's algorithms", repr(e))
    ks = api.jwcrypto.jwk.JWKSet.from_json(json.dumps(jwks))
    for what, t in (("access", doc["access_token"]), ("refresh", doc["refresh_token"]), ("id", doc["id_token"])):
        try:
            api.jwcrypto.jwt.JWT(jwt=t, key=ks, algs=algs + ["ES256"])
            c.check(True, f"jwcrypto verifies the {what} token")
        except Exception as e:  # noqa: BLE001
            c.check(False, f"jwcrypto verifies the {what} token", repr(e))
    if node_ok:
        path = os.path.join(workdir, "oidc.json")
        with open(path, "w") as f:
            json.dump({"jwks": jwks, "issuer": api.d.issuer, "client_id": CLIENT, "algorithms": algs,
                       "nonce": "nonce-xyz", "token": doc["id_token"]}, f)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify_jose_oidc.mjs")
        out = subprocess.run(["node", script, path], capture_output=True, text=True, timeout=120,
                             cwd=os.path.dirname(script))
        os.unlink(path)
        c.equal(out.returncode, 0, "npm jose verifies the ID token as an OIDC relying party",)
        if out.returncode != 0:
            print(out.stdout, out.stderr)

    c.section("authorization_code grant: a reused code")
    r, again = api.redeem(code, verifier)
    c.equal(api.error_of(r), (400, "invalid_grant"), "the same code again answers invalid_grant")
    for what, t in (("access", doc["access_token"]), ("refresh", doc["refresh_token"]), ("id", doc["id_token"])):
        c.equal(api.verify(t), (False, "revoked"), f"the first redemption's {what} token is now revoked")
    rec = api.record(rp["jti"]) or {}
    c.equal(rec.get("reason"), "authorization code reuse", "reason: authorization code reuse")
    r, _ = api.refresh(doc["refresh_token"])
    c.equal(api.error_of(r), (400, "invalid_grant"), "its refresh token no longer refreshes")


def code_failures(c, api):
    c.section("authorization_code grant: failure paths")
    r, code, verifier = api.new_code()
    r, _ = api.redeem(code, b64url_encode(os.urandom(40)))
    c.equal(api.error_of(r), (400, "invalid_grant"), "a wrong code_verifier answers invalid_grant")
    r, _ = api.redeem(code, verifier)
    c.equal(api.error_of(r), (400, "invalid_grant"), "the code is burnt by the wrong verifier: the right one fails after")

    r, code, verifier = api.new_code()
    r, _ = api.redeem(code, verifier, redirect_uri=REDIRECT + "/other")
    c.equal(api.error_of(r), (400, "invalid_grant"), "a wrong redirect_uri answers invalid_grant")
    r, _ = api.redeem(code, verifier)
    c.equal(api.error_of(r), (400, "invalid_grant"), "the code is burnt by the wrong redirect_uri")

    r, code, verifier = api.new_code()
    r, _ = api.redeem(code, verifier, client_id="evil-app")
    c.equal(api.error_of(r), (400, "invalid_grant"), "a wrong client_id answers invalid_grant")

    r, code, verifier = api.new_code()
    r, _ = api.redeem(code, "too-short")
    c.equal(api.error_of(r), (400, "invalid_request"), "a malformed code_verifier (RFC 7636 §4.1) is invalid_request")
    r, doc = api.redeem(code, verifier, as_form=False)
    c.equal(r.status, 200, "a malformed request does not consume the code; the grant as JSON then passes")

    r, _ = api.redeem(b64url_encode(os.urandom(32)), verifier)
    c.equal(api.error_of(r), (400, "invalid_grant"), "an unknown code answers invalid_grant")
    r, _ = api.redeem("not-a-code", verifier)
    c.equal(api.error_of(r), (400, "invalid_grant"), "a malformed code answers invalid_grant")
    r = api.call("POST", "/token", form={"grant_type": "authorization_code", "code": "x", "client_id": CLIENT,
                                         "redirect_uri": REDIRECT})
    c.equal(api.error_of(r), (400, "invalid_request"), "a code grant without code_verifier: invalid_request")

    c.section("POST /codes: refusals")
    verifier, challenge = pkce_pair()
    base = {"subject": "carol", "client_id": CLIENT, "redirect_uri": REDIRECT, "code_challenge": challenge}
    for what, body in (("plain", {**base, "code_challenge_method": "plain", "code_challenge": verifier}),
                       ("no method", base),
                       ("a fragment in redirect_uri", {**base, "code_challenge_method": "S256",
                                                       "redirect_uri": REDIRECT + "#x"}),
                       ("a relative redirect_uri", {**base, "code_challenge_method": "S256", "redirect_uri": "/cb"}),
                       ("a short challenge", {**base, "code_challenge_method": "S256", "code_challenge": challenge[:-1]}),
                       ("an unknown member", {**base, "code_challenge_method": "S256", "state": "s"})):
        r = api.call("POST", "/codes", body, bearer=api.admin)
        c.equal(api.error_of(r), (400, "invalid_request"), f"POST /codes with {what} answers 400")
    r = api.call("POST", "/codes", {**base, "code_challenge_method": "S256"})
    c.equal(r.status, 401, "POST /codes without a bearer answers 401")
    reader = api.keep(api.d.mint("tokens:read"))
    r = api.call("POST", "/codes", {**base, "code_challenge_method": "S256"}, bearer=reader)
    c.equal(r.status, 403, "POST /codes with tokens:read only answers 403")
    confined = api.keep(api.d.mint("tokens:issue", org="org-x"))
    r = api.call("POST", "/codes", {**base, "code_challenge_method": "S256", "org": "org-y"}, bearer=confined)
    c.equal(r.status, 403, "a caller of org-x cannot register a code for org-y")
    r, code, verifier = api.new_code((verifier, challenge), bearer=confined)
    r, doc = api.redeem(code, verifier)
    c.check(r.status == 200 and jwt_parts(doc["id_token"])[1].get("org") == "org-x",
            "a confined caller's code gives tokens of its org", f"{r.status}")


def leaks(c, api):
    c.section("no error echoes a token, code or verifier")
    bad = [r.status for r in api.d.responses if r.status >= 400
           and any(s.encode() in r.body for s in api.secrets)]
    c.check(not bad, f"none of the error responses ({sum(r.status >= 400 for r in api.d.responses)}) "
            f"contains one of {len(api.secrets)} secrets", f"statuses {bad}")


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    jwt, jwcrypto = import_verifiers()
    node_ok = (subprocess.run(["sh", "-c", "command -v node"], capture_output=True).returncode == 0 and
               os.path.isdir(os.path.join(source_dir, "tests", "integration", "node_modules", "jose")))
    if not node_ok and os.environ.get("TEST_REQUIRE_ALL") == "1":
        raise Skip("node or npm's jose is missing (cd tests/integration && npm ci)")
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_oauth: FAILED: {build_dir}/{exe} is not built")
            return False

    c = Checker("test_oauth")
    work = Workdir("hsmjwt-oauth-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-oauth")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"),
                    {"HSMJWT_ACCESS_TTL": str(ACCESS_TTL), "HSMJWT_REFRESH_TTL": str(REFRESH_TTL),
                     "HSMJWT_ID_TTL": str(ID_TTL), "HSMJWT_FSYNC": "always",
                     "HSMJWT_AUTHORIZATION_ENDPOINT": LOGIN})
    api = Api(c, daemon, jwt, jwcrypto)

    def body():
        c.section("start")
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} (pid {daemon.proc.pid})")
        api.admin = api.keep(daemon.mint("admin", ttl=3600))
        guarded(c, "discovery", discovery, c, api)
        guarded(c, "issuance", issuance, c, api)
        guarded(c, "rotation", rotation, c, api)
        guarded(c, "reuse", reuse, c, api)
        guarded(c, "logout", logout, c, api)
        guarded(c, "concurrent", concurrent, c, api)
        guarded(c, "code flow", code_flow, c, api, node_ok, work.path)
        guarded(c, "code failures", code_failures, c, api)
        leaks(c, api)
        if not node_ok:
            print("  note: node or npm's jose is missing: the ID token was not checked with jose")

    def log_checks(log):
        found = [i for i, s in enumerate(api.secrets) if s in log]
        c.check(not found, f"the log contains none of the {len(api.secrets)} tokens, codes and verifiers",
                f"secret #{found} found")
        c.check("grant reused: family revoked" in log, "the log records the reuse detections")

    return run_daemon_test(c, work, daemon, body, log_checks)


if __name__ == "__main__":
    main_with_dirs("test_oauth", run)
