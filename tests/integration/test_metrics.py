#!/usr/bin/python3
"""Prometheus metrics, admin_listen and the request log (issue 6, SPEC §8),
against the real daemon on a throwaway SoftHSM token.

/metrics is parsed with Debian's python3-prometheus-client (an independent
reader of the text format): every family SPEC §8 lists is there with its
type, and the counters move by exactly what the test did, computed from the
answers it got — each issued token's header alg and token_type claim, each
/token/verify verdict, each revocation — never from a hard-coded guess.

A second daemon runs with admin_listen: /metrics and /health answer there
and 404 on the public port, whose API still works.

The log scan: each daemon runs at log_level debug, the first with the PIN in
HSMJWT_PIN, the second with a pin_file.  Both go through the flows that
handle secrets (tokens of every family, a pair, the authorization code grant
with PKCE, a refresh grant, verify, introspect, revoke, /authorize); after
SIGTERM the whole log must hold none of the tokens (nor their signature or
header.payload parts), codes, verifiers, bearer tokens or the PIN, and
exactly one msg="request" line per request the test made (counted by
method, path and status), each with method, path, status, latency_ms, sub
and jti.

Usage: test_metrics.py BUILD_DIR SOURCE_DIR   (exit 0 pass, 1 fail, 77 skip)
"""

import base64
import collections
import hashlib
import os
import re
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Skip, Token, Workdir, free_port, guarded, jwt_parts,  # noqa: E402
                            main_with_dirs, require_tools, run_daemon_body)

ALGORITHMS = ["ES256", "RS256", "EdDSA"]
CLIENT = "metrics-app"
REDIRECT = "https://app.example/cb"
ANSWER_TIMEOUT = 60       # a request the daemon accepted is always answered: never given up early
EXPIRY_DEADLINE = 30.0    # a 1 s token with leeway 1 is expired within seconds

# SPEC §8: family name as written there -> its type.
SPEC_FAMILIES = {
    "hsmjwt_tokens_issued_total": "counter",
    "hsmjwt_verifications_total": "counter",
    "hsmjwt_revocations_total": "counter",
    "hsmjwt_hsm_operations_total": "counter",
    "hsmjwt_hsm_sign_seconds": "histogram",
    "hsmjwt_http_requests_total": "counter",
    "hsmjwt_keys": "gauge",
    "hsmjwt_key_rotations_total": "counter",
    "hsmjwt_registry_records": "gauge",
    "hsmjwt_parent_tokens_active": "gauge",
}

REQUEST_LINE = re.compile(
    r'msg="request" method=(?P<method>\S+) path=(?P<path>"(?:[^"\\]|\\.)*") status=(?P<status>\d+) '
    r'latency_ms=(?P<latency>\d+\.\d+) sub=(?P<sub>-|"(?:[^"\\]|\\.)*") jti=(?P<jti>-|"(?:[^"\\]|\\.)*")')


def import_parser():
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:
        raise Skip(f"prometheus_client is missing ({e}); apt-get install python3-prometheus-client")
    return text_string_to_metric_families


