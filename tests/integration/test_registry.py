#!/usr/bin/python3
"""End-to-end test of the token registry (issue 3) over HTTP: organisation
isolation as a matrix (endpoint x caller x target org), roles, status
transitions, pagination, form-encoded OAuth bodies, the Token Status List
decoded independently (PyJWT + zlib, none of the project's code), and a
restart that must give back every record and status unchanged.

The test keeps its own model of every record it caused (jti -> org, subject,
type, status, token) and compares the daemon's answers with it, so a list
that is missing a record, or has one too many, fails.

Usage: test_registry.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import email.utils
import json
import os
import sys
import time
import urllib.parse
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Token, Workdir, b64url_decode, guarded, import_pyjwt, jwt_parts,  # noqa: E402
                            main_with_dirs, random_jti, require_tools, run_daemon_test)

ALGORITHMS = ["ES256"]
TTL = 3600
ORG_A = "org-a"
ORG_B = "org-b"
SHARED = "shared-user"      # a subject that exists in both orgs
PAGE_TOKENS = 250
LEEWAY = 5                  # seconds, short so that the expiry section waits little
EXPIRY_ROUNDS = 3           # fresh short-lived tokens when /revocations was stamped past exp + leeway
ROLES = ["tokens:issue", "tokens:read", "tokens:revoke", "tokens:introspect", "keys:admin"]
# Status list entries (SPEC §4.2): 0 valid, 1 invalid, 2 suspended.
LIST_BITS = {"active": 0, "suspended": 2, "revoked": 1, "deleted": 1}
# /token/verify per registry status: (valid, status or error).
VERIFY_OUTCOME = {"active": (True, "active"), "suspended": (False, "suspended"), "revoked": (False, "revoked"),
                  "deleted": (False, "revoked"), "unregistered": (True, "unregistered")}


class Entry:
    """What the test knows about one token it caused."""

    def __init__(self, jti, token, org, subject, type_, status, exp, status_claim):
        self.jti = jti
        self.token = token
        self.org = org
        self.subject = subject
        self.type = type_
        self.status = status
        self.exp = exp
        self.status_claim = status_claim   # {"idx", "uri"} or None


class Api:
    """The daemon, a model of its registry and the calls the sections share."""

    def __init__(self, c, daemon):
        self.c = c
        self.d = daemon
        self.model = {}          # jti -> Entry
        self.secrets = []        # every token seen, for the log check

    def call(self, method, path, bearer=None, body=None, form=None, headers=None):
        h = dict(headers or {})
        if bearer is not None:
            h["Authorization"] = f"Bearer {bearer}"
        if form is not None:
            body = (urllib.parse.urlencode(form) if isinstance(form, dict) else form).encode()
            h.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return self.d.request(method, path, body, h)

    # ---- issuing, every token entered in the model --------------------------

    def _enter(self, token, type_="access"):
        _, claims = jwt_parts(token)
        e = Entry(claims["jti"], token, claims.get("org"), claims["sub"], type_, "active", claims["exp"],
                  (claims.get("status") or {}).get("status_list"))
        self.model[e.jti] = e
        self.secrets.append(token)
        return e

    def issue(self, caller, subject, org=None, what="", **extra):
        """POST /token → Entry (None on failure, which is a failed check)."""
        body = {"subject": subject, "expires_in": TTL, **extra}
        if org is not None:
            body["org"] = org
        r = self.call("POST", "/token", caller, body)
        doc = r.json() or {}
        if not self.c.check(r.status == 200 and isinstance(doc.get("access_token"), str),
                            f"POST /token {what or subject} answers 200 with a token", f"{r.status} {r.body[:300]!r}"):
            return None
        e = self._enter(doc["access_token"])
        self.c.equal(doc.get("jti"), e.jti, f"POST /token {what or subject}: jti is the token's")
        return e

    def issue_named(self, caller, name, subject, org=None, what=""):
        """POST /tokens → (Entry, record)."""
        body = {"name": name, "description": f"integration test token {name}", "subject": subject,
                "expires_in": TTL}
        if org is not None:
            body["org"] = org
        r = self.call("POST", "/tokens", caller, body)
        doc = r.json() or {}
        if not self.c.check(r.status == 200 and isinstance(doc.get("token"), str)
                            and isinstance(doc.get("record"), dict),
                            f"POST /tokens {what or name} answers 200 with token and record",
                            f"{r.status} {r.body[:300]!r}"):
            return None, None
        e = self._enter(doc["token"])
        rec = doc["record"]
        self.c.equal((rec.get("jti"), rec.get("name"), rec.get("subject"), rec.get("org"), rec.get("status"),
                      rec.get("type")),
                     (e.jti, name, subject, e.org, "active", "access"),
                     f"POST /tokens {what or name}: record describes the token")
        self.c.equal(rec.get("status_list"), e.status_claim, f"POST /tokens {what or name}: record status_list "
                     "is the token's status claim")
        return e, rec

    def mint(self, roles, org=None, sub=None):
        token = self.d.mint(roles, ttl=TTL, org=org, sub=sub)
        self.secrets.append(token)
        return token

    def mint_entry(self, roles, org, sub):
        """An unregistered token minted by hsmjwtctl, in the model as such."""
        token = self.mint(roles, org=org, sub=sub)
        e = self._enter(token, type_="unregistered")
        e.status = "unregistered"
        return e

    # ---- reading ------------------------------------------------------------

    def list_all(self, bearer, params, limit=None, max_pages=200):
        """Follows next_cursor: (records, page sizes, None) or (None, None, failing Response)."""
        records, pages, cursor = [], [], None
        while True:
            q = dict(params)
            if limit is not None:
                q["limit"] = str(limit)
            if cursor is not None:
                q["cursor"] = cursor
            path = "/tokens" + ("?" + urllib.parse.urlencode(q) if q else "")
            r = self.call("GET", path, bearer)
            doc = r.json()
            if r.status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("records"), list) \
                    or "next_cursor" not in doc:
                return None, None, r
            records += doc["records"]
            pages.append(len(doc["records"]))
            cursor = doc["next_cursor"]
            if cursor is None:
                return records, pages, None
            if not isinstance(cursor, str) or len(pages) >= max_pages:
                return None, None, r

    def revocations_all(self, bearer, limit=None, max_pages=200):
        entries, cursor = [], None
        while True:
            q = {}
            if limit is not None:
                q["limit"] = str(limit)
            if cursor is not None:
                q["cursor"] = cursor
            r = self.call("GET", "/revocations" + ("?" + urllib.parse.urlencode(q) if q else ""), bearer)
            doc = r.json()
            if r.status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("revocations"), list):
                return None, r
            entries += doc["revocations"]
            cursor = doc.get("next_cursor")
            if cursor is None:
                return entries, None
            if not isinstance(cursor, str) or len(entries) > 100000 or max_pages <= 0:
                return None, r
            max_pages -= 1

    def expected(self, org, params):
        """jtis the model says a GET /tokens with params shows to a caller
        of org (None: unconfined)."""
        out = set()
        for e in self.model.values():
            if e.status == "unregistered":
                continue
            if org is not None and e.org != org:
                continue
            if "status" in params:
                if e.status != params["status"]:
                    continue
            elif e.status == "deleted":
                continue
            if "subject" in params and e.subject != params["subject"]:
                continue
            if "type" in params and e.type != params["type"]:
                continue
            out.add(e.jti)
        return out

    def verify(self, token):
        r = self.call("POST", "/token/verify", None, {"token": token})
        doc = r.json() or {}
        if r.status != 200:
            return ("http", r.status)
        return (True, doc.get("status")) if doc.get("valid") is True else (False, doc.get("error"))

    def get_status(self, bearer, jti):
        r = self.call("GET", f"/tokens/{jti}", bearer)
        return r.status, (r.json() or {}).get("status") if r.status == 200 else None

    def check_entry(self, e, owner, what):
        """The daemon agrees with the model about e: its owner's GET and
        /token/verify."""
        want = VERIFY_OUTCOME[e.status]
        ok = self.c.equal(self.verify(e.token), want, f"{what}: /token/verify of {e.subject}/{e.org} ({e.status})")
        if e.status != "unregistered":
            ok &= self.c.equal(self.get_status(owner, e.jti), (200, e.status),
                               f"{what}: GET /tokens/{{jti}} by its owner says {e.status}")
        return ok

    def set_status(self, caller, e, status):
        r = self.call("PATCH", f"/tokens/{e.jti}", caller, {"status": status})
        doc = r.json() or {}
        ok = self.c.equal((r.status, doc.get("status"), doc.get("jti")), (200, status, e.jti),
                          f"PATCH {e.subject}/{e.org} to {status} by its org answers 200 with the record")
        if ok:
            e.status = status
        return ok

    def delete(self, caller, e):
        r = self.call("DELETE", f"/tokens/{e.jti}", caller)
        doc = r.json() or {}
        ok = self.c.equal((r.status, doc.get("status"), doc.get("jti")), (200, "deleted", e.jti),
                          f"DELETE {e.subject}/{e.org} by its org answers 200 with the record, deleted")
        if ok:
            e.status = "deleted"
        return ok


def norm(r, *jtis):
    """An answer with the jtis it may name replaced, so that the answer for
    another org's jti and the one for a random jti can be compared byte for
    byte."""
    body = r.body
    for j in jtis:
        body = body.replace(j.encode(), b"<jti>")
    return (r.status, r.header("Content-Type"), body)


class Matrix:
    """Counts the cells of the org-isolation table."""

    def __init__(self, c):
        self.c = c
        self.cells = 0
        self.failed = 0

    def cell(self, endpoint, caller, target, expect, ok, detail=""):
        self.cells += 1
        if not self.c.check(ok, f"[{endpoint} | caller {caller} | target {target}] {expect}", detail):
            self.failed += 1
        return ok


# ---------------------------------------------------------------------------
# Org isolation


LIST_FILTERS = [{}, {"status": "active"}, {"status": "suspended"}, {"status": "revoked"}, {"status": "deleted"},
                {"status": "expired"}, {"subject": SHARED}, {"subject": "bob"}, {"subject": "carol"},
                {"type": "access"}, {"type": "unregistered"}, {"status": "active", "subject": SHARED},
                {"status": "revoked", "type": "access"}]


def isolation(c, api, root):
    c.section("org isolation: set-up (both orgs, both issue endpoints)")
    admin = {ORG_A: api.mint("admin", org=ORG_A, sub="admin-a"),
             ORG_B: api.mint("admin", org=ORG_B, sub="admin-b")}
    caller_name = {ORG_A: "A", ORG_B: "B", None: "root"}
    own = {ORG_A: [], ORG_B: []}
    for org in (ORG_A, ORG_B):
        mine = admin[org]
        e = api.issue(mine, SHARED, what=f"{SHARED} by admin of {org}, org omitted")
        if e:
            c.equal(e.org, org, f"POST /token by a confined caller, org omitted: the token's org is {org}")
            own[org].append(e)
        e, _ = api.issue_named(mine, f"named-{org}", SHARED, what=f"{SHARED} named by admin of {org}")
        if e:
            c.equal(e.org, org, f"POST /tokens by a confined caller, org omitted: the token's org is {org}")
            own[org].append(e)
        e = api.issue(mine, SHARED, org=org, what=f"{SHARED} by admin of {org}, org named")
        own[org].append(e)
        e = api.issue(root, "carol", org=org, what=f"carol for {org} by root")
        if e:
            c.equal(e.org, org, f"POST /token by root for {org}: the token's org is {org}")
        own[org].append(e)
        e, _ = api.issue_named(root, f"root-named-{org}", "carol", org=org, what=f"carol named for {org} by root")
        own[org].append(e)
        for name in ("suspended", "revoked", "deleted"):
            own[org].append(api.issue(mine, "bob" if org == ORG_B else "alice", what=f"{name}-to-be in {org}"))
    if any(e is None for org in own for e in own[org]):
        c.check(False, "org isolation: every set-up token was issued")
        return
    for org in (ORG_A, ORG_B):
        api.set_status(admin[org], own[org][5], "suspended")
        api.set_status(admin[org], own[org][6], "revoked")
        api.delete(admin[org], own[org][7])
    # An unregistered (hsmjwtctl-minted) token of each org.
    minted = {org: api.mint_entry("tokens:read", org, f"offline-{org}") for org in (ORG_A, ORG_B)}

    m = Matrix(c)
    pairs = [(ORG_A, ORG_B), (ORG_B, ORG_A)]

    c.section("org isolation: GET /tokens with every filter (limit 2, so pages cross org boundaries)")
    for params in LIST_FILTERS:
        label = "GET /tokens?" + urllib.parse.urlencode(params)
        for org, other in pairs:
            for limit in (2, None):
                records, pages, bad = api.list_all(admin[org], params, limit=limit)
                if not m.cell(label + (f"&limit={limit}" if limit else ""), caller_name[org], caller_name[org],
                              "answers 200 with records and next_cursor", records is not None,
                              bad and f"{bad.status} {bad.body[:200]!r}"):
                    continue
                got = [r.get("jti") for r in records]
                m.cell(label, caller_name[org], caller_name[other], "lists none of the other org's records",
                       not (set(got) & {e.jti for e in own[other]}), f"other org's jtis {set(got) & {e.jti for e in own[other]}}")
                m.cell(label, caller_name[org], caller_name[org], "lists exactly its own org's records, each once",
                       sorted(got) == sorted(api.expected(org, params)),
                       f"got {len(got)} {sorted(got)}, want {sorted(api.expected(org, params))}")
                m.cell(label, caller_name[org], caller_name[org], "every record carries its own org",
                       all(r.get("org") == org for r in records), repr({r.get("org") for r in records}))
                want_status = params.get("status")
                m.cell(label, caller_name[org], caller_name[org],
                       f"every record's status is {want_status}" if want_status else "no record is deleted",
                       all((r.get("status") == want_status) if want_status else (r.get("status") != "deleted")
                           for r in records), repr([r.get("status") for r in records]))
        records, _, bad = api.list_all(root, params)
        if m.cell(label, "root", "A+B", "answers 200", records is not None, bad and f"{bad.status}"):
            got = [r.get("jti") for r in records]
            m.cell(label, "root", "A+B", "lists exactly both orgs' records, each once",
                   sorted(got) == sorted(api.expected(None, params)),
                   f"got {sorted(got)}, want {sorted(api.expected(None, params))}")

    c.section("org isolation: a cursor handed out to the other org")
    for org, other in pairs:
        r = api.call("GET", "/tokens?limit=1", admin[other])
        cursor = (r.json() or {}).get("next_cursor") if r.status == 200 else None
        if not m.cell("GET /tokens?limit=1", caller_name[other], caller_name[other], "answers a next_cursor",
                      isinstance(cursor, str), f"{r.status} {r.body[:200]!r}"):
            continue
        r = api.call("GET", "/tokens?" + urllib.parse.urlencode({"cursor": cursor, "limit": "1000"}), admin[org])
        leaked = {x.get("jti") for x in (r.json() or {}).get("records", [])} & {e.jti for e in own[other]} \
            if r.status == 200 else set()
        m.cell("GET /tokens?cursor=<other org's>", caller_name[org], caller_name[other],
               "answers 400 or only its own records", r.status == 400 or (r.status == 200 and not leaked),
               f"{r.status}, leaked {leaked}")

    c.section("org isolation: GET /revocations")
    for org, other in pairs:
        for limit in (1, None):
            entries, bad = api.revocations_all(admin[org], limit=limit)
            if not m.cell(f"GET /revocations{'?limit=1' if limit else ''}", caller_name[org], caller_name[org],
                          "answers 200", entries is not None, bad and f"{bad.status} {bad.body[:200]!r}"):
                continue
            got = {x.get("jti"): x for x in entries}
            want = {e.jti: e for e in api.model.values()
                    if e.org == org and e.status in ("suspended", "revoked", "deleted")}
            m.cell("GET /revocations", caller_name[org], caller_name[other], "shows none of the other org's",
                   not (set(got) & {e.jti for e in own[other]}), repr(set(got) & {e.jti for e in own[other]}))
            m.cell("GET /revocations", caller_name[org], caller_name[org],
                   "shows exactly its org's revoked, deleted and suspended, each once",
                   sorted(got) == sorted(want) and len(entries) == len(got), f"got {sorted(got)}, want {sorted(want)}")
            m.cell("GET /revocations", caller_name[org], caller_name[org],
                   "status is revoked (revoked, deleted) or suspended, exp is the token's",
                   all(got[j].get("status") == ("suspended" if want[j].status == "suspended" else "revoked")
                       and got[j].get("exp") == want[j].exp for j in set(got) & set(want)), repr(entries))
    entries, bad = api.revocations_all(root)
    if m.cell("GET /revocations", "root", "A+B", "answers 200", entries is not None, bad and f"{bad.status}"):
        want = {e.jti for e in api.model.values() if e.status in ("suspended", "revoked", "deleted")}
        m.cell("GET /revocations", "root", "A+B", "shows both orgs' revocations",
               sorted(x.get("jti") for x in entries) == sorted(want), repr(entries))

    c.section("org isolation: GET, PATCH, DELETE /tokens/{jti} — 404 exactly as for a random jti")
    for org, other in pairs:
        for e in own[org]:
            r = api.call("GET", f"/tokens/{e.jti}", admin[org])
            m.cell("GET /tokens/{jti}", caller_name[org], caller_name[org], "200 with its record",
                   r.status == 200 and (r.json() or {}).get("jti") == e.jti and (r.json() or {}).get("org") == org,
                   f"{r.status} {r.body[:200]!r}")
        for e in own[other] + [minted[other]]:
            for method, body in (("GET", None), ("PATCH", {"status": "suspended"}), ("PATCH", {"status": "revoked"}),
                                 ("PATCH", {"status": "active"}), ("DELETE", None)):
                label = f"{method} /tokens/{{jti}}" + (f" {body['status']}" if body else "")
                rnd = random_jti()
                want = norm(api.call(method, f"/tokens/{rnd}", admin[org], body), rnd)
                got = norm(api.call(method, f"/tokens/{e.jti}", admin[org], body), e.jti)
                m.cell(label, caller_name[org], caller_name[other] + f" ({e.status})",
                       "404, same status, type and body as a random jti", got == want and got[0] == 404,
                       f"got {got}, random jti {want}")
        for e in own[org] + own[other]:
            r = api.call("GET", f"/tokens/{e.jti}", root)
            m.cell("GET /tokens/{jti}", "root", caller_name[e.org], "200 with the record and its org",
                   r.status == 200 and (r.json() or {}).get("org") == e.org, f"{r.status} {r.body[:200]!r}")

    c.section("org isolation: POST /token/revoke and /token/introspect of the other org's tokens")
    for org, other in pairs:
        for e in own[other] + [minted[other]]:
            for body in ({"token": e.token}, {"token": e.token, "token_type_hint": "access_token"}, {"jti": e.jti}):
                kind = "jti" if "jti" in body else "token"
                rnd = {"jti": random_jti()} if kind == "jti" else {"token": "not.a.token"}
                want = norm(api.call("POST", "/token/revoke", admin[org], rnd))
                r = api.call("POST", "/token/revoke", admin[org], body)
                m.cell(f"POST /token/revoke by {kind}", caller_name[org], caller_name[other] + f" ({e.status})",
                       "200 {} exactly as for an unknown one",
                       norm(r) == want and r.status == 200 and r.json() == {}, f"got {norm(r)}, unknown {want}")
            r = api.call("POST", "/token/introspect", admin[org], {"token": e.token})
            m.cell("POST /token/introspect", caller_name[org], caller_name[other] + f" ({e.status})",
                   'exactly {"active": false}', r.status == 200 and r.json() == {"active": False},
                   f"{r.status} {r.body[:300]!r}")
        active = [e for e in own[org] if e.status == "active"] + [minted[org]]
        for e in active:
            r = api.call("POST", "/token/introspect", admin[org], {"token": e.token})
            doc = r.json() or {}
            claims = jwt_parts(e.token)[1]
            m.cell("POST /token/introspect", caller_name[org], caller_name[org] + f" ({e.status})",
                   "active, every claim of the token unchanged (its status claim too), registry_status",
                   r.status == 200 and doc.get("active") is True and doc.get("org") == org
                   and all(doc.get(k) == v for k, v in claims.items())
                   and doc.get("registry_status") == ("unregistered" if e is minted[org] else "active"),
                   f"{r.status} {r.body[:300]!r}")
    for org in (ORG_A, ORG_B):
        for e in [x for x in own[org] if x.status == "active"] + [minted[org]]:
            r = api.call("POST", "/token/introspect", root, {"token": e.token})
            m.cell("POST /token/introspect", "root", caller_name[org], "active with the token's org",
                   r.status == 200 and (r.json() or {}).get("active") is True and (r.json() or {}).get("org") == org,
                   f"{r.status} {r.body[:300]!r}")

    c.section("org isolation: issuing for the other org")
    for org, other in pairs:
        before, _, _ = api.list_all(admin[other], {})
        r = api.call("POST", "/tokens", admin[org], {"name": "intruder", "subject": "mallory", "org": other})
        m.cell("POST /tokens org=<other>", caller_name[org], caller_name[other], "403 insufficient_scope",
               r.status == 403 and (r.json() or {}).get("error") == "insufficient_scope", f"{r.status} {r.body[:200]!r}")
        r = api.call("POST", "/token", admin[org], {"subject": "mallory", "org": other})
        m.cell("POST /token org=<other>", caller_name[org], caller_name[other], "403 insufficient_scope",
               r.status == 403 and (r.json() or {}).get("error") == "insufficient_scope", f"{r.status} {r.body[:200]!r}")
        after, _, _ = api.list_all(admin[other], {})
        m.cell("POST /tokens, /token org=<other>", caller_name[org], caller_name[other],
               "the other org's list is unchanged",
               before is not None and sorted(x.get("jti") for x in before) == sorted(x.get("jti") for x in after or []))

    c.section("org isolation: after every refused write, the other org's tokens are as they were")
    for org in (ORG_A, ORG_B):
        for e in own[org] + [minted[org]]:
            m.cell("/token/verify + GET by owner", caller_name[org], caller_name[org] + f" ({e.status})",
                   f"still {e.status}", api.check_entry(e, admin[org], "after the other org's attempts"))

    c.section("org isolation: DELETE /users/{subject}/tokens counts and revokes its own org only")
    rnd_user = "nobody-" + random_jti()
    for org, other in pairs:
        # A subject that exists only in the other org counts nothing, like a
        # subject that exists nowhere.
        only_other = "bob" if other == ORG_B else "alice"
        want = norm(api.call("DELETE", f"/users/{rnd_user}/tokens", admin[org]))
        r = api.call("DELETE", f"/users/{only_other}/tokens", admin[org])
        m.cell("DELETE /users/{subject}/tokens", caller_name[org], caller_name[other],
               '{"revoked": 0}, same answer as for an unknown subject',
               r.status == 200 and r.json() == {"revoked": 0} and norm(r) == want, f"got {norm(r)}, unknown {want}")
    for org, other in pairs:
        victims = [e for e in own[org] if e.subject == SHARED and e.status in ("active", "suspended")]
        r = api.call("DELETE", f"/users/{SHARED}/tokens", admin[org])
        m.cell(f"DELETE /users/{SHARED}/tokens", caller_name[org], caller_name[org],
               f'{{"revoked": {len(victims)}}} (its own org\'s only)',
               r.status == 200 and r.json() == {"revoked": len(victims)}, f"{r.status} {r.body[:200]!r}")
        if r.status == 200:
            for e in victims:
                e.status = "revoked"
        for e in own[org]:
            m.cell(f"DELETE /users/{SHARED}/tokens", caller_name[org], caller_name[org] + f" {e.subject}",
                   f"own token is {e.status}", api.check_entry(e, admin[org], f"after {caller_name[org]} revoked {SHARED}"))
        for e in own[other] + [minted[other]]:
            m.cell(f"DELETE /users/{SHARED}/tokens", caller_name[org], caller_name[other] + f" {e.subject}",
                   f"other org's token still {e.status}",
                   api.check_entry(e, admin[other], f"after {caller_name[org]} revoked {SHARED}"))
        r = api.call("DELETE", f"/users/{SHARED}/tokens", admin[org])
        m.cell(f"DELETE /users/{SHARED}/tokens again", caller_name[org], caller_name[org], '{"revoked": 0}',
               r.status == 200 and r.json() == {"revoked": 0}, f"{r.status} {r.body[:200]!r}")
    victims = [e for e in api.model.values() if e.subject == "carol" and e.status in ("active", "suspended")]
    c.check(len({e.org for e in victims}) == 2, "carol has live tokens in both orgs")
    r = api.call("DELETE", "/users/carol/tokens", root)
    m.cell("DELETE /users/carol/tokens", "root", "A+B", f'{{"revoked": {len(victims)}}} (both orgs)',
           r.status == 200 and r.json() == {"revoked": len(victims)}, f"{r.status} {r.body[:200]!r}")
    if r.status == 200:
        for e in victims:
            e.status = "revoked"
            m.cell("DELETE /users/carol/tokens", "root", caller_name[e.org], "token revoked",
                   api.check_entry(e, admin[e.org], "after root revoked carol"))

    c.section("org isolation: own org's revoke by token and by jti take effect (the control)")
    for org in (ORG_A, ORG_B):
        e = api.issue(admin[org], "dave", what=f"dave in {org}")
        f = api.issue(admin[org], "dave", what=f"dave in {org}")
        if e and f:
            r = api.call("POST", "/token/revoke", admin[org], {"token": e.token})
            if m.cell("POST /token/revoke by token", caller_name[org], caller_name[org], "200 {}",
                      r.status == 200 and r.json() == {}, f"{r.status} {r.body[:200]!r}"):
                e.status = "revoked"
            r = api.call("POST", "/token/revoke", admin[org], {"jti": f.jti})
            if m.cell("POST /token/revoke by jti", caller_name[org], caller_name[org], "200 {}",
                      r.status == 200 and r.json() == {}, f"{r.status} {r.body[:200]!r}"):
                f.status = "revoked"
            for x in (e, f):
                m.cell("POST /token/revoke", caller_name[org], caller_name[org], "the token is revoked",
                       api.check_entry(x, admin[org], "after its org revoked it"))
    e = api.issue(root, "erin", org=ORG_B, what="erin in B by root")
    if e:
        r = api.call("POST", "/token/revoke", root, {"jti": e.jti})
        if r.status == 200:
            e.status = "revoked"
        m.cell("POST /token/revoke by jti", "root", "B", "the token is revoked",
               api.check_entry(e, admin[ORG_B], "after root revoked it"))
    r = api.call("POST", "/tokens", root, {"name": "root-for-b", "subject": "frank", "org": ORG_B})
    doc = r.json() or {}
    if m.cell("POST /tokens org=B", "root", "B", "200, record in B",
              r.status == 200 and (doc.get("record") or {}).get("org") == ORG_B, f"{r.status} {r.body[:200]!r}"):
        api._enter(doc["token"])

    print(f"  org-isolation matrix: {m.cells} cells checked, {m.failed} failed")
    c.check(m.cells >= 200, f"the matrix has at least 200 cells ({m.cells})")


# ---------------------------------------------------------------------------
# Roles


def roles(c, api, root):
    c.section("roles: every endpoint without its role → 403, without a token → 401, revoked caller → 401")
    org = "org-roles"
    admin = api.mint("admin", org=org, sub="admin-roles")
    targets = [api.issue(admin, "r-user", what=f"r-user #{i}") for i in range(4)]
    if None in targets:
        return
    t_get, t_patch, t_delete, t_revoke = targets

    def endpoints():
        rnd = random_jti()
        return [
            ("POST /token", "tokens:issue", "POST", "/token", {"subject": "r-user", "expires_in": TTL}),
            ("POST /tokens", "tokens:issue", "POST", "/tokens", {"name": "r", "subject": "r-user", "expires_in": TTL}),
            ("GET /tokens", "tokens:read", "GET", "/tokens", None),
            ("GET /tokens/{jti}", "tokens:read", "GET", f"/tokens/{t_get.jti}", None),
            ("GET /tokens/{random}", "tokens:read", "GET", f"/tokens/{rnd}", None),
            ("GET /revocations", "tokens:read", "GET", "/revocations", None),
            ("PATCH /tokens/{jti}", "tokens:revoke", "PATCH", f"/tokens/{t_patch.jti}", {"status": "suspended"}),
            ("DELETE /tokens/{jti}", "tokens:revoke", "DELETE", f"/tokens/{t_delete.jti}", None),
            ("DELETE /users/{subject}/tokens", "tokens:revoke", "DELETE", "/users/nobody/tokens", None),
            ("POST /token/revoke", "tokens:revoke", "POST", "/token/revoke", {"jti": t_revoke.jti}),
            ("POST /token/introspect", "tokens:introspect", "POST", "/token/introspect", {"token": t_get.token}),
        ]

    lacking = {role: api.mint(",".join(r for r in ROLES if r != role), org=org, sub=f"lacks-{role}")
               for role in ROLES[:4]}
    only = {role: api.mint(role, org=org, sub=f"only-{role}") for role in ROLES[:4]}
    minted = api.mint_entry("admin", org, "soon-revoked")
    revoked_caller = minted.token
    r = api.call("GET", "/tokens", revoked_caller)
    c.equal(r.status, 200, "the caller to be revoked is accepted before its revocation")
    r = api.call("POST", "/token/revoke", root, {"token": revoked_caller})
    if c.equal((r.status, r.json()), (200, {}), "root revokes the (unregistered) admin token by token"):
        minted.status = "revoked"
    # Management tokens issued by the service itself (SPEC §4.1), hence
    # registered: one suspended, one revoked through PATCH.
    registered = {}
    for state in ("suspended", "revoked"):
        # Shorter-lived than root's own token: a credential may not outlive
        # the caller that issues it.
        e = api.issue(root, f"{state}-caller", org=org, what=f"a registered admin token, to be {state}",
                      audience=api.d.issuer, claims={"roles": ["admin"]}, expires_in=TTL // 2)
        if e:
            r = api.call("GET", "/tokens", e.token)
            c.equal(r.status, 200, f"the registered admin token to be {state} is accepted before")
            if api.set_status(root, e, state):
                registered[state] = e

    for name, role, method, path, body in endpoints():
        r = api.call(method, path, None, body)
        c.check(r.status == 401 and (r.json() or {}).get("error") == "invalid_token"
                and (r.header("WWW-Authenticate") or "").startswith("Bearer"),
                f"{name} without a token: 401 invalid_token with WWW-Authenticate: Bearer", f"{r.status} {r.body[:200]!r}")
        r = api.call(method, path, lacking[role], body)
        c.check(r.status == 403 and (r.json() or {}).get("error") == "insufficient_scope",
                f"{name} with every role but {role}: 403 insufficient_scope", f"{r.status} {r.body[:200]!r}")
        r = api.call(method, path, revoked_caller, body)
        c.check(r.status == 401 and (r.json() or {}).get("error") == "invalid_token",
                f"{name} with a revoked (minted) admin token: 401", f"{r.status} {r.body[:200]!r}")
        for state, e in registered.items():
            r = api.call(method, path, e.token, body)
            c.check(r.status == 401 and (r.json() or {}).get("error") == "invalid_token",
                    f"{name} with a {state} registered admin token: 401", f"{r.status} {r.body[:200]!r}")
    for e in targets:
        api.check_entry(e, admin, "after the refused calls")
    before, _, _ = api.list_all(admin, {})
    c.equal(len(before or []), len(api.expected(org, {})), "no refused POST /token or /tokens registered a token")

    c.section("roles: the one role each endpoint needs is enough")
    for name, role, method, path, body in endpoints():
        r = api.call(method, path, only[role], body)
        want = 404 if "random" in name else 200
        c.equal(r.status, want, f"{name} with only {role}: {want}")
        doc = r.json() or {}
        if r.status == 200 and method == "POST" and path in ("/token", "/tokens"):
            api._enter(doc.get("access_token") or doc.get("token"))
    t_patch.status, t_delete.status, t_revoke.status = "suspended", "deleted", "revoked"
    for e in targets:
        api.check_entry(e, admin, "after the allowed calls")


# ---------------------------------------------------------------------------
# Revocation by jti alone


def revoke_by_jti(c, api, root):
    """A confined caller revokes by jti only what its org has registered: a
    revocation it recorded for any other jti would show (by appearing or not)
    whether another org holds that jti, and would take the jti's one place in
    the registry, so that the owner's later revocation changed nothing."""
    c.section("revocation by jti alone: confined callers, offline tokens")
    admin_a = api.mint("admin", org="org-ja", sub="admin-ja")
    admin_b = api.mint("admin", org="org-jb", sub="admin-jb")
    minted_b = api.mint_entry("tokens:read", "org-jb", "offline-jb")
    registered_b = api.issue(admin_b, "jb-user", what="org-jb's registered token")
    unknown = random_jti()
    for what, jti in (("org-jb's offline-minted jti", minted_b.jti), ("org-jb's registered jti", registered_b.jti
                      if registered_b else random_jti()), ("a random jti", unknown)):
        r = api.call("POST", "/token/revoke", admin_a, {"jti": jti})
        c.equal((r.status, r.json()), (200, {}), f"org-ja revokes {what} by jti: 200 {{}}")
        r = api.call("GET", f"/tokens/{jti}", admin_a)
        c.equal(r.status, 404, f"org-ja then finds no record for {what}")
    r = api.call("GET", f"/tokens/{minted_b.jti}", root)
    c.equal(r.status, 404, "no record was made for org-jb's offline jti (root finds none)")
    r = api.call("GET", f"/tokens/{unknown}", root)
    c.equal(r.status, 404, "no record was made for the random jti either")
    c.equal(api.verify(minted_b.token), (True, "unregistered"), "org-jb's offline token is still valid")
    if registered_b:
        c.equal(api.verify(registered_b.token), (True, "active"), "org-jb's registered token is still active")

    # The owner's own org, confined, by jti alone: an offline token is not in
    # its registry, so that takes the token itself.
    r = api.call("POST", "/token/revoke", admin_b, {"jti": minted_b.jti})
    c.equal((r.status, r.json()), (200, {}), "org-jb revokes its offline jti by jti: 200 {}")
    c.equal(api.verify(minted_b.token), (True, "unregistered"), "... which needs the token: still valid")
    r = api.call("POST", "/token/revoke", admin_b, {"token": minted_b.token})
    c.equal((r.status, r.json()), (200, {}), "org-jb revokes its offline token by token: 200 {}")
    minted_b.status = "revoked"
    c.equal(api.verify(minted_b.token), (False, "revoked"), "org-jb's offline token is now revoked")
    r = api.call("GET", "/tokens", minted_b.token)
    c.equal(r.status, 401, "the revoked offline token no longer authenticates")
    if registered_b:
        r = api.call("POST", "/token/revoke", admin_b, {"jti": registered_b.jti})
        c.equal((r.status, r.json()), (200, {}), "org-jb revokes its registered token by jti: 200 {}")
        registered_b.status = "revoked"
        c.equal(api.verify(registered_b.token), (False, "revoked"), "org-jb's registered token is now revoked")


