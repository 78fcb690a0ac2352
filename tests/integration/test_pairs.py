#!/usr/bin/python3
"""End-to-end test of parent/child pairs, renewal, auto-renewal, /tokens/latest
and the Server-Sent Events stream (issue 5, SPEC §4.2 and §5.5), over HTTP
against the real daemon on a throwaway SoftHSM token.

Every token is checked twice: by the daemon (/token/verify, the registry
records) and independently with PyJWT against the published JWKS.

The SSE section runs the daemon with child_ttl 8 and renew_before 4: a
parent's next child is issued 4 s before the current one expires.  It is
judged on the daemon's own stamps and the order of events, not on the test's
clock: each renewed child arrives on the stream after the one it replaces,
issued (its iat) no earlier than renew_before before that one's exp and
before that exp, and outliving it.  Every wait has a deadline (generous: it
fails only when the event never comes) and looks at least once, and no
verdict depends on which of two racing events came first.

The /renew bound (live children per parent) runs on a second daemon whose
child_ttl is long, so that no child expires, freeing a place, however slowly
the renewals come.

With the fault module (tests/faultp11) a second daemon runs on
libfaultp11.so: while every call into the token fails, an auto-renewed
parent's stream stays open on its current child, /tokens/latest answers 503
once that child has run out, and after the fault is cleared renewals resume
on their own and a new child arrives and verifies.

Usage: test_pairs.py BUILD_DIR SOURCE_DIR [FAULT_MODULE SOFTHSM_MODULE]
       (exit 0 pass, 1 fail, 77 skip; an empty FAULT_MODULE skips the fault
       section only)
"""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Token, Workdir, faultp11_command, guarded, import_pyjwt,  # noqa: E402
                            jwt_parts, random_jti, require_tools, run_daemon_test, run_main)

ALGORITHMS = ["ES256"]
CHILD_TTL = 8           # the daemon's child_ttl: the SSE section's children
RENEW_BEFORE = 4        # the daemon's renew_before
LEEWAY = 2
LONG_CHILD = 600        # children that must outlive a section; the bound daemon's child_ttl
LIVE_CHILDREN = 8       # RENEW_MAX_LIVE_CHILDREN: /renew's bound per parent
STREAMS_PER_PARENT = 8  # RENEW_MAX_SUBSCRIBERS_PER_PARENT
EVENT_DEADLINE = 30.0   # longest wait for an event that must come (seconds)
STOP_DEADLINE = 15.0    # SIGTERM with a stream open: "promptly"
RECOVERY_DEADLINE = 90.0  # keyring recovery (backoff to 8 s) + the renewal's (to 16 s), under ASan