class Scrape:
    """One /metrics answer, parsed: family types and every sample's value."""

    def __init__(self, parse, text):
        self.types = {}
        self.samples = {}
        for family in parse(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name, **labels):
        """A sample's value; 0 for a series not (yet) exposed."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name):
        return {dict(k[1]).__repr__(): v for k, v in self.samples.items() if k[0] == name}

    def label_sets(self, name):
        return [dict(k[1]) for k in self.samples if k[0] == name]


class CountingDaemon(Daemon):
    """A Daemon that notes every request it got an answer to, start-up polls
    included: each answer is one request the daemon must have logged.  No
    request is abandoned while the daemon may still answer it (a line logged
    after the test gave up would count against it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answered = []   # (method, logged path, status)
        self._counted_for = None

    def env(self):
        # start() truncates the log with each attempt on a fresh port: the
        # answers of an attempt given up on are not in the log kept.
        if self._counted_for != self.port:
            self.answered = []
            self._counted_for = self.port
        return super().env()

    def note(self, method, path, status):
        raw = path.split("?", 1)[0]
        # http_log_request logs /authorize/<anything> as "/authorize/".
        if raw.startswith("/authorize/") and len(raw) > len("/authorize/"):
            raw = "/authorize/"
        self.answered.append((method, raw, status))

    def request(self, method, path, body=None, headers=None, record=True, timeout=30):
        r = super().request(method, path, body, headers, record, timeout=max(timeout, ANSWER_TIMEOUT))
        self.note(method, path, r.status)
        return r


class AdminDaemon(CountingDaemon):
    """The same with admin_listen on a port of its own: /health, which the
    start-up waits for, answers there only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.admin_port = None
        self._admin_for = None

    def env(self):
        # A fresh admin port with every fresh public port (start() retries).
        if self._admin_for != self.port:
            self.admin_port = free_port()
            self._admin_for = self.port
        env = super().env()
        env["HSMJWT_ADMIN_LISTEN"] = f"127.0.0.1:{self.admin_port}"
        return env

    def admin_request(self, method, path, timeout=ANSWER_TIMEOUT):
        public = self.port
        self.port = self.admin_port
        try:
            r = Daemon.request(self, method, path, record=False, timeout=timeout)
        finally:
            self.port = public
        self.note(method, path, r.status)
        return r

    def _wait_healthy(self):
        deadline = time.monotonic() + 90.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited"
            try:
                if self.admin_request("GET", "/health").status == 200:
                    return "up"
            except OSError:
                pass
            time.sleep(0.2)
        return "timeout"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_pair():
    verifier = b64url(os.urandom(32))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


class Flow:
    """What one daemon was asked and answered, with every secret handed out
    kept for the log scan."""

    def __init__(self, c, d, admin_token):
        self.c = c
        self.d = d
        self.admin = admin_token
        self.secrets = [admin_token]
        self.issued = collections.Counter()       # (token_type, alg) -> tokens signed
        self.verdicts = collections.Counter()     # verification result -> count
        self.revoked = 0                          # records the requests revoked
        self.token_200 = 0                        # POST /token answered 200
        self.jtis = []                            # jtis the responses named

    def keep(self, *tokens):
        for t in tokens:
            if isinstance(t, str) and t:
                self.secrets.append(t)

    def signed(self, token):
        """Counts a token the daemon signed by what it says it is."""
        header, claims = jwt_parts(token)
        self.issued[(claims.get("token_type"), header.get("alg"))] += 1
        self.keep(token)

    def call(self, method, path, body=None, bearer=None, form=None, raw_json=None):
        headers = {}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if raw_json is not None:
            body = raw_json
            headers["Content-Type"] = "application/json"
        r = self.d.request(method, path, body, headers)
        if method == "POST" and path == "/token" and r.status == 200:
            self.token_200 += 1
        return r

    def issue(self, what, **body):
        r = self.call("POST", "/token", body, bearer=self.admin)
        doc = r.json() or {}
        member = {"refresh": "refresh_token", "id": "id_token"}.get(body.get("token_type"), "access_token")
        if not self.c.check(r.status == 200 and isinstance(doc.get(member), str), f"POST /token {what}: 200",
                            f"{r.status} {r.body[:200]!r}"):
            return None
        self.signed(doc[member])
        self.jtis.append(doc.get("jti"))
        return doc[member]

    def verify(self, token, what, want, **extra):
        r = self.call("POST", "/token/verify", {"token": token, **extra})
        doc = r.json() or {}
        result = "valid" if doc.get("valid") is True else doc.get("error")
        if r.status == 200:
            self.verdicts[result] += 1
        self.c.equal((r.status, result), (200, want), f"/token/verify {what}")
        return result

    def revoke(self, token, what, records):
        """Revokes token; records: how many registry records that revokes."""
        r = self.call("POST", "/token/revoke", {"token": token}, bearer=self.admin)
        if self.c.equal(r.status, 200, f"POST /token/revoke {what}"):
            self.revoked += records


def exercise(c, d, flow):
    """Every flow that hands out or takes a secret, once."""
    c.section("tokens of every family, algorithm and flow")
    a1 = flow.issue("access ES256", subject="alice", audience="api", scope="read")
    flow.issue("access ES256 again", subject="alice")
    flow.issue("access RS256", subject="alice", alg="RS256")
    a_ed = flow.issue("access EdDSA", subject="bob", alg="EdDSA")
    refresh = flow.issue("refresh", subject="alice", token_type="refresh", client_id=CLIENT)
    flow.issue("id (RS256 by default)", subject="alice", token_type="id", client_id=CLIENT, nonce="n-1")
    flow.issue("id ES256", subject="alice", token_type="id", client_id=CLIENT, alg="ES256")

    r = flow.call("POST", "/token-pairs", {"subject": "dave"}, bearer=flow.admin)
    pair = r.json() or {}
    if c.check(r.status == 200 and isinstance(pair.get("parent_token"), str) and
               isinstance(pair.get("child_token"), str), "POST /token-pairs: parent and child", repr(r.body[:200])):
        flow.signed(pair["parent_token"])
        flow.signed(pair["child_token"])
        flow.jtis.append(pair.get("parent_jti"))
    r = flow.call("POST", "/renew", {"parent_token": pair.get("parent_token", "")})
    renewed = (r.json() or {}).get("child_token")
    if c.check(r.status == 200 and isinstance(renewed, str), "POST /renew: a new child", repr(r.body[:200])):
        flow.signed(renewed)

    c.section("authorization code with PKCE, then a refresh grant")
    verifier, challenge = pkce_pair()
    flow.keep(verifier)
    r = flow.call("POST", "/codes", {"subject": "carol", "client_id": CLIENT, "redirect_uri": REDIRECT,
                                     "code_challenge": challenge, "code_challenge_method": "S256",
                                     "scope": "openid"}, bearer=flow.admin)
    code = (r.json() or {}).get("code")
    flow.keep(code)
    c.check(r.status == 200 and isinstance(code, str), "POST /codes: a code", repr(r.body[:200]))
    r = flow.call("POST", "/token", form={"grant_type": "authorization_code", "code": code or "",
                                          "client_id": CLIENT, "redirect_uri": REDIRECT,
                                          "code_verifier": verifier})
    grant = r.json() or {}
    if c.check(r.status == 200 and all(isinstance(grant.get(k), str) for k in
                                       ("access_token", "refresh_token", "id_token")),
               "code grant: access, refresh and id tokens", repr(r.body[:200])):
        for k in ("access_token", "refresh_token", "id_token"):
            flow.signed(grant[k])
    r = flow.call("POST", "/token", form={"grant_type": "refresh_token",
                                          "refresh_token": grant.get("refresh_token", ""), "client_id": CLIENT})
    rotated = r.json() or {}
    if c.check(r.status == 200 and isinstance(rotated.get("refresh_token"), str),
               "refresh grant: a new access and refresh token", repr(r.body[:200])):
        flow.signed(rotated["access_token"])
        flow.signed(rotated["refresh_token"])
        # The refresh token used is consumed: its record is revoked.
        flow.revoked += 1

    c.section("verify, introspect, /authorize")
    if a1:
        flow.verify(a1, "a valid access token", "valid")
        flow.verify(a1, "a valid access token for its audience", "valid", audience="api")
        flow.verify(a1, "another audience", "wrong_audience", audience="elsewhere")
        h, p, s = a1.split(".")
        bad = h + "." + p + "." + ("A" if s[0] != "A" else "B") + s[1:]
        flow.verify(bad, "a changed signature", "bad_signature")
        flow.verify("not.a-token", "garbage", "malformed")
        # Not JSON at all: a 400, and a debug line saying why.
        r = flow.call("POST", "/token/verify", raw_json=b'{"token": ')
        c.equal(r.status, 400, "/token/verify with a broken body: 400")
        r = flow.call("POST", "/token/introspect", {"token": a1}, bearer=flow.admin)
        if c.equal((r.status, (r.json() or {}).get("active")), (200, True), "introspect: active"):
            flow.verdicts["valid"] += 1
        r = flow.call("POST", "/authorize", bearer=a1)
        if c.equal(r.status, 200, "/authorize with a valid access token: 200"):
            flow.verdicts["valid"] += 1
        r = flow.call("POST", "/authorize/api/orders/7?q=1", None, bearer=bad)
        if c.equal(r.status, 401, "/authorize with a bad signature: 401"):
            flow.verdicts["bad_signature"] += 1
    if refresh:
        flow.verify(refresh, "a refresh token asked as access", "wrong_type", token_type="access")

    c.section("revocations")
    if a_ed:
        flow.revoke(a_ed, "an access token", 1)
        flow.verify(a_ed, "the revoked token", "revoked")
    if pair.get("parent_token"):
        # The parent, its first child and the renewed one.
        flow.revoke(pair["parent_token"], "a parent with two children", 3)
        flow.verify(pair["child_token"], "a child of the revoked parent", "revoked")


def expire_one(c, flow):
    """A token that expires: 1 s of life against leeway 1, polled until the
    daemon says so (each poll's verdict is counted as it comes)."""
    token = flow.issue("access, 1 s", subject="erin", expires_in=1)
    if token is None:
        return
    deadline = time.monotonic() + EXPIRY_DEADLINE
    result = None
    while time.monotonic() < deadline:
        r = flow.call("POST", "/token/verify", {"token": token})
        doc = r.json() or {}
        result = "valid" if doc.get("valid") is True else doc.get("error")
        flow.verdicts[result] += 1
        if result == "expired":
            break
        time.sleep(0.5)
    c.equal(result, "expired", "a 1 s token verifies as expired once past exp + leeway")


# ---- /metrics -------------------------------------------------------------------

def scrape(c, d, parse, via=None):
    r = via("GET", "/metrics") if via else d.request("GET", "/metrics")
    c.equal(r.status, 200, "GET /metrics: 200")
    c.equal(r.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8", "GET /metrics: Content-Type")
    return Scrape(parse, r.body.decode())


def family_checks(c, m):
    c.section("every SPEC §8 family, with its type")
    for name, kind in SPEC_FAMILIES.items():
        family = name[:-len("_total")] if kind == "counter" and name.endswith("_total") else name
        c.equal(m.types.get(family), kind, f"{name} is a {kind}")


def metrics_checks(c, d, parse, flow):
    m0 = scrape(c, d, parse)
    family_checks(c, m0)
    marks = dict(issued=dict(flow.issued), verdicts=dict(flow.verdicts), revoked=flow.revoked,
                 token_200=flow.token_200)

    exercise(c, d, flow)
    expire_one(c, flow)
    r = flow.call("GET", "/no/such/endpoint")
    c.equal(r.status, 404, "an unknown path: 404")
    m1 = scrape(c, d, parse)

    c.section("tokens issued, by type and alg: exact deltas")
    issued = {k: v - marks["issued"].get(k, 0) for k, v in flow.issued.items()}
    c.check(len({alg for _, alg in issued}) == 3 and len({t for t, _ in issued}) >= 5,
            "the flows signed every family with three algorithms", repr(issued))
    seen = {(s["type"], s["alg"]) for s in m1.label_sets("hsmjwt_tokens_issued_total")}
    for key in sorted(set(issued) | seen):
        got = m1.value("hsmjwt_tokens_issued_total", type=key[0], alg=key[1]) - \
            m0.value("hsmjwt_tokens_issued_total", type=key[0], alg=key[1])
        c.equal(got, issued.get(key, 0), f"hsmjwt_tokens_issued_total{{type={key[0]},alg={key[1]}}} delta")

    c.section("verifications, by result: exact deltas")
    verdicts = {k: v - marks["verdicts"].get(k, 0) for k, v in flow.verdicts.items()}
    for result in sorted(set(verdicts) | {s["result"] for s in m1.label_sets("hsmjwt_verifications_total")}):
        got = m1.value("hsmjwt_verifications_total", result=result) - \
            m0.value("hsmjwt_verifications_total", result=result)
        c.equal(got, verdicts.get(result, 0), f"hsmjwt_verifications_total{{result={result}}} delta")
    for result in ("valid", "expired", "bad_signature", "malformed", "revoked", "wrong_audience"):
        c.check(verdicts.get(result, 0) > 0, f"the flows produced a {result} verdict")

    c.section("revocations: records revoked")
    c.equal(m1.value("hsmjwt_revocations_total") - m0.value("hsmjwt_revocations_total"),
            flow.revoked - marks["revoked"], "hsmjwt_revocations_total delta = records revoked (cascades each)")

    c.section("the signing histogram")
    signed = sum(issued.values())
    sign_count = m1.value("hsmjwt_hsm_sign_seconds_count")
    c.check(sign_count - m0.value("hsmjwt_hsm_sign_seconds_count") >= signed,
            "hsm_sign_seconds_count grew by at least the tokens signed",
            f"{sign_count - m0.value('hsmjwt_hsm_sign_seconds_count')} < {signed}")
    c.equal(sign_count, m1.value("hsmjwt_hsm_operations_total", op="sign", result="ok") +
            m1.value("hsmjwt_hsm_operations_total", op="sign", result="error"),
            "hsm_sign_seconds_count = hsm_operations_total{op=sign} ok + error")
    c.equal(m1.value("hsmjwt_hsm_sign_seconds_bucket", le="+Inf"), sign_count, "the +Inf bucket is the count")
    buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in m1.samples.items()
                      if k[0] == "hsmjwt_hsm_sign_seconds_bucket"), key=lambda x: x[0])
    c.check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "the buckets are cumulative", repr(buckets))
    c.check(m1.value("hsmjwt_hsm_sign_seconds_sum") > 0, "hsm_sign_seconds_sum > 0")

    c.section("http requests, by route and code")
    c.equal(m1.value("hsmjwt_http_requests_total", path="/token", code="200") -
            m0.value("hsmjwt_http_requests_total", path="/token", code="200"),
            flow.token_200 - marks["token_200"], "http_requests_total{path=/token,code=200} delta")
    c.equal(m1.value("hsmjwt_http_requests_total", path="other", code="404") -
            m0.value("hsmjwt_http_requests_total", path="other", code="404"), 1,
            "an unknown path is counted once under path=other, code=404")
    c.check(m1.value("hsmjwt_http_requests_total", path="/authorize/**", code="401") >= 1,
            "/authorize/... is counted under its route pattern")
    paths = {s["path"] for s in m1.label_sets("hsmjwt_http_requests_total")}
    c.check("/no/such/endpoint" not in paths, "no path outside the route table becomes a label", repr(paths))

    c.section("gauges")
    c.equal(m1.value("hsmjwt_parent_tokens_active") - m0.value("hsmjwt_parent_tokens_active"), 0,
            "the pair's parent, revoked, is not an active parent")
    r = flow.call("POST", "/token-pairs", {"subject": "frank", "include_child": False}, bearer=flow.admin)
    if c.equal(r.status, 200, "another pair"):
        flow.signed((r.json() or {})["parent_token"])
    m2 = scrape(c, d, parse)
    c.equal(m2.value("hsmjwt_parent_tokens_active") - m1.value("hsmjwt_parent_tokens_active"), 1,
            "an active parent more")
    c.check(m2.value("hsmjwt_registry_records") > m0.value("hsmjwt_registry_records"),
            "hsmjwt_registry_records grew with the tokens registered")
    for alg in ALGORITHMS:
        c.equal((m2.value("hsmjwt_keys", state="active", alg=alg), m2.value("hsmjwt_keys", state="next", alg=alg)),
                (1.0, 0.0), f"hsmjwt_keys: one active {alg} key, no next one")

    c.section("a rotation")
    r = flow.call("POST", "/admin/rotate-keys", {}, bearer=flow.admin)
    rotated = (r.json() or {}).get("rotated") or []
    c.equal(r.status, 200, "POST /admin/rotate-keys: 200")
    generated = [e["alg"] for e in rotated if e.get("generated")]
    c.equal(sorted(generated), sorted(ALGORITHMS), "a next key generated for every algorithm")
    m3 = scrape(c, d, parse)
    c.equal(m3.value("hsmjwt_key_rotations_total") - m2.value("hsmjwt_key_rotations_total"), len(generated),
            "hsmjwt_key_rotations_total delta = keys a rotation generated")
    for alg in ALGORITHMS:
        c.equal((m3.value("hsmjwt_keys", state="active", alg=alg), m3.value("hsmjwt_keys", state="next", alg=alg)),
                (1.0, 1.0), f"hsmjwt_keys: {alg} has its next key published")
    c.equal(m3.value("hsmjwt_hsm_operations_total", op="generate", result="ok") -
            m2.value("hsmjwt_hsm_operations_total", op="generate", result="ok"), len(generated),
            "hsm_operations_total{op=generate,result=ok} delta")