# ---------------------------------------------------------------------------
# Status transitions


def transitions(c, api, root):
    c.section("status transitions over HTTP")
    org = "org-s"
    admin = api.mint("admin", org=org, sub="admin-s")
    e, rec = api.issue_named(admin, "transitions", "sam")
    d = api.issue(admin, "sam", what="sam, to be deleted")
    if e is None or d is None:
        return
    c.equal(api.verify(e.token), (True, "active"), "a registered token verifies with status active")
    for state in ("suspended", "active", "revoked"):
        r = api.call("PATCH", f"/tokens/{e.jti}", admin, {"status": state})
        doc = r.json() or {}
        if c.equal((r.status, doc.get("status")), (200, state), f"PATCH → {state}: 200 with the record"):
            e.status = state
        c.check(isinstance(doc.get("status_changed_at"), int) and doc["status_changed_at"] >= rec.get("iat", 0),
                f"PATCH → {state}: status_changed_at is a time at or after iat", repr(doc.get("status_changed_at")))
        api.check_entry(e, admin, f"after PATCH → {state}")
        r = api.call("POST", "/token/introspect", admin, {"token": e.token})
        want = {"active": True} if state == "active" else {"active": False}
        c.check(r.status == 200 and (r.json() or {}).get("active") == want["active"]
                and (state == "active" or r.json() == want),
                f"introspect after PATCH → {state}: {want}", f"{r.status} {r.body[:200]!r}")
    for state in ("active", "suspended"):
        r = api.call("PATCH", f"/tokens/{e.jti}", admin, {"status": state})
        c.equal((r.status, (r.json() or {}).get("error")), (409, "conflict"), f"revoked → {state}: 409 conflict")
    api.check_entry(e, admin, "after the refused transitions")

    f = api.issue(admin, "sam", what="sam, for bad PATCH bodies")
    if f:
        for body in ({"status": "deleted"}, {"status": "expired"}, {"status": "bogus"}, {}, {"status": 1},
                     {"status": "revoked", "extra": 1}):
            r = api.call("PATCH", f"/tokens/{f.jti}", admin, body)
            c.equal((r.status, (r.json() or {}).get("error")), (400, "invalid_request"),
                    f"PATCH with {json.dumps(body)}: 400 invalid_request")
        api.check_entry(f, admin, "after the bad PATCH bodies")

    api.delete(admin, d)
    api.check_entry(d, admin, "after DELETE")
    listed, _, _ = api.list_all(admin, {})
    c.check(listed is not None and d.jti not in {x.get("jti") for x in listed}, "a deleted record is not listed")
    listed, _, _ = api.list_all(admin, {"status": "deleted"})
    c.check(listed is not None and d.jti in {x.get("jti") for x in listed}, "a deleted record is listed with "
            "status=deleted")
    r = api.call("PATCH", f"/tokens/{d.jti}", admin, {"status": "active"})
    c.equal((r.status, (r.json() or {}).get("error")), (409, "conflict"), "deleted → active: 409 conflict")
    entries, _ = api.revocations_all(admin)
    mine = [x for x in entries or [] if x.get("jti") == d.jti]
    c.check(len(mine) == 1 and mine[0].get("status") == "revoked" and mine[0].get("exp") == d.exp,
            "a deleted token is in /revocations once, as revoked, with its exp", repr(entries))

    c.section("an unregistered (hsmjwtctl-minted) token, then revoked by token")
    u = api.mint_entry("tokens:read", org, "offline-sam")
    c.equal(api.verify(u.token), (True, "unregistered"), "/token/verify of a minted token: valid, unregistered")
    r = api.call("POST", "/token/introspect", admin, {"token": u.token})
    c.check(r.status == 200 and (r.json() or {}).get("active") is True
            and (r.json() or {}).get("registry_status") == "unregistered",
            "introspect of a minted token: active, registry_status unregistered", f"{r.status} {r.body[:200]!r}")
    r = api.call("GET", "/tokens", u.token)
    c.equal(r.status, 200, "the minted tokens:read token is accepted as a caller")
    r = api.call("POST", "/token/revoke", admin, {"token": u.token})
    c.equal((r.status, r.json()), (200, {}), "POST /token/revoke of the minted token: 200 {}")
    u.status = "revoked"
    c.equal(api.verify(u.token), (False, "revoked"), "/token/verify of the revoked minted token: revoked")
    r = api.call("GET", f"/tokens/{u.jti}", admin)
    doc = r.json() or {}
    c.equal((r.status, doc.get("status"), doc.get("type"), doc.get("org")), (200, "revoked", "unregistered", org),
            "the revocation of an unregistered token is recorded in its org, type unregistered")
    r = api.call("GET", "/tokens", u.token)
    c.equal(r.status, 401, "the revoked minted token is refused as a caller")