class SseStream:
    """A raw-socket client of GET /tokens/stream: the response head, then the
    chunked body decoded and split into SSE events, each with the time (the
    test's clock) its last byte arrived."""

    def __init__(self, port, path, bearer, method="GET", timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        req = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bearer}\r\n" \
              "Accept: text/event-stream\r\n\r\n"
        self.sock.sendall(req.encode())
        self.raw = b""          # received, not yet decoded
        self.body = b""         # decoded chunk data, not yet split into events
        self.ended = False      # the terminating chunk came
        self.eof = False
        self.status, self.headers = self._head(time.monotonic() + timeout)

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        self.sock.settimeout(max(left, 0.01))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.raw += data
        return True

    def _head(self, deadline):
        while b"\r\n\r\n" not in self.raw:
            if not self._recv(deadline):
                raise RuntimeError(f"no response head from /tokens/stream: {self.raw[:200]!r}")
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def _decode_chunks(self):
        while not self.ended:
            if b"\r\n" not in self.raw:
                return
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.ended = True
                self.raw = rest
                return
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            assert rest[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
            self.raw = rest[size + 2:]

    def next_event(self, deadline):
        """The next event as (fields, arrival time) — comments are skipped —,
        or None when the deadline passes or the stream ends first.  Looks at
        what was already received before it gives up."""
        while True:
            self._decode_chunks()
            while b"\n\n" in self.body:
                block, self.body = self.body.split(b"\n\n", 1)
                fields = {}
                for line in block.decode().split("\n"):
                    if line.startswith(":"):
                        continue
                    k, _, v = line.partition(":")
                    fields[k] = v[1:] if v.startswith(" ") else v
                if fields:
                    return fields, time.time()
            if self.ended or not self._recv(deadline):
                return None

    def wait_closed(self, deadline):
        """True when the server closes the connection before the deadline."""
        while not self.eof:
            if not self._recv(deadline) and not self.eof and time.monotonic() >= deadline:
                return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Api:
    def __init__(self, c, daemon, jwt):
        self.c = c
        self.d = daemon
        self.jwt = jwt
        self.secrets = []       # every token seen, for the log check

    def call(self, method, path, bearer=None, body=None, headers=None):
        h = dict(headers or {})
        if bearer is not None:
            h["Authorization"] = f"Bearer {bearer}"
        return self.d.request(method, path, body, h)

    def keep(self, *tokens):
        self.secrets += [t for t in tokens if t]

    def pair(self, caller, what, **body):
        body.setdefault("subject", "alice")
        r = self.call("POST", "/token-pairs", caller, body)
        doc = r.json() or {}
        if not self.c.check(r.status == 200 and isinstance(doc.get("parent_token"), str),
                            f"POST /token-pairs ({what}) answers 200 with a parent", f"{r.status} {r.body[:300]!r}"):
            return None
        self.keep(doc.get("parent_token"), doc.get("child_token"))
        return doc

    def renew(self, parent_token):
        r = self.call("POST", "/renew", None, {"parent_token": parent_token})
        if r.status == 200:
            self.keep((r.json() or {}).get("child_token"))
        return r

    def verify(self, token, token_type=None):
        body = {"token": token}
        if token_type:
            body["token_type"] = token_type
        r = self.call("POST", "/token/verify", None, body)
        doc = r.json() or {}
        if r.status != 200:
            return ("http", r.status)
        return (True, doc.get("status")) if doc.get("valid") is True else (False, doc.get("error"))

    def record(self, root, jti):
        r = self.call("GET", f"/tokens/{jti}", root)
        return r.status, (r.json() or {})

    def pyjwt(self, token, audience="api"):
        """The claims PyJWT accepts with the key the JWKS publishes for the
        token's kid (raises on any failure).  The leeway lets a child of
        CHILD_TTL seconds pass if the test stalls: what is checked is the
        signature, iss, aud and the claims a child must have."""
        header, _ = jwt_parts(token)
        keys = {k["kid"]: k for k in self.d.jwks()["keys"]}
        key = self.jwt.PyJWK(keys[header["kid"]]).key
        return self.jwt.decode(token, key, algorithms=[header["alg"]], audience=audience, issuer=self.d.issuer,
                               leeway=EVENT_DEADLINE,
                               options={"require": ["exp", "iat", "nbf", "jti", "sub", "iss", "aud"]})

    def pyjwt_ok(self, token, what, audience="api"):
        try:
            claims = self.pyjwt(token, audience)
        except Exception as e:  # noqa: BLE001 — the failure is the check's detail
            self.c.check(False, f"{what}: PyJWT verifies it against the JWKS", f"{type(e).__name__}: {e}")
            return None
        self.c.check(True, f"{what}: PyJWT verifies it against the JWKS")
        return claims


# ---------------------------------------------------------------------------


def pairs(c, api, root):
    c.section("POST /token-pairs: claims of parent and child, checked with PyJWT")
    doc = api.pair(root, "with a child", subject="alice", audience=["api", "billing"], scope="read write",
                   claims={"tier": "gold", "seats": 5}, parent_expires_in=3600, child_expires_in=LONG_CHILD)
    if doc is None:
        return
    c.check(isinstance(doc.get("child_token"), str) and isinstance(doc.get("child_jti"), str),
            "the answer carries child_token and child_jti", repr(list(doc)))
    c.check(0 < doc.get("expires_in", 0) <= LONG_CHILD and doc.get("expires_in", 0) >= LONG_CHILD - 5,
            "expires_in is the child's lifetime", repr(doc.get("expires_in")))
    c.check(3600 - 5 <= doc.get("parent_expires_in", 0) <= 3600, "parent_expires_in is the parent's lifetime",
            repr(doc.get("parent_expires_in")))
    ph, pc = jwt_parts(doc["parent_token"])
    ch, cc = jwt_parts(doc["child_token"])
    c.equal(ph.get("typ"), "parent+jwt", "parent header typ")
    c.equal(pc.get("token_type"), "parent", "parent claim token_type")
    c.equal(pc.get("jti"), doc.get("parent_jti"), "parent_jti is the parent's jti")
    c.check("auto_renew" not in pc, "a parent without auto_renew carries no auto_renew claim", repr(pc))
    c.equal(ch.get("typ"), "at+jwt", "child header typ (the API's bearer token)")
    c.equal(cc.get("token_type"), "child", "child claim token_type")
    c.equal(cc.get("jti"), doc.get("child_jti"), "child_jti is the child's jti")
    c.equal(cc.get("parent_jti"), pc.get("jti"), "the child's parent_jti names its parent")
    for claim in ("sub", "aud", "scope", "client_id", "tier", "seats", "iss"):
        c.equal(cc.get(claim), pc.get(claim), f"the child inherits {claim}")
    c.equal((pc.get("sub"), pc.get("aud"), pc.get("scope"), pc.get("tier")),
            ("alice", ["api", "billing"], "read write", "gold"), "the parent carries the request's claims")
    c.check(cc["exp"] <= pc["exp"], "the child's exp is within the parent's", f"{cc['exp']} > {pc['exp']}")
    c.check(isinstance(cc.get("status"), dict) and cc["status"] != pc.get("status"),
            "parent and child each have their own status-list entry", repr((pc.get("status"), cc.get("status"))))
    for token, what in ((doc["parent_token"], "parent"), (doc["child_token"], "child")):
        claims = api.pyjwt_ok(token, what)
        if claims is not None:
            c.equal(claims.get("token_type"), what, f"PyJWT's {what} claims: token_type {what}")
    c.equal(api.verify(doc["child_token"], "child"), (True, "active"), "/token/verify token_type child: valid, active")
    c.equal(api.verify(doc["parent_token"], "parent"), (True, "active"),
            "/token/verify token_type parent: valid, active")
    c.equal(api.verify(doc["child_token"], "parent"), (False, "wrong_type"), "a child is not a parent")
    c.equal(api.verify(doc["parent_token"], "access"), (False, "wrong_type"), "a parent is not an access token")
    c.equal(api.verify(doc["parent_token"], "child"), (False, "wrong_type"), "a parent is not a child")
    status, rec = api.record(root, doc["child_jti"])
    c.equal((status, rec.get("type"), rec.get("parent_jti"), rec.get("status")),
            (200, "child", doc["parent_jti"], "active"), "GET /tokens/{child_jti}: a child record naming its parent")
    status, rec = api.record(root, doc["parent_jti"])
    c.equal((status, rec.get("type"), rec.get("subject")), (200, "parent", "alice"), "GET /tokens/{parent_jti}")

    c.section("POST /token-pairs: without a child, with auto_renew, and refusals")
    doc = api.pair(root, "include_child false", include_child=False, parent_expires_in=1200)
    if doc:
        c.check("child_token" not in doc and "child_jti" not in doc, "no child_token, no child_jti", repr(list(doc)))
        c.equal(doc.get("expires_in"), doc.get("parent_expires_in"), "expires_in is the parent's without a child")
        c.check(1195 <= doc.get("expires_in", 0) <= 1200, "the parent lives parent_expires_in", repr(doc))
    doc = api.pair(root, "auto_renew", auto_renew=True, child_expires_in=LONG_CHILD)
    if doc:
        c.equal(jwt_parts(doc["parent_token"])[1].get("auto_renew"), True, "an auto_renew parent says so")
        c.check("auto_renew" not in jwt_parts(doc["child_token"])[1], "its child does not")
    for body, want, what in (({"subject": "a", "expires_in": 60}, 400, "an unknown member"),
                             ({"subject": "a", "parent_expires_in": 60, "child_expires_in": 61}, 400,
                              "a child outliving its parent"),
                             ({"subject": "a", "claims": {"roles": ["admin"]}}, 400, "roles in a parent"),
                             ({"subject": "a", "claims": {"parent_jti": random_jti()}}, 400, "a preset parent_jti"),
                             ({"subject": "a", "auto_renew": "yes"}, 400, "auto_renew not a boolean"),
                             ({"subject": "a", "auto_renew": True, "child_expires_in": 1}, 400,
                              "auto_renew and a child renewed every second"),
                             ({"subject": "a", "auto_renew": True, "child_expires_in": 2 * RENEW_BEFORE - 1}, 400,
                              "auto_renew and a child shorter than twice renew_before"),
                             ({"audience": "api"}, 400, "no subject")):
        r = api.call("POST", "/token-pairs", root, body)
        c.equal((r.status, (r.json() or {}).get("error")), (want, "invalid_request"), f"POST /token-pairs with {what}")
    r = api.call("POST", "/token-pairs", None, {"subject": "a"})
    c.equal(r.status, 401, "POST /token-pairs without a bearer token")
    reader = api.d.mint("tokens:read", ttl=600, sub="reader")
    api.keep(reader)
    r = api.call("POST", "/token-pairs", reader, {"subject": "a"})
    c.equal((r.status, (r.json() or {}).get("error")), (403, "insufficient_scope"),
            "POST /token-pairs without tokens:issue")
    confined = api.d.mint("tokens:issue", ttl=600, org="acme", sub="acme-frontend")
    api.keep(confined)
    doc = api.pair(confined, "by a caller confined to acme")
    if doc:
        c.equal((jwt_parts(doc["parent_token"])[1].get("org"), jwt_parts(doc["child_token"])[1].get("org")),
                ("acme", "acme"), "parent and child carry the confined caller's org")
    r = api.call("POST", "/token-pairs", confined, {"subject": "a", "org": "globex"})
    c.equal(r.status, 403, "a confined caller cannot issue a pair for another org")


def renewal(c, api, root, bound_api, bound_root):
    c.section("POST /renew: a new child that verifies; the failure paths")
    doc = api.pair(root, "for /renew", claims={"tier": "gold"}, child_expires_in=LONG_CHILD)
    if doc is None:
        return
    parent = doc["parent_token"]
    r = api.renew(parent)
    got = r.json() or {}
    if c.check(r.status == 200 and isinstance(got.get("child_token"), str),
               "POST /renew answers 200 with a child", f"{r.status} {r.body[:300]!r}"):
        _, cc = jwt_parts(got["child_token"])
        c.equal(cc.get("jti"), got.get("child_jti"), "child_jti is the child's jti")
        c.check(got["child_jti"] != doc["child_jti"], "a new child, not the pair's")
        c.equal((cc.get("token_type"), cc.get("parent_jti"), cc.get("tier"), cc.get("sub")),
                ("child", doc["parent_jti"], "gold", "alice"), "the renewed child's claims")
        c.check(0 < got.get("expires_in", 0) <= CHILD_TTL, "expires_in is child_ttl at most", repr(got))
        c.check(cc["exp"] <= jwt_parts(parent)[1]["exp"], "within the parent's exp")
        c.equal(api.verify(got["child_token"], "child"), (True, "active"), "the renewed child verifies (/token/verify)")
        api.pyjwt_ok(got["child_token"], "the renewed child")
        c.equal(r.header("Cache-Control"), "no-store", "POST /renew: Cache-Control no-store")

    access = (api.call("POST", "/token", root, {"subject": "alice", "expires_in": 600}).json() or {}).get("access_token")
    api.keep(access)
    for token, what in ((access, "an access token"), (doc["child_token"], "a child token"),
                        ("not.a.token", "garbage"), (parent + "x", "a parent with a bad signature")):
        r = api.renew(token)
        c.equal((r.status, (r.json() or {}).get("error")), (401, "invalid_token"), f"POST /renew with {what}: 401")
    for body, what in (({}, "no parent_token"), ({"parent_token": parent, "extra": 1}, "an extra member"),
                       ({"parent_token": 5}, "a number")):
        r = api.call("POST", "/renew", None, body)
        c.equal(r.status, 400, f"POST /renew with {what}: 400")

    c.section(f"POST /renew: {LIVE_CHILDREN} live children per parent, the next is 429 "
              f"(child_ttl {LONG_CHILD}: none expires meanwhile)")
    doc = bound_api.pair(bound_root, "for the /renew bound", include_child=False)
    if doc:
        got = [bound_api.renew(doc["parent_token"]) for _ in range(LIVE_CHILDREN + 1)]
        c.equal([r.status for r in got[:LIVE_CHILDREN]], [200] * LIVE_CHILDREN,
                f"the first {LIVE_CHILDREN} /renew answer 200")
        # The place the 429 refuses is held by live children: each of the
        # first LIVE_CHILDREN lives child_ttl, far past the end of this section.
        lives = [(r.json() or {}).get("expires_in", 0) for r in got[:LIVE_CHILDREN]]
        c.check(all(LONG_CHILD - 60 <= x <= LONG_CHILD for x in lives),
                f"each of them lives child_ttl ({LONG_CHILD} s)", repr(lives))
        last = got[LIVE_CHILDREN]
        c.equal((last.status, (last.json() or {}).get("error")), (429, "rate_limited"),
                f"/renew number {LIVE_CHILDREN + 1} answers 429 rate_limited")
        c.check((last.header("Retry-After") or "").isdigit(), "with Retry-After", repr(last.header("Retry-After")))
        other = bound_api.pair(bound_root, "another parent, not bounded by the first", include_child=False)
        if other:
            c.equal(bound_api.renew(other["parent_token"]).status, 200, "another parent's /renew still answers 200")

    c.section("revoking a parent revokes every child (POST /token/revoke with the parent token)")
    doc = api.pair(root, "to revoke by token", child_expires_in=LONG_CHILD)
    if doc:
        children = [doc["child_jti"]]
        tokens = [doc["child_token"]]
        for _ in range(2):
            got = api.renew(doc["parent_token"]).json() or {}
            children.append(got.get("child_jti"))
            tokens.append(got.get("child_token"))
        c.check(all(tokens), "two more children by /renew")
        c.equal(api.verify(tokens[0]), (True, "active"), "before: the pair's child verifies")
        r = api.call("POST", "/token/revoke", root, {"token": doc["parent_token"]})
        c.equal(r.status, 200, "POST /token/revoke with the parent token")
        c.equal(api.verify(doc["parent_token"]), (False, "revoked"), "the parent is revoked")
        for i, (jti, token) in enumerate(zip(children, tokens)):
            if token is None:
                continue
            c.equal(api.verify(token), (False, "revoked"), f"child {i}: /token/verify says revoked")
            c.equal(api.record(root, jti)[1].get("status"), "revoked", f"child {i}: GET /tokens/{{jti}} says revoked")
        r = api.renew(doc["parent_token"])
        c.equal((r.status, (r.json() or {}).get("error")), (401, "invalid_token"), "POST /renew with a revoked parent")

    c.section("revoking a parent by PATCH /tokens/{parent_jti} revokes its child")
    doc = api.pair(root, "to revoke by PATCH", child_expires_in=LONG_CHILD)
    if doc:
        r = api.call("PATCH", f"/tokens/{doc['parent_jti']}", root, {"status": "revoked"})
        c.equal(r.status, 200, "PATCH the parent to revoked")
        c.equal(api.verify(doc["child_token"], "child"), (False, "revoked"), "its child no longer verifies")
        c.equal(api.record(root, doc["child_jti"])[1].get("status"), "revoked", "its child's record is revoked")

    c.section("a suspended parent suspends its child's verification; reactivation restores it")
    doc = api.pair(root, "to suspend", child_expires_in=LONG_CHILD)
    if doc:
        r = api.call("PATCH", f"/tokens/{doc['parent_jti']}", root, {"status": "suspended"})
        c.equal(r.status, 200, "PATCH the parent to suspended")
        c.equal(api.verify(doc["child_token"], "child"), (False, "suspended"), "the child fails with suspended")
        r = api.call("POST", "/authorize", doc["child_token"])
        c.equal(r.status, 401, "POST /authorize refuses the child of a suspended parent")
        c.equal(api.record(root, doc["child_jti"])[1].get("status"), "active",
                "the child's own record stays active (suspension does not cascade)")
        r = api.renew(doc["parent_token"])
        c.equal(r.status, 401, "POST /renew with a suspended parent: 401")
        r = api.call("PATCH", f"/tokens/{doc['parent_jti']}", root, {"status": "active"})
        c.equal(r.status, 200, "PATCH the parent back to active")
        c.equal(api.verify(doc["child_token"], "child"), (True, "active"), "the child verifies again")
        r = api.call("POST", "/authorize", doc["child_token"])
        c.equal((r.status, r.header("x-auth-subject")), (200, "alice"), "POST /authorize lets it pass again")
        r = api.renew(doc["parent_token"])
        c.equal(r.status, 200, "POST /renew works again")


def latest(c, api, root):
    c.section("GET /tokens/latest: the newest child of an auto-renewed parent, and refusals")
    auto = api.pair(root, "auto_renew for latest", auto_renew=True)
    other = api.pair(root, "another auto_renew parent", auto_renew=True)
    plain = api.pair(root, "without auto_renew", child_expires_in=LONG_CHILD)
    if not (auto and other and plain):
        return
    path = f"/tokens/latest?parent_jti={auto['parent_jti']}"
    r = api.call("GET", path, auto["parent_token"])
    got = r.json() or {}
    if c.check(r.status == 200 and isinstance(got.get("child_token"), str), "GET /tokens/latest answers 200",
               f"{r.status} {r.body[:300]!r}"):
        api.keep(got["child_token"])
        _, cc = jwt_parts(got["child_token"])
        c.equal(r.header("Cache-Control"), "no-store", "Cache-Control: no-store")
        c.equal((cc.get("jti"), cc.get("parent_jti"), cc.get("token_type")),
                (got.get("child_jti"), auto["parent_jti"], "child"), "a child of that parent")
        c.check(cc["iat"] >= jwt_parts(auto["child_token"])[1]["iat"], "the pair's child or a newer one")
        c.check(0 <= got.get("expires_in", -1) <= CHILD_TTL, "expires_in within child_ttl", repr(got))
        api.pyjwt_ok(got["child_token"], "the latest child")
    r = api.call("GET", path)
    c.equal((r.status, r.header("WWW-Authenticate")), (401, 'Bearer realm="hsmjwt"'),
            "no bearer: 401 with a bare challenge")
    access = (api.call("POST", "/token", root, {"subject": "alice", "expires_in": 600}).json() or {}).get("access_token")
    api.keep(access)
    for bearer, what in ((access, "an access token"), (auto["child_token"], "its child"), ("x.y.z", "garbage")):
        r = api.call("GET", path, bearer)
        c.equal((r.status, (r.json() or {}).get("error")), (401, "invalid_token"), f"bearer {what}: 401")
    mismatch = api.call("GET", path, other["parent_token"])
    c.equal((mismatch.status, (mismatch.json() or {}).get("error")), (403, "insufficient_scope"),
            "another parent as bearer: 403")
    unknown = api.call("GET", f"/tokens/latest?parent_jti={random_jti()}", other["parent_token"])
    c.equal((unknown.status, unknown.body), (mismatch.status, mismatch.body),
            "a parent_jti nobody has: the same answer, byte for byte (nothing learnt about parent_jti)")
    for query, what in (("", "no parent_jti"), (f"?parent_jti={auto['parent_jti']}&x=1", "an extra parameter"),
                        (f"?parent_jti={auto['parent_jti']}&parent_jti={auto['parent_jti']}", "parent_jti twice")):
        r = api.call("GET", "/tokens/latest" + query, auto["parent_token"])
        c.equal(r.status, 400, f"GET /tokens/latest with {what}: 400")
    r = api.call("GET", f"/tokens/latest?parent_jti={plain['parent_jti']}", plain["parent_token"])
    c.equal((r.status, (r.json() or {}).get("error")), (404, "not_found"), "a parent without auto_renew: 404")
    r = api.call("GET", f"/tokens/stream?parent_jti={plain['parent_jti']}", plain["parent_token"])
    c.equal(r.status, 404, "GET /tokens/stream of a parent without auto_renew: 404")
    r = api.call("HEAD", f"/tokens/stream?parent_jti={auto['parent_jti']}", auto["parent_token"])
    c.equal((r.status, r.header("Content-Type"), r.body), (200, "text/event-stream", b""),
            "HEAD /tokens/stream: the headers, no stream")


def expect_child_event(c, api, stream, parent_jti, what, deadline):
    """The next event, which must be a token event carrying a child of
    parent_jti: (child claims, data, arrival) or None."""
    got = stream.next_event(deadline)
    if not c.check(got is not None, f"{what}: an event arrives", "none before the deadline"):
        return None
    fields, arrival = got
    try:
        data = json.loads(fields.get("data", ""))
    except ValueError:
        data = {}
    if not c.check(fields.get("event") == "token" and isinstance(data.get("child_token"), str),
                   f"{what}: event: token with the /renew JSON as data", repr(fields)[:300]):
        return None
    api.keep(data["child_token"])
    _, cc = jwt_parts(data["child_token"])
    c.equal((fields.get("id"), data.get("child_jti")), (cc.get("jti"), cc.get("jti")),
            f"{what}: id and child_jti are the child's jti")
    c.equal((cc.get("token_type"), cc.get("parent_jti")), ("child", parent_jti), f"{what}: a child of the parent")
    return cc, data, arrival


def sse(c, api, root):
    c.section(f"SSE: renewed children arrive before the current one expires (child_ttl {CHILD_TTL}, "
              f"renew_before {RENEW_BEFORE})")
    doc = api.pair(root, "auto_renew for the stream", subject="streamer", auto_renew=True)
    if doc is None:
        return
    pj = doc["parent_jti"]
    stream = SseStream(api.d.port, f"/tokens/stream?parent_jti={pj}", doc["parent_token"])
    try:
        c.equal(stream.status, 200, "GET /tokens/stream answers 200")
        c.equal((stream.headers.get("content-type"), stream.headers.get("cache-control"),
                 stream.headers.get("transfer-encoding")), ("text/event-stream", "no-store", "chunked"),
                "Content-Type text/event-stream, Cache-Control no-store, chunked")
        first = expect_child_event(c, api, stream, pj, "on connect", time.monotonic() + 10)
        if first is None:
            return
        current, _, _ = first
        c.check(current["iat"] >= jwt_parts(doc["child_token"])[1]["iat"],
                "on connect: the current child (the pair's or a newer one)")
        seen = {current["jti"]}
        for n in ("first", "second"):
            got = expect_child_event(c, api, stream, pj, f"{n} renewal", time.monotonic() + EVENT_DEADLINE)
            if got is None:
                return
            cc, data, arrival = got
            # The Must-show's point, on the daemon's own clock: the renewed
            # child, which the stream delivers after the one it replaces, was
            # issued renew_before before that one's exp (the daemon's thread
            # renews at exp - renew_before, never earlier) and before it
            # expired, and outlives it: no moment without a valid child.
            c.check(current["exp"] - RENEW_BEFORE <= cc["iat"] < current["exp"],
                    f"{n} renewal: issued from renew_before ({RENEW_BEFORE} s) before the current child's exp "
                    f"and before that exp",
                    f"iat {cc['iat']}, current exp {current['exp']}")
            c.check(cc["exp"] > current["exp"], f"{n} renewal: outlives the current child",
                    f"exp {cc['exp']} vs {current['exp']}")
            c.check(cc["jti"] not in seen and cc["iat"] >= current["iat"], f"{n} renewal: a new child")
            print(f"    (arrived {arrival - cc['iat']:.2f} s after its iat; shown, not judged)")
            c.check(0 < data.get("expires_in", 0) <= CHILD_TTL, f"{n} renewal: expires_in", repr(data.get("expires_in")))
            c.equal(api.verify(data["child_token"], "child"), (True, "active"),
                    f"{n} renewal: /token/verify says valid, active")
            api.pyjwt_ok(data["child_token"], f"{n} renewal")
            r = api.call("GET", f"/tokens/latest?parent_jti={pj}", doc["parent_token"])
            lj = (r.json() or {}).get("child_token")
            # The latest is this child, or a newer one if a renewal slipped in.
            c.check(r.status == 200 and lj is not None and (jwt_parts(lj)[1]["jti"] == cc["jti"]
                                                            or jwt_parts(lj)[1]["iat"] > cc["iat"]),
                    f"{n} renewal: /tokens/latest returns it", f"{r.status} {r.body[:200]!r}")
            api.keep(lj)
            seen.add(cc["jti"])
            current = cc

        c.section("SSE: revoking the parent ends the stream with event: end")
        r = api.call("POST", "/token/revoke", root, {"token": doc["parent_token"]})
        c.equal(r.status, 200, "the parent is revoked")
        deadline = time.monotonic() + EVENT_DEADLINE
        end = None
        while end is None:
            got = stream.next_event(deadline)
            if got is None:
                break
            fields, _ = got
            if fields.get("event") == "end":
                end = fields
            else:
                # A renewal that was already on its way before the revocation.
                c.check(fields.get("event") == "token", "only token events before the end", repr(fields)[:200])
        c.check(end is not None and json.loads(end.get("data", "{}")) == {"reason": "revoked"},
                'event: end with data {"reason": "revoked"}', repr(end))
        c.check(stream.wait_closed(time.monotonic() + 10), "then the stream closes")
        c.check(stream.ended, "with the terminating chunk")
        r = api.call("GET", f"/tokens/latest?parent_jti={pj}", doc["parent_token"])
        c.equal(r.status, 401, "GET /tokens/latest with the revoked parent: 401")
    finally:
        stream.close()


def stream_limits(c, api, root):
    c.section(f"SSE: {STREAMS_PER_PARENT} streams per parent, the next is 429")
    doc = api.pair(root, "auto_renew for the limit", auto_renew=True)
    if doc is None:
        return
    path = f"/tokens/stream?parent_jti={doc['parent_jti']}"
    streams = []
    try:
        for _ in range(STREAMS_PER_PARENT):
            streams.append(SseStream(api.d.port, path, doc["parent_token"]))
        c.equal([s.status for s in streams], [200] * STREAMS_PER_PARENT, f"{STREAMS_PER_PARENT} streams open")
        extra = SseStream(api.d.port, path, doc["parent_token"])
        c.equal((extra.status, extra.headers.get("retry-after")), (429, "1"), "the next one: 429 with Retry-After")
        extra.close()
    finally:
        for s in streams:
            s.close()
    # Closed streams give their places back (the daemon sees the clients
    # leave); looked at until a deadline.
    deadline = time.monotonic() + 20
    while True:
        s = SseStream(api.d.port, path, doc["parent_token"])
        status = s.status
        s.close()
        if status == 200 or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    c.equal(status, 200, "after the clients left, a stream opens again")


def restart(c, api, root):
    c.section("SIGTERM with a stream open: event: end (shutdown), exit 0 promptly")
    kept = api.pair(root, "auto_renew across the restart", auto_renew=True)
    live = api.pair(root, "auto_renew streamed at the stop", auto_renew=True)
    if not (kept and live):
        return
    before = (api.call("GET", f"/tokens/latest?parent_jti={kept['parent_jti']}", kept["parent_token"]).json()
              or {}).get("child_jti")
    stream = SseStream(api.d.port, f"/tokens/stream?parent_jti={live['parent_jti']}", live["parent_token"])
    try:
        c.equal(stream.status, 200, "a stream is open")
        expect_child_event(c, api, stream, live["parent_jti"], "on connect", time.monotonic() + 10)
        pid = api.d.proc.pid
        t0 = time.monotonic()
        api.d.proc.send_signal(15)
        end = None
        deadline = time.monotonic() + STOP_DEADLINE
        while end is None:
            got = stream.next_event(deadline)
            if got is None:
                break
            if got[0].get("event") == "end":
                end = got[0]
        c.check(end is not None and json.loads(end.get("data", "{}")) == {"reason": "shutdown"},
                'the stream ends with event: end {"reason": "shutdown"}', repr(end))
        c.check(stream.wait_closed(deadline), "and closes")
        try:
            code = api.d.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except Exception:  # noqa: BLE001 — subprocess.TimeoutExpired: the check says it
            code = None
        c.equal(code, 0, f"hsmjwtd (pid {pid}) exits 0 within {STOP_DEADLINE:.0f} s of SIGTERM")
        c.check(True, f"stopped in {time.monotonic() - t0:.2f} s")
        if code is None:
            api.d.kill()
        api.d.proc = None
    finally:
        stream.close()

    c.section("restart: an auto_renew parent that presents itself gets its entry back")
    api.d.start(keep_port=True)
    c.check(True, f"hsmjwtd restarted (pid {api.d.proc.pid})")
    r = api.call("GET", f"/tokens/latest?parent_jti={kept['parent_jti']}", kept["parent_token"])
    got = r.json() or {}
    if c.check(r.status == 200 and isinstance(got.get("child_token"), str),
               "GET /tokens/latest after the restart: 200 with a child", f"{r.status} {r.body[:300]!r}"):
        api.keep(got["child_token"])
        _, cc = jwt_parts(got["child_token"])
        c.check(cc["jti"] not in (before, kept.get("child_jti")), "a child issued after the restart")
        c.equal(cc.get("parent_jti"), kept["parent_jti"], "of that parent")
        c.equal(api.verify(got["child_token"], "child"), (True, "active"), "it verifies")
        api.pyjwt_ok(got["child_token"], "the child after the restart")
    stream = SseStream(api.d.port, f"/tokens/stream?parent_jti={kept['parent_jti']}", kept["parent_token"])
    try:
        c.equal(stream.status, 200, "its stream opens")
        ev = expect_child_event(c, api, stream, kept["parent_jti"], "after the restart, on connect",
                                time.monotonic() + 10)
        if ev is not None and got.get("child_token"):
            c.check(ev[0]["iat"] >= jwt_parts(got["child_token"])[1]["iat"], "with that child or a newer one")
    finally:
        stream.close()
    # The parent whose stream was open at the stop: a stream remakes its
    # entry as well.
    stream = SseStream(api.d.port, f"/tokens/stream?parent_jti={live['parent_jti']}", live["parent_token"])
    try:
        c.equal(stream.status, 200, "a stream of a parent unknown since the restart opens")
        expect_child_event(c, api, stream, live["parent_jti"], "its first child", time.monotonic() + 10)
    finally:
        stream.close()


def faults(c, api, work, token, fault_module, softhsm_module):
    c.section("HSM down: the stream keeps its current child; renewals resume after recovery")
    control = os.path.join(work.path, "control")
    faultp11_command(control, "forward\n")
    d = Daemon(api.d.build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd-faults.log"),
               {"HSMJWT_CHILD_TTL": str(CHILD_TTL), "HSMJWT_RENEW_BEFORE": str(RENEW_BEFORE),
                "HSMJWT_LEEWAY": str(LEEWAY), "HSMJWT_PKCS11_MODULE": fault_module,
                "FAULTP11_TARGET": softhsm_module, "FAULTP11_CONTROL": control,
                "FAULTP11_STATS": os.path.join(work.path, "stats")},
               state_dir=os.path.join(work.path, "faults-state"))
    os.makedirs(d.state_dir, mode=0o700, exist_ok=True)
    fapi = Api(c, d, api.jwt)
    stream = None
    try:
        d.start()
        pid = d.proc.pid
        root = d.mint("admin", ttl=3600, sub="root")
        doc = fapi.pair(root, "auto_renew on the fault module", auto_renew=True)
        if doc is None:
            return
        pj = doc["parent_jti"]
        stream = SseStream(d.port, f"/tokens/stream?parent_jti={pj}", doc["parent_token"])
        seen = {}           # jti -> claims of every child the stream delivered

        def take(ev):
            if ev is not None:
                seen[ev[0]["jti"]] = ev[0]
            return ev

        if take(expect_child_event(c, fapi, stream, pj, "before the fault", time.monotonic() + 10)) is None:
            return
        faultp11_command(control, "error CKR_DEVICE_ERROR\n")
        fault_at = time.time()
        c.check(True, "every call into the token now fails with CKR_DEVICE_ERROR")
        # Until every child delivered so far has expired, then once more:
        # whatever /tokens/latest answers must be one of them, or 503.
        deadline = time.monotonic() + 30
        latest_503 = None
        ended = False
        while time.monotonic() < deadline:
            newest = max(x["exp"] for x in seen.values())
            while time.time() <= newest + 1 and time.monotonic() < deadline:
                got = stream.next_event(time.monotonic() + 0.5)
                if got is not None and got[0].get("event") == "end":
                    ended = True
                elif got is not None and got[0].get("event") == "token":
                    data = json.loads(got[0]["data"])
                    fapi.keep(data["child_token"])
                    seen[jwt_parts(data["child_token"])[1]["jti"]] = jwt_parts(data["child_token"])[1]
                newest = max(x["exp"] for x in seen.values())
            r = fapi.call("GET", f"/tokens/latest?parent_jti={pj}", doc["parent_token"])
            if r.status == 503:
                latest_503 = r
                break
            lj = (r.json() or {}).get("child_jti")
            # A child published just before the fault: the stream has it too.
            c.check(r.status == 200 and lj is not None, "during the fault /tokens/latest answers a child or 503",
                    f"{r.status} {r.body[:200]!r}")
            if r.status != 200:
                break
            while lj not in seen and time.monotonic() < deadline:
                take(expect_child_event(c, fapi, stream, pj, "a child published before the fault", deadline))
        c.check(not ended, "the stream is not ended by the fault")
        c.check(all(x["iat"] <= fault_at + 1 for x in seen.values()),
                "no child issued while the token fails", repr(sorted(x["iat"] for x in seen.values())))
        c.check(latest_503 is not None and (latest_503.json() or {}).get("error") == "hsm_unavailable"
                and latest_503.header("Retry-After") is not None,
                "once its child has run out, /tokens/latest answers 503 hsm_unavailable with Retry-After",
                latest_503 and f"{latest_503.status} {latest_503.body[:200]!r}")
        faultp11_command(control, "forward\n")
        cleared_at = time.time()
        c.check(True, "the fault is cleared")
        got = None
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while got is None and time.monotonic() < deadline:
            ev = stream.next_event(deadline)
            if ev is None:
                break
            if ev[0].get("event") != "token":
                c.check(False, "only token events on the stream", repr(ev[0])[:200])
                break
            data = json.loads(ev[0]["data"])
            fapi.keep(data["child_token"])
            if jwt_parts(data["child_token"])[1]["jti"] not in seen:
                got = (jwt_parts(data["child_token"])[1], data, ev[1])
        if c.check(got is not None, f"a new child arrives on the same stream after the recovery "
                   f"(within {RECOVERY_DEADLINE:.0f} s)"):
            cc, data, arrival = got
            c.check(True, f"it came {arrival - cleared_at:.1f} s after the fault was cleared")
            c.check(cc["iat"] >= int(cleared_at) - 1, "issued after the recovery", f"iat {cc['iat']}")
            c.equal(fapi.verify(data["child_token"], "child"), (True, "active"), "it verifies")
            r = fapi.call("GET", f"/tokens/latest?parent_jti={pj}", doc["parent_token"])
            c.equal(r.status, 200, "/tokens/latest answers 200 again")
        c.equal(d.proc.pid if d.proc else None, pid, "the same daemon throughout")
    finally:
        if stream is not None:
            stream.close()
        if d.proc is not None:
            dpid = d.proc.pid
            c.equal(d.stop(), 0, f"the fault daemon (pid {dpid}) exits 0 on SIGTERM")
        if os.path.exists(d.log_path):
            log = d.log_text()
            c.check("auto-renewal failed, retrying" in log, "its log shows the renewals retried during the fault")
            leaked = [i for i, t in enumerate(fapi.secrets) if t.split(".")[-1] in log]
            c.check(not leaked, "its log contains none of the tokens", repr(leaked[:5]))
            if c.failed:
                print("-- fault daemon log (tail)")
                print(d.log_excerpt())


def run(build_dir, source_dir, fault_module="", softhsm_module=""):
    require_tools(["softhsm2-util"])
    jwt = import_pyjwt()
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_pairs: FAILED: {build_dir}/{exe} is not built")
            return False

    c = Checker("test_pairs")
    work = Workdir("hsmjwt-pairs-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-pairs")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"),
                    {"HSMJWT_CHILD_TTL": str(CHILD_TTL), "HSMJWT_RENEW_BEFORE": str(RENEW_BEFORE),
                     "HSMJWT_LEEWAY": str(LEEWAY), "HSMJWT_FSYNC": "always"})
    api = Api(c, daemon, jwt)
    # A replica on the same token with children that outlive the test.
    bound = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd-bound.log"),
                   {"HSMJWT_CHILD_TTL": str(LONG_CHILD), "HSMJWT_RENEW_BEFORE": str(RENEW_BEFORE),
                    "HSMJWT_LEEWAY": str(LEEWAY)},
                   state_dir=os.path.join(work.path, "bound-state"))
    bound_api = Api(c, bound, jwt)

    def with_bound_daemon(root):
        os.makedirs(bound.state_dir, mode=0o700, exist_ok=True)
        try:
            bound.start()
            bound_root = bound.mint("admin", ttl=3600, sub="root")
            bound_api.keep(bound_root)
            renewal(c, api, root, bound_api, bound_root)
        finally:
            if bound.proc is not None:
                bpid = bound.proc.pid
                c.equal(bound.stop(), 0, f"the child_ttl {LONG_CHILD} daemon (pid {bpid}) exits 0 on SIGTERM")
            if os.path.exists(bound.log_path):
                log = bound.log_text()
                leaked = [i for i, t in enumerate(bound_api.secrets) if t.split(".")[-1] in log]
                c.check(not leaked, "its log contains none of the tokens", repr(leaked[:5]))

    def body():
        c.section("start")
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} (pid {daemon.proc.pid})")
        root = daemon.mint("admin", ttl=3600, sub="root")
        api.keep(root)
        guarded(c, "pairs", pairs, c, api, root)
        guarded(c, "renewal", with_bound_daemon, root)
        guarded(c, "latest", latest, c, api, root)
        guarded(c, "sse", sse, c, api, root)
        guarded(c, "stream limits", stream_limits, c, api, root)
        guarded(c, "restart", restart, c, api, root)
        if fault_module:
            if not os.path.exists(fault_module):
                c.check(False, f"{fault_module} is built")
            else:
                guarded(c, "faults", faults, c, api, work, token, fault_module, softhsm_module)
        else:
            print("-- HSM faults: skipped (no fault module in this build)")

    def log_checks(log):
        leaked = [i for i, s in enumerate(api.secrets) if s.split(".")[-1] in log]
        c.check(not leaked, f"the log contains none of the {len(api.secrets)} tokens' signatures",
                f"token #{leaked[:5]} found")
        c.check(token.pin not in log, "the log does not contain the PIN")

    return run_daemon_test(c, work, daemon, body, log_checks)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 5):
        print("usage: test_pairs.py BUILD_DIR SOURCE_DIR [FAULT_MODULE SOFTHSM_MODULE]", file=sys.stderr)
        sys.exit(2)
    run_main("test_pairs", lambda: run(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]),
                                       *(sys.argv[3:5] if len(sys.argv) == 5 else ())))