# ---- the log -------------------------------------------------------------------

def unquote(value):
    if value == "-":
        return ""
    return re.sub(r'\\(.)', r'\1', value[1:-1])


def log_checks(c, log, d, flow, pin, what):
    c.section(f"the log ({what})")
    c.check(len(log) > 0 and 'level=debug' in log, "the log holds debug lines", log[-300:])
    leaks = []
    for s in flow.secrets:
        parts = s.split(".")
        pieces = [s]
        if len(parts) == 3:
            pieces += [parts[2], parts[0] + "." + parts[1]]
        for piece in pieces:
            if len(piece) >= 16 and piece in log:
                leaks.append(piece[:12] + "...")
    # The scan is not vacuous: the secrets are there to look for, and what
    # is logged of the same tokens (their jtis) is found by the same search.
    c.check(len(flow.secrets) >= 15, f"{len(flow.secrets)} secrets to look for")
    c.check(bool(flow.jtis) and all(j in log for j in flow.jtis if j), "the scan finds the jtis that are logged")
    c.equal(leaks, [], "no token, signature, header.payload, code, verifier or bearer token in the log")
    c.check(pin not in log, "the PIN is not in the log")

    lines = [l for l in log.splitlines() if 'msg="request"' in l]
    parsed = [REQUEST_LINE.search(l) for l in lines]
    bad = [l for l, m in zip(lines, parsed) if m is None]
    c.equal(bad[:3], [], 'every msg="request" line has method, path, status, latency_ms, sub and jti')
    logged = collections.Counter((m["method"], unquote(m["path"]), int(m["status"])) for m in parsed if m)
    made = collections.Counter(d.answered)
    c.equal(sum(logged.values()), sum(made.values()), f"one request line per request made ({sum(made.values())})")
    c.equal(dict(logged - made), {}, "no request line without a request")
    c.equal(dict(made - logged), {}, "no request without its line")
    subs = {unquote(m["sub"]) for m in parsed if m}
    c.check("metrics-admin" in subs, "requests with a bearer token log the caller's sub", repr(subs))
    jtis = {unquote(m["jti"]) for m in parsed if m}
    missing = [j for j in flow.jtis if j and j not in jtis]
    c.equal(missing, [], "the jti of every token issued through POST /token or a pair is in a request line")