# ---------------------------------------------------------------------------
# Pagination


def pagination(c, api):
    c.section(f"pagination: {PAGE_TOKENS} tokens, limit 100 and cursors")
    org = "org-p"
    admin = api.mint("admin", org=org, sub="admin-p")
    issued = set()
    for i in range(PAGE_TOKENS):
        body = {"subject": f"p-{i % 7}", "expires_in": TTL}
        r = api.call("POST", "/token", admin, body)
        doc = r.json() or {}
        if r.status != 200 or not isinstance(doc.get("access_token"), str):
            c.check(False, f"POST /token #{i} answers 200", f"{r.status} {r.body[:200]!r}")
            return
        issued.add(api._enter(doc["access_token"]).jti)
    c.check(len(issued) == PAGE_TOKENS, f"{PAGE_TOKENS} tokens issued with distinct jtis")
    records, pages, bad = api.list_all(admin, {}, limit=100)
    if c.check(records is not None, "paging with limit=100 answers 200 throughout", bad and f"{bad.status} {bad.body[:200]!r}"):
        got = [x.get("jti") for x in records]
        c.equal(pages, [100, 100, 50], "pages of 100, 100, 50, the last with next_cursor null")
        c.equal(len(got), len(set(got)), "no jti appears twice across pages")
        c.equal(set(got), issued, "every issued jti is listed, none missing, none foreign")
    records, pages, _ = api.list_all(admin, {})
    c.equal(pages, [100, 100, 50], "the default limit is 100")
    records, pages, _ = api.list_all(admin, {}, limit=5000)
    c.equal(pages, [PAGE_TOKENS], "limit 5000 is clamped (to 1000), not refused: one page of 250")
    records, pages, _ = api.list_all(admin, {"subject": "p-3"}, limit=7)
    want = {j for j in issued if api.model[j].subject == "p-3"}
    c.check(records is not None and sorted(x.get("jti") for x in records) == sorted(want),
            f"subject filter with limit 7 over {len(want)} matches: each once", repr(pages))
    for q in ("limit=0", "limit=-1", "limit=abc", "limit=1.5", "limit=", "cursor=garbage", "status=bogus", "type=bogus", "status=ACTIVE"):
        r = api.call("GET", f"/tokens?{q}", admin)
        c.equal((r.status, (r.json() or {}).get("error")), (400, "invalid_request"), f"GET /tokens?{q}: 400")
    for q in ("limit=0", "limit=abc", "cursor=garbage"):
        r = api.call("GET", f"/revocations?{q}", admin)
        c.equal((r.status, (r.json() or {}).get("error")), (400, "invalid_request"), f"GET /revocations?{q}: 400")


# ---------------------------------------------------------------------------
# Form bodies


def forms(c, api):
    c.section("application/x-www-form-urlencoded /token/revoke and /token/introspect")
    org = "org-f"
    admin = api.mint("admin", org=org, sub="admin-f")
    t1 = api.issue(admin, "fiona", what="fiona #1")
    t2 = api.issue(admin, "fiona", what="fiona #2")
    if t1 is None or t2 is None:
        return
    r = api.call("POST", "/token/introspect", admin, form={"token": t1.token, "token_type_hint": "access_token"})
    doc = r.json() or {}
    c.check(r.status == 200 and doc.get("active") is True and doc.get("jti") == t1.jti and doc.get("sub") == "fiona",
            "form introspect of an active token: active, its jti and sub", f"{r.status} {r.body[:200]!r}")
    r = api.call("POST", "/token/revoke", admin, form={"token": t1.token, "token_type_hint": "access_token"})
    c.equal((r.status, r.json()), (200, {}), "form revoke by token: 200 {}")
    t1.status = "revoked"
    api.check_entry(t1, admin, "after the form revoke by token")
    r = api.call("POST", "/token/introspect", admin, form=f"token={t1.token}")
    c.equal((r.status, r.json()), (200, {"active": False}), "form introspect of the revoked token: active false")
    # "+" is a space and %XX an octet in this media type.
    r = api.call("POST", "/token/revoke", admin, form=f"jti={t2.jti}&reason=key+compromise%21",
                 headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    c.equal((r.status, r.json()), (200, {}), "form revoke by jti (with a charset parameter): 200 {}")
    t2.status = "revoked"
    api.check_entry(t2, admin, "after the form revoke by jti")
    r = api.call("GET", f"/tokens/{t2.jti}", admin)
    c.equal((r.json() or {}).get("reason"), "key compromise!", "the form's reason is decoded (+ and %21) and recorded")
    for body in ("", "token_type_hint=access_token", "reason=x"):
        r = api.call("POST", "/token/revoke", admin, form=body)
        c.equal((r.status, (r.json() or {}).get("error")), (400, "invalid_request"),
                f"form revoke with neither token nor jti ({body!r}): 400")
    r = api.call("POST", "/token/introspect", admin, form="token_type_hint=access_token")
    c.equal(r.status, 400, "form introspect without token: 400")
    r = api.call("POST", "/token/revoke", admin, form="token=not-a-token")
    c.equal((r.status, r.json()), (200, {}), "form revoke of garbage: 200 {} (RFC 7009)")


# ---------------------------------------------------------------------------
# Status list


def fetch_list(c, api, jwt, uri, jwks, what):
    """GET the status list named by uri, checked and verified with PyJWT →
    the decompressed entries (bytes) or None."""
    prefix = api.d.issuer + "/statuslists/"
    if not c.check(isinstance(uri, str) and uri.startswith(prefix) and uri[len(prefix):].isdigit(),
                   f"{what}: uri is <issuer>/statuslists/<n>", repr(uri)):
        return None
    r = api.call("GET", uri[len(api.d.issuer):])
    ok = c.equal(r.status, 200, f"{what}: GET {uri[len(api.d.issuer):]} answers 200")
    c.equal(r.header("Content-Type"), "application/statuslist+jwt", f"{what}: Content-Type")
    c.equal(r.header("Cache-Control"), "public, max-age=60", f"{what}: Cache-Control")
    if not ok:
        return None
    token = r.body.decode("ascii", "replace").strip()
    try:
        header = jwt.get_unverified_header(token)
        keys = {k["kid"]: k for k in jwks["keys"]}
        c.equal(header.get("typ"), "statuslist+jwt", f"{what}: header typ")
        if not c.check(header.get("kid") in keys, f"{what}: kid is in the JWKS", repr(header.get("kid"))):
            return None
        key = jwt.PyJWK(keys[header["kid"]]).key
        claims = jwt.decode(token, key=key, algorithms=[keys[header["kid"]]["alg"]],
                            options={"require": ["sub", "iat", "exp"], "verify_aud": False})
    except Exception as e:  # every PyJWT failure is a failed check
        c.check(False, f"{what}: PyJWT verifies the status list JWT", f"{type(e).__name__}: {e}")
        return None
    c.check(True, f"{what}: PyJWT verifies the status list JWT (signature, iat, exp)")
    c.equal(claims.get("sub"), uri, f"{what}: sub is the list's uri")
    c.equal(claims.get("ttl"), 60, f"{what}: ttl")
    sl = claims.get("status_list") or {}
    c.equal(sl.get("bits"), 2, f"{what}: status_list.bits")
    try:
        return zlib.decompress(b64url_decode(sl.get("lst", "")))
    except (ValueError, zlib.error, TypeError) as e:
        c.check(False, f"{what}: lst is base64url of a ZLIB stream", f"{type(e).__name__}: {e}")
        return None


def entry_bits(data, idx):
    """The 2-bit entry idx, least significant bits first (draft §4.1)."""
    if idx // 4 >= len(data):
        return None
    return (data[idx // 4] >> (2 * (idx % 4))) & 3


def status_lists(c, api, jwt, root):
    c.section("status list: decoded with PyJWT and zlib, against the registry")
    org = "org-l"
    admin = api.mint("admin", org=org, sub="admin-l")
    es = {s: api.issue(admin, f"list-{s}", what=f"list-{s}") for s in ("active", "suspended", "revoked", "deleted")}
    if None in es.values():
        return
    api.set_status(admin, es["suspended"], "suspended")
    api.set_status(admin, es["revoked"], "revoked")
    api.delete(admin, es["deleted"])
    jwks = api.d.jwks()
    for state, e in es.items():
        sc = e.status_claim or {}
        if not c.check(isinstance(sc.get("idx"), int) and isinstance(sc.get("uri"), str),
                       f"{state}: the token carries status.status_list {{idx, uri}}", repr(sc)):
            continue
        data = fetch_list(c, api, jwt, sc["uri"], jwks, f"{state} token's list")
        if data is not None:
            c.equal(entry_bits(data, sc["idx"]), LIST_BITS[state], f"{state}: entry {sc['idx']} (LSB first)")
        r = api.call("GET", f"/tokens/{e.jti}", admin)
        doc = r.json() or {}
        c.equal((doc.get("status"), doc.get("status_list")), (e.status, sc),
                f"{state}: GET /tokens/{{jti}} agrees (status, status_list)")

    c.section("status list: a change is visible at once")
    e = es["active"]
    for state, bits in (("suspended", 2), ("active", 0)):
        if api.set_status(admin, e, state):
            data = fetch_list(c, api, jwt, e.status_claim["uri"], jwks, f"after PATCH → {state}")
            c.equal(data is not None and entry_bits(data, e.status_claim["idx"]), bits,
                    f"after PATCH → {state}: the entry is {bits}")

    c.section("status list: malformed or never allocated lists")
    for path in ("/statuslists/999", "/statuslists/abc", "/statuslists/01", "/statuslists/-1",
                 "/statuslists/", "/statuslists/4294967296"):
        r = api.call("GET", path)
        c.equal(r.status, 404, f"GET {path}: 404")


def daemon_second(r):
    """The daemon's clock when it answered r, in whole seconds: the Date
    header, which libevent stamps with time() when it sends the head, after
    the handler read the same clock for exp (so it is never earlier than the
    handler's now). None without a Date header."""
    try:
        return int(email.utils.parsedate_to_datetime(r.header("Date")).timestamp())
    except (TypeError, ValueError):
        return None


def expiry_round(c, api, admin, keep, n, shorts):
    """Three tokens of 1 s (left active, suspended, revoked), checked past
    their exp; /revocations judged by its own Date. Returns "judged" when
    that answer was stamped within exp + leeway (its verdict given), "late"
    when the daemon's clock was already past it (no verdict: the caller
    starts again with new tokens), "failed" when a step failed its check."""
    short = {}
    for s in ("active", "suspended", "revoked"):
        short[s] = api.issue(admin, f"short-{s}-{n}", what=f"short-lived, left {s} (round {n})", expires_in=1)
        if short[s] is None:
            return "failed"
        # What these show depends on the clock, which the model does not follow.
        del api.model[short[s].jti]
        shorts.append((s, short[s]))
    # The PATCH may land past exp: the answer then shows the derived
    # "expired" (never stored), which the daemon's Date must allow; the stored
    # "suspended" is shown by /revocations below.
    e = short["suspended"]
    r = api.call("PATCH", f"/tokens/{e.jti}", admin, {"status": "suspended"})
    doc = r.json() or {}
    at = daemon_second(r)
    c.check(r.status == 200 and doc.get("jti") == e.jti and
            (doc.get("status") == "suspended" or (doc.get("status") == "expired" and at is not None and at >= e.exp)),
            f"PATCH short-suspended-{n} to suspended answers 200 with the record, suspended (or expired if the "
            "daemon's Date is past its exp)",
            f"{r.status} status {doc.get('status')!r}, Date {at}, exp {e.exp}")
    api.set_status(admin, short["revoked"], "revoked")
    exp = max(x.exp for x in short.values())
    # The daemon compares whole seconds: past exp once time() >= exp + 1.
    while time.time() < exp + 1:
        time.sleep(0.05)
    want = {"active": "expired", "suspended": "expired", "revoked": "revoked"}
    for state, x in short.items():
        c.equal(api.get_status(admin, x.jti), (200, want[state]),
                f"GET /tokens/{{jti}} of a token left {state}, past its exp: {want[state]}")
    # A verifier with leeway still accepts the tokens until exp + leeway, so
    # their revocations still matter: the answer is judged by the daemon's
    # clock (its Date), never by how fast this test got there.
    r = api.call("GET", "/revocations", admin)
    doc = r.json() or {}
    at = daemon_second(r)
    if not c.check(r.status == 200 and isinstance(doc.get("revocations"), list) and doc.get("next_cursor") is None
                   and at is not None, "GET /revocations answers 200, one page, with a Date",
                   f"{r.status} {r.body[:200]!r} Date {r.header('Date')!r}"):
        return "failed"
    until = min(short["suspended"].exp, short["revoked"].exp) + LEEWAY
    if at > until:
        print(f"  round {n}: /revocations answered at {at} by the daemon's clock, past exp + leeway ({until}): "
              "no verdict on it")
        return "late"
    c.equal(sorted((x.get("jti"), x.get("status")) for x in doc["revocations"]),
            sorted([(keep.jti, "suspended"), (short["suspended"].jti, "suspended"),
                    (short["revoked"].jti, "revoked")]),
            f"GET /revocations answered at {at} (exp + leeway {until}) still lists the expired suspended and "
            "revoked tokens, suspended as stored")
    return "judged"


def expiry(c, api):
    c.section(f"expiry: derived from exp; /revocations keeps a token until exp + leeway ({LEEWAY} s)")
    org = "org-x"
    admin = api.mint("admin", org=org, sub="admin-x")
    keep = api.issue(admin, "long-suspended", what="long-lived, suspended")
    if keep is None or not api.set_status(admin, keep, "suspended"):
        return
    shorts = []   # (state left in, Entry) of every round
    for n in range(1, EXPIRY_ROUNDS + 1):
        outcome = expiry_round(c, api, admin, keep, n, shorts)
        if outcome != "late":
            break
    if outcome == "failed":
        return
    if not c.check(outcome == "judged", f"GET /revocations answered within exp + leeway by the daemon's clock "
                   f"in one of {EXPIRY_ROUNDS} rounds"):
        return
    jtis = {e.jti for _, e in shorts}
    records, _, _ = api.list_all(admin, {"status": "expired"})
    c.equal(sorted(x.get("jti") for x in records or []),
            sorted(e.jti for s, e in shorts if s in ("active", "suspended")),
            "GET /tokens?status=expired lists the expired active and suspended tokens")
    for state in ("active", "suspended"):
        records, _, _ = api.list_all(admin, {"status": state})
        c.check(records is not None and not {x.get("jti") for x in records} & jtis,
                f"GET /tokens?status={state} lists none of them")
    records, _, _ = api.list_all(admin, {})
    c.check(records is not None and jtis <= {x.get("jti") for x in records},
            "GET /tokens lists expired records (only deleted ones are hidden)")
    exp = max(e.exp for _, e in shorts)
    while time.time() < exp + LEEWAY + 1.5:
        time.sleep(0.1)
    entries, _ = api.revocations_all(admin)
    c.equal(sorted(x.get("jti") for x in entries or []), [keep.jti],
            "GET /revocations past exp + leeway lists only the live suspended token")


def compare_all_lists(c, api, jwt, root, what):
    """Every registered token the test knows, against its list entry and GET
    /tokens/{jti} by root. Returns {uri: entries} for later comparison."""
    c.section(f"status list: every known token ({what})")
    jwks = api.d.jwks()
    lists, compared, agreed = {}, 0, 0
    used = {}
    for e in api.model.values():
        if e.status_claim is None:
            continue
        key = (e.status_claim.get("uri"), e.status_claim.get("idx"))
        used.setdefault(key, []).append(e.jti)
        uri = e.status_claim.get("uri")
        if uri not in lists:
            lists[uri] = fetch_list(c, api, jwt, uri, jwks, f"list {uri}")
        data = lists[uri]
        got = entry_bits(data, e.status_claim.get("idx")) if data is not None else None
        st, rs = api.get_status(root, e.jti)
        compared += 1
        if got == LIST_BITS[e.status] and (st, rs) == (200, e.status):
            agreed += 1
        else:
            c.check(False, f"{e.subject}/{e.org} ({e.status}): list entry and GET agree with the model",
                    f"entry {got}, GET {st} {rs}")
    print(f"  status list: {compared} entries compared with the registry, {agreed} agree")
    c.check(compared >= PAGE_TOKENS and agreed == compared, f"{compared} status list entries agree with GET /tokens/{{jti}}")
    dup = {k: v for k, v in used.items() if len(v) > 1}
    c.check(not dup, f"no two of {len(used)} tokens share a status list index", repr(dup)[:500])
    return lists, set(used)


def snapshot(c, api, root):
    """Every record root can list, by jti."""
    out = {}
    for params in ({}, {"status": "deleted"}):
        records, _, bad = api.list_all(root, params, limit=1000)
        if not c.check(records is not None, f"root lists {params or 'all'}", bad and f"{bad.status}"):
            return None
        for x in records:
            out[x.get("jti")] = x
    return out


def restart(c, api, jwt, root, lists_before, used):
    c.section("restart: SIGTERM, start on the same state_dir, everything identical")
    before = snapshot(c, api, root)
    verdicts = {e.jti: api.verify(e.token) for e in api.model.values()}
    pid = api.d.proc.pid
    c.equal(api.d.stop(), 0, f"hsmjwtd (pid {pid}) exits 0 on SIGTERM")
    api.d.start(keep_port=True)
    c.check(True, f"hsmjwtd restarted on {api.d.issuer} (pid {api.d.proc.pid})")
    health = api.call("GET", "/health").json() or {}
    c.equal(health.get("registry"), "ok", "/health registry after the restart")
    after = snapshot(c, api, root)
    if before is not None and after is not None:
        c.equal(len(after), len(before), f"root lists as many records as before ({len(before)})")
        changed = [j for j in before if before[j] != after.get(j)]
        c.check(not changed, f"every one of {len(before)} records is identical after the restart",
                f"{len(changed)} differ, e.g. {[(before[j], after.get(j)) for j in changed[:2]]}")
        c.check(set(api.expected(None, {})) | set(api.expected(None, {"status": "deleted"})) <= set(after),
                "every record of the model is there")
    again = {e.jti: api.verify(e.token) for e in api.model.values()}
    diff = [j for j in verdicts if verdicts[j] != again[j]]
    c.check(not diff, f"/token/verify gives the same verdict for all {len(verdicts)} tokens", repr(diff[:5]))
    jwks = api.d.jwks()
    for uri, data in lists_before.items():
        now = fetch_list(c, api, jwt, uri, jwks, f"list {uri} after the restart")
        c.check(data is not None and now == data, f"list {uri} has the same entries after the restart")
    e = api.issue(root, "after-restart", org="org-l", what="a token after the restart")
    if e and e.status_claim:
        c.check((e.status_claim.get("uri"), e.status_claim.get("idx")) not in used,
                "a token issued after the restart gets a status list index never used before",
                repr(e.status_claim))


# ---------------------------------------------------------------------------


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    jwt = import_pyjwt()
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_registry: FAILED: {build_dir}/{exe} is not built")
            return False

    c = Checker("test_registry")
    work = Workdir("hsmjwt-registry-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-reg")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"), {"HSMJWT_FSYNC": "always", "HSMJWT_LEEWAY": str(LEEWAY)})
    api = Api(c, daemon)

    def body():
        c.section("start")
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} (pid {daemon.proc.pid})")
        health = daemon.request("GET", "/health").json() or {}
        c.equal(health.get("registry"), "ok", "/health says registry ok")
        root = api.mint("admin", sub="root")
        guarded(c, "org isolation", isolation, c, api, root)
        guarded(c, "roles", roles, c, api, root)
        guarded(c, "transitions", transitions, c, api, root)
        guarded(c, "revocation by jti", revoke_by_jti, c, api, root)
        guarded(c, "pagination", pagination, c, api)
        guarded(c, "forms", forms, c, api)
        guarded(c, "status lists", status_lists, c, api, jwt, root)
        guarded(c, "expiry", expiry, c, api)
        res = guarded(c, "status list comparison", compare_all_lists, c, api, jwt, root, "before the restart")
        if res is not None:
            guarded(c, "restart", restart, c, api, jwt, root, *res)

    def log_checks(log):
        leaked = [i for i, s in enumerate(api.secrets) if s.split(".")[2] in log]
        c.check(not leaked, f"the log contains none of the {len(api.secrets)} tokens' signatures",
                f"token #{leaked[:5]} found")
        c.check(token.pin not in log, "the log does not contain the PIN")

    return run_daemon_test(c, work, daemon, body, log_checks)


if __name__ == "__main__":
    main_with_dirs("test_registry", run)