# ---- the runs --------------------------------------------------------------------

def metrics_run(c, build_dir, source_dir, work, parse):
    token = Token(source_dir, os.path.join(work.path, "a"), "metrics-a")
    # The development PIN in the environment (the harness's pin_file unset).
    d = CountingDaemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "a.log"),
                       extra_env={"HSMJWT_PIN_FILE": "", "HSMJWT_PIN": token.pin, "HSMJWT_LOG_LEVEL": "debug",
                                  "HSMJWT_LEEWAY": "1"})
    state = {}

    def body():
        d.start()
        flow = Flow(c, d, d.mint("admin", sub="metrics-admin"))
        state["flow"] = flow
        guarded(c, "metrics", metrics_checks, c, d, parse, flow)

    def checks(log):
        if "flow" in state:
            log_checks(c, log, d, state["flow"], token.pin, "HSMJWT_PIN")

    return run_daemon_body(c, d, body, checks)


def admin_run(c, build_dir, source_dir, work, parse):
    token = Token(source_dir, os.path.join(work.path, "b"), "metrics-b")
    d = AdminDaemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "b.log"),
                    extra_env={"HSMJWT_LOG_LEVEL": "debug"})
    state = {}

    def body():
        d.start()
        c.section("admin_listen")
        r = d.admin_request("GET", "/health")
        c.equal((r.status, (r.json() or {}).get("status")), (200, "ok"), "GET /health on the admin port: 200 ok")
        m = scrape(c, d, parse, via=d.admin_request)
        family_checks(c, m)
        r = d.admin_request("HEAD", "/metrics")
        c.equal((r.status, r.body), (200, b""), "HEAD /metrics on the admin port: 200, no body")
        for path in ("/metrics", "/health"):
            r = d.request("GET", path)
            c.equal((r.status, (r.json() or {}).get("error")), (404, "not_found"),
                    f"GET {path} on the public port: 404")
        for path in ("/token", "/.well-known/jwks.json"):
            r = d.admin_request("GET", path)
            c.equal(r.status, 404, f"GET {path} on the admin port: 404 (only /metrics and /health there)")
        r = d.admin_request("POST", "/metrics")
        c.equal(r.status, 405, "POST /metrics on the admin port: 405")
        flow = Flow(c, d, d.mint("admin", sub="metrics-admin"))
        state["flow"] = flow
        c.check(flow.issue("access on the public port", subject="alice") is not None,
                "the public API still works")
        c.equal(d.request("GET", "/.well-known/jwks.json").status, 200, "the public JWKS still answers")
        m1 = scrape(c, d, parse, via=d.admin_request)
        c.equal(m1.value("hsmjwt_http_requests_total", path="other", code="404") -
                m.value("hsmjwt_http_requests_total", path="other", code="404"), 4,
                "the public /metrics and /health and the admin port's other paths count as path=other, 404")
        c.equal(m1.value("hsmjwt_tokens_issued_total", type="access", alg="ES256") -
                m.value("hsmjwt_tokens_issued_total", type="access", alg="ES256"), 1,
                "the admin port's metrics see the public port's issuance")
        guarded(c, "flows", exercise, c, d, flow)
        guarded(c, "a second daemon", second_admin, c, build_dir, d, work)

    def checks(log):
        if "flow" in state:
            c.check("listening for /metrics and /health" in log, "the admin listener is logged")
            log_checks(c, log, d, state["flow"], token.pin, "pin_file")

    return run_daemon_body(c, d, body, checks)


def second_admin(c, build_dir, d, work):
    """admin_listen is claimed like a listen address: a second daemon (its
    own state_dir and public port, the same token) asking for the same
    admin address fails to start, naming it."""
    c.section("admin_listen held by another daemon")
    env = d.env()
    env["HSMJWT_LISTEN"] = f"127.0.0.1:{free_port()}"
    env["HSMJWT_STATE_DIR"] = os.path.join(work.path, "b2")
    os.makedirs(env["HSMJWT_STATE_DIR"], mode=0o700)
    log_path = os.path.join(work.path, "b2.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([os.path.join(build_dir, "hsmjwtd")], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        code = proc.wait(timeout=ANSWER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    with open(log_path, errors="replace") as f:
        text = f.read()
    c.equal(code, 1, "a second daemon on the same admin_listen exits 1 (and leaks nothing on the way out)")
    c.check("cannot listen" in text and f"port={d.admin_port}" in text, "its log names the admin address held",
            text[-600:])
    r = d.admin_request("GET", "/health")
    c.equal(r.status, 200, "the first daemon's admin port still answers")


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    parse = import_parser()
    c = Checker("metrics")
    work = Workdir("hsmjwt-metrics-")
    metrics_run(c, build_dir, source_dir, work, parse)
    admin_run(c, build_dir, source_dir, work, parse)
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    main_with_dirs("test_metrics", run)
