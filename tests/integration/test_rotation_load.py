#!/usr/bin/python3
"""Key rotation under load (issue 4): clients issue and verify tokens
continuously while several rotations run with a short publish_ahead —
automatic ones (rotation_period) and requested ones (POST /admin/rotate-keys)
— and retired keys reach their destruction during the run.  Asserted:

  - every issuance answers 200 (no 503: nothing is faulty here) and every
    fresh token verifies at POST /token/verify;
  - zero valid tokens rejected: a re-verifier sends earlier tokens again,
    always the last one each key signed when it nears its end, and any
    rejection received before exp + leeway is a failure (the verifier accepts
    until then, and the destruction window is built to cover it);
  - a STRICT relying party (RFC 9111 freshness counted from the moment it
    sent the request, max-age honoured exactly, If-None-Match/304, never a
    refetch on an unknown kid) verifies every issued token with PyJWT against
    its cached copy and meets zero unknown kids and zero bad signatures;
  - every kid that signed was in every JWKS served from publish_ahead before
    its first token on (observed by a poller), every key made during the run
    activates at created + publish_ahead (+ the header's slack), signs only
    from activate_at on and no longer than its retired_at, and a destroyed key
    leaves the JWKS only after its last token is past exp + leeway (and not
    before the daemon's own destroy_after).

Usage: test_rotation_load.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import bisect
import email.utils
import http.client
import json
import os
import queue
import random
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Response, Skip, Token, Workdir, jwt_parts,  # noqa: E402
                            main_with_dirs, require_tools, run_daemon_test)

ALGORITHMS = ["ES256", "RS256"]
PUBLISH_AHEAD = 8
ROTATION_PERIOD = 16
MAX_TTL = 60                   # the smallest max_ttl the configuration accepts (60..): a key retired
                               # ~10 s in is destroyed ~72 s in
ACCESS_TTL = 20
LEEWAY = 2
AUDIENCE = "api"               # the default audience

# The load runs at least LOAD_MIN seconds and until MIN_DESTROYED keys have
# left the JWKS (the first retirement, about 10 s in, is destroyed
# max_ttl + leeway later), then TAIL more; never past LOAD_MAX seconds nor
# MAX_TOKENS tokens.
LOAD_MIN = 60.0
LOAD_MAX = 110.0
TAIL = 2.0
MAX_TOKENS = 200000
WORKERS = 5
ADMIN_TTL = 20                 # a minted admin token must not outlive max_ttl...
ADMIN_REMINT = 10.0            # ...so a new one is minted this often
ROTATE_AT = (1.0, 33.0)        # POST /admin/rotate-keys this long into the load (the first is asked twice)
JWKS_POLL = 0.2                # the observer's JWKS poll interval, seconds
KEYS_POLL = 0.5                # and its GET /admin/keys interval
EDGE = 10.0                    # the re-verifier watches each kid's last token this long before exp + leeway
                               # (half its ACCESS_TTL + LEEWAY: missed only if it got no turn for 10 s)
QUEUE_MAX = 2000               # tokens waiting for the relying party; workers wait beyond
DRAIN_SECONDS = 30.0           # the relying party's time to finish the queue after the load
JOIN_SECONDS = 60.0

# What the run must have exercised for its verdict to mean something.
MIN_TOKENS_PER_ALG = 50
MIN_NEW_KIDS_PER_ALG = 2
MIN_DESTROYED = 2
COARSE_LAG = 0.02              # see server_second

# From include/hsmjwt/keystate.h, read at start (header_constant).
SLACK = None                   # KEYSTATE_PUBLISH_SLACK


def header_constant(source_dir, name):
    """A #define of include/hsmjwt/keystate.h: the test follows the contract
    rather than a copy of its numbers."""
    with open(os.path.join(source_dir, "include", "hsmjwt", "keystate.h")) as f:
        m = re.search(rf"^#define {name} (\d+)\b", f.read(), re.M)
    if m is None:
        raise RuntimeError(f"keystate.h defines no {name}")
    return int(m.group(1))


def server_second(t):
    """The least whole-second `now' (time(NULL)) the daemon can read at or
    after the wall-clock moment t.  glibc's time() reads the kernel's coarse
    clock, which lags CLOCK_REALTIME (Python's time.time()) by up to one tick
    (1/HZ <= 10 ms): just after a second begins, the daemon may still read
    the previous one.  It never reads ahead."""
    return int(t - COARSE_LAG)


def served_second(r):
    """The daemon's whole second when it answered r (its Date header), or
    None without a readable one."""
    try:
        return int(email.utils.parsedate_to_datetime(r.header("Date")).timestamp())
    except (TypeError, ValueError):
        return None


def max_age_of(cache_control):
    """max-age of a Cache-Control value, RFC 9111 §5.2.2: no-cache/no-store
    or a missing max-age make the response stale at once (0); heuristic
    freshness is never used."""
    age = None
    for directive in (cache_control or "").split(","):
        d = directive.strip().lower()
        if d in ("no-cache", "no-store"):
            return 0
        m = re.fullmatch(r"max-age=(\d+)", d)
        if m:
            age = int(m.group(1))
    return age if age is not None else 0


class Conn:
    """A keep-alive HTTP connection of one thread (a fresh connection per
    request would leave tens of thousands of sockets in TIME_WAIT).  A request
    that fails on a reused connection, which the server may have closed
    meanwhile, is sent once more on a new one."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for _ in range(2):
            fresh = self.conn is None
            if fresh:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                r = Response(resp.status, resp.getheaders(), resp.read())
                if resp.will_close:
                    self.close()
                return r
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if fresh:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Issued:
    __slots__ = ("token", "alg", "kid", "iat", "exp", "recv", "source")

    def __init__(self, token, alg, kid, iat, exp, recv, source):
        self.token, self.alg, self.kid, self.iat, self.exp = token, alg, kid, iat, exp
        self.recv, self.source = recv, source


class Run:
    """Everything the threads saw, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stop = threading.Event()         # the load ends
        self.workers_done = threading.Event()  # every worker has ended: nothing more is queued
        self.observe_stop = threading.Event()  # the observer and the re-verifier end
        self.queue = queue.Queue(QUEUE_MAX)   # tokens for the relying party
        self.admin = None
        self.tokens = []                      # Issued, in order of arrival
        self.recvs = []                       # their recv, for bisect
        self.edge = {}                        # kid -> the Issued with the latest exp
        self.issue_answers = {}               # status -> count
        self.issue_bad = []                   # (status, alg, body) of non-200 issuances
        self.verify_count = 0
        self.verify_bad = []                  # fresh tokens /token/verify refused
        self.reverify_count = 0
        self.reverify_expired = 0             # refused after exp + leeway: legitimately
        self.reverify_bad = []                # refused before exp + leeway
        self.reverify_ok = []                 # (kid, exp, recv, served) of accepted re-verifications
        self.statuses = {}                    # every HTTP status seen -> count
        self.errors = []                      # exceptions in threads
        self.polls = []                       # (send, recv, kids frozenset, max_age) of the observer's JWKS polls
        self.key_info = {}                    # kid -> latest GET /admin/keys entry
        self.key_first = {}                   # kid -> first GET /admin/keys entry
        self.admin_max_ages = []              # jwks_max_age of GET /admin/keys
        self.rp = {"fetch": 0, "200": 0, "304": 0, "verified": 0, "unknown_kid": [], "bad": [],
                   "max_ages": {}, "other": []}

    def add_token(self, issued):
        with self.lock:
            self.tokens.append(issued)
            self.recvs.append(issued.recv)
            e = self.edge.get(issued.kid)
            if e is None or issued.exp > e.exp:
                self.edge[issued.kid] = issued

    def count_status(self, status):
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def error(self, where, e):
        with self.lock:
            self.errors.append(f"{where}: {type(e).__name__}: {e}")


def guarded(run, where, fn):
    """A thread body whose exception is recorded (and ends the load) rather
    than lost."""
    def body():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 — reported as a failed check
            run.error(where, e)
            run.stop.set()
    return body


def worker(daemon, run, n):
    conn = Conn(daemon.port)
    i = 0
    while not run.stop.is_set():
        i += 1
        alg = ALGORITHMS[(n + i) % len(ALGORITHMS)]
        body = {"subject": f"rot-{n}", "alg": alg}
        # Every third token lives as long as any may: the destruction window's edge.
        if i % 3 == 0:
            body["expires_in"] = MAX_TTL
        with run.lock:
            admin = run.admin
            if len(run.tokens) >= MAX_TOKENS:
                run.stop.set()
                break
        r = conn.request("POST", "/token", body, {"Authorization": f"Bearer {admin}"})
        recv = time.time()
        run.count_status(r.status)
        with run.lock:
            run.issue_answers[r.status] = run.issue_answers.get(r.status, 0) + 1
        doc = r.json() or {}
        token = doc.get("access_token")
        if r.status != 200 or not isinstance(token, str):
            with run.lock:
                run.issue_bad.append((r.status, alg, r.body[:200]))
            time.sleep(0.05)
            continue
        header, claims = jwt_parts(token)
        issued = Issued(token, header.get("alg"), header.get("kid"), claims.get("iat"), claims.get("exp"), recv,
                        "worker")
        if issued.alg != alg:
            with run.lock:
                run.issue_bad.append((r.status, alg, f"signed {issued.alg!r}".encode()))
        run.add_token(issued)
        # Waits while the relying party is behind (the load adapts), but not
        # for one that has ended: the count check then reports the token.
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            try:
                run.queue.put(issued, timeout=0.5)
                break
            except queue.Full:
                pass
        r = conn.request("POST", "/token/verify", {"token": token})
        run.count_status(r.status)
        doc = r.json() or {}
        with run.lock:
            run.verify_count += 1
            if r.status != 200 or doc.get("valid") is not True or (doc.get("header") or {}).get("kid") != issued.kid:
                run.verify_bad.append((issued.kid, alg, r.status, r.body[:200]))
    conn.close()


def reverifier(daemon, run):
    """Sends earlier tokens to /token/verify again.  The verdict is decided on
    arrival of the answer: a refusal received before exp + leeway (the
    daemon's clock is this machine's, and it reads whole seconds, so it was
    still inside the leeway when it answered) is a valid token rejected.
    Each kid's last token is re-verified every turn from EDGE seconds before
    its end: that is the token a key destroyed too early, or a retired key
    dropped from the set, would break first."""
    conn = Conn(daemon.port)
    rng = random.Random(4)
    while not run.observe_stop.is_set():
        now = time.time()
        with run.lock:
            edges = [e for e in run.edge.values() if now < e.exp + LEEWAY <= now + EDGE]
            start = bisect.bisect_left(run.recvs, now - MAX_TTL - LEEWAY - 1)
            pool = run.tokens[start:]
        picks = edges + [t for t in (rng.choice(pool) for _ in range(min(6, len(pool))))
                         if now < t.exp + LEEWAY - 0.5]
        if not picks:
            time.sleep(0.05)
            continue
        for t in picks:
            r = conn.request("POST", "/token/verify", {"token": t.token})
            recv = time.time()
            run.count_status(r.status)
            doc = r.json() or {}
            with run.lock:
                run.reverify_count += 1
                if r.status == 200 and doc.get("valid") is True:
                    run.reverify_ok.append((t.kid, t.exp, recv, served_second(r)))
                elif recv >= t.exp + LEEWAY:
                    run.reverify_expired += 1
                else:
                    run.reverify_bad.append((t.kid, t.alg, round(t.exp - recv, 2), r.status, r.body[:200]))
        time.sleep(0.01)
    conn.close()


def observer(daemon, run):
    """Polls the JWKS (what any client could have fetched at that moment) and
    GET /admin/keys (created, activate_at, retired_at, destroy_after of every
    key while it exists)."""
    conn = Conn(daemon.port)
    next_keys = 0.0
    while not run.observe_stop.is_set():
        send = time.time()
        r = conn.request("GET", "/.well-known/jwks.json")
        recv = time.time()
        run.count_status(r.status)
        if r.status == 200:
            kids = frozenset(k["kid"] for k in json.loads(r.body)["keys"])
            with run.lock:
                run.polls.append((send, recv, kids, max_age_of(r.header("Cache-Control"))))
        if time.monotonic() >= next_keys:
            next_keys = time.monotonic() + KEYS_POLL
            with run.lock:
                admin = run.admin
            r = conn.request("GET", "/admin/keys", headers={"Authorization": f"Bearer {admin}"})
            run.count_status(r.status)
            doc = r.json() or {}
            if r.status == 200:
                with run.lock:
                    run.admin_max_ages.append(doc.get("jwks_max_age"))
                    for k in doc.get("keys", []):
                        run.key_first.setdefault(k["kid"], k)
                        run.key_info[k["kid"]] = k
        time.sleep(JWKS_POLL)
    conn.close()


class RelyingParty:
    """A strict JWKS client, RFC 9111: the copy's age is counted from the
    moment the request was SENT (§4.2.3's request_time, the conservative
    choice), it is fresh while age < max-age (§4.2), a stale copy is
    revalidated with If-None-Match and a 304 refreshes the stored copy's
    freshness with its own headers (§4.3.4).  It never refetches on an unknown
    kid.

    Why it can never meet an unknown kid while the daemon keeps its promises:
    take a token signed by kid K at t_sign, received by a worker at
    t_recv >= t_sign and picked up here at t_pick >= t_recv, and the copy
    used, requested at t_req, served at t_srv >= t_req and fresh at pickup:
    t_pick < t_req + max_age.  If K is not in the copy, K was published after
    t_srv (it cannot have been destroyed already: a destroyed key stopped
    signing max_ttl + leeway before, far longer than any max-age).  The
    daemon activates a key no earlier than publish_ahead after publishing it,
    and promises max_age <= publish_ahead - (t_srv - the moment it last read
    the token, which is before K was published): so
    t_sign >= t_srv + publish_ahead > t_req + max_age > t_pick >= t_sign, a
    contradiction.  Hence one unknown kid here proves a broken promise (a key
    signing before it was published publish_ahead, or a max-age too long) —
    the timing-free form of "every kid used to sign was in a JWKS served at
    least publish_ahead before"."""

    def __init__(self, daemon, run, jwt):
        self.daemon = daemon
        self.run = run
        self.jwt = jwt
        self.conn = Conn(daemon.port)
        self.keys = None        # kid -> JWK dict of the cached copy
        self.etag = None
        self.request_time = 0.0
        self.max_age = 0
        self.pyjwk = {}         # (etag, kid) -> PyJWK

    def fresh(self):
        return self.keys is not None and time.monotonic() - self.request_time < self.max_age

    def refresh(self):
        headers = {"If-None-Match": self.etag} if self.keys is not None and self.etag else {}
        request_time = time.monotonic()
        r = self.conn.request("GET", "/.well-known/jwks.json", headers=headers)
        self.run.count_status(r.status)
        max_age = max_age_of(r.header("Cache-Control"))
        stats = self.run.rp
        with self.run.lock:
            stats["fetch"] += 1
            stats["max_ages"][max_age] = stats["max_ages"].get(max_age, 0) + 1
        if r.status == 304 and self.keys is not None:
            with self.run.lock:
                stats["304"] += 1
        elif r.status == 200:
            with self.run.lock:
                stats["200"] += 1
            self.keys = {k["kid"]: k for k in json.loads(r.body)["keys"]}
            self.etag = r.header("ETag")
        else:
            with self.run.lock:
                stats["other"].append((r.status, r.body[:200]))
            return
        self.request_time = request_time
        self.max_age = max_age

    def verify(self, t):
        if not self.fresh():
            self.refresh()
        stats = self.run.rp
        jwk = (self.keys or {}).get(t.kid)
        if jwk is None:
            with self.run.lock:
                stats["unknown_kid"].append((t.kid, t.alg, t.iat, round(time.time() - t.recv, 2)))
            return
        key = self.pyjwk.get((self.etag, t.kid))
        if key is None:
            key = self.pyjwk[(self.etag, t.kid)] = self.jwt.PyJWK(jwk)
        try:
            self.jwt.decode(t.token, key=key.key, algorithms=[t.alg], audience=AUDIENCE,
                            issuer=self.daemon.issuer, leeway=LEEWAY)
        except self.jwt.PyJWTError as e:
            with self.run.lock:
                stats["bad"].append((t.kid, t.alg, f"{type(e).__name__}: {e}"))
            return
        with self.run.lock:
            stats["verified"] += 1

    def loop(self):
        deadline = None
        while True:
            if self.run.workers_done.is_set() and deadline is None:
                deadline = time.monotonic() + DRAIN_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                break
            try:
                t = self.run.queue.get(timeout=0.2)
            except queue.Empty:
                if self.run.workers_done.is_set():
                    break
                continue
            self.verify(t)
        self.conn.close()


def rotate(daemon, run, c, when, answers):
    with run.lock:
        admin = run.admin
    send = time.time()
    r = daemon.request("POST", "/admin/rotate-keys", {}, {"Authorization": f"Bearer {admin}"}, record=False)
    run.count_status(r.status)
    doc = r.json() or {}
    answers.append((when, r.status, doc, send))
    rotated = doc.get("rotated") if r.status == 200 else None
    print(f"  POST /admin/rotate-keys at +{when:.1f} s: {r.status} "
          + (", ".join(f"{x.get('alg')} {x.get('kid', '')[:8]}… {x.get('state')} generated={x.get('generated')}"
                       for x in rotated) if rotated else r.body[:160].decode(errors="replace")))
    c.check(r.status in (200, 409), f"POST /admin/rotate-keys at +{when:.1f} s answers 200 or 409 (already under way)",
            f"{r.status} {r.body[:200]!r}")
    if r.status == 200:
        c.check(isinstance(rotated, list) and sorted(x.get("alg") for x in rotated) == sorted(ALGORITHMS),
                f"  the rotation names one key per configured algorithm", repr(rotated))
        for x in rotated or []:
            if x.get("generated"):
                c.check(x.get("state") == "next" and x.get("activate_at", 0) >= server_second(send) + PUBLISH_AHEAD + SLACK,
                        f"  {x.get('alg')}: a generated key is next, activating publish_ahead + "
                        "KEYSTATE_PUBLISH_SLACK after the request",
                        repr(x))
    elif r.status == 409:
        c.equal(doc.get("error"), "conflict", "  the 409 says conflict")
    return r.status


def destroyed_so_far(run):
    """Kids the observer saw in the JWKS and no longer sees."""
    with run.lock:
        if not run.polls:
            return 0
        seen = set().union(*(p[2] for p in run.polls))
        return len(seen - run.polls[-1][2])


def mint_admin(daemon, run):
    token = daemon.mint("admin", ttl=ADMIN_TTL)
    recv = time.time()
    header, claims = jwt_parts(token)
    run.add_token(Issued(token, header.get("alg"), header.get("kid"), claims.get("iat"), claims.get("exp"), recv,
                         "admin"))
    with run.lock:
        run.admin = token


def analyse(c, run, initial_kids, answers, log):
    tokens = run.tokens
    polls = run.polls
    info = run.key_info
    by_kid = {}
    for t in tokens:
        by_kid.setdefault(t.kid, []).append(t)
    alg_of = {kid: ts[0].alg for kid, ts in by_kid.items()}
    for kid, k in info.items():
        alg_of.setdefault(kid, k.get("alg"))
    seen = set().union(*(p[2] for p in polls)) if polls else set()
    new_kids = sorted(seen - initial_kids)
    last_kids = polls[-1][2] if polls else frozenset()
    destroyed = sorted(k for k in seen if k not in last_kids)
    requested = {x["kid"] for _, status, doc, _ in answers if status == 200
                 for x in doc.get("rotated", []) if x.get("generated")}

    c.section("issuance and verification")
    per_alg = {a: sum(1 for t in tokens if t.alg == a and t.source == "worker") for a in ALGORITHMS}
    c.equal(run.errors, [], "no thread failed")
    c.equal(run.issue_bad, [], f"every POST /token answered 200 with the requested alg "
            f"({sum(run.issue_answers.values())} requests: {run.issue_answers})")
    c.equal(run.statuses.get(503, 0), 0, "no request answered 503 (nothing is faulty in this test)")
    c.equal(run.verify_bad, [], f"every fresh token verified at POST /token/verify ({run.verify_count})")
    c.equal(run.reverify_bad, [], f"zero valid tokens rejected: {run.reverify_count} re-verifications, "
            f"{run.reverify_expired} refused after exp + leeway, none before")
    for a in ALGORITHMS:
        c.check(per_alg[a] >= MIN_TOKENS_PER_ALG, f"{a}: {per_alg[a]} tokens issued (>= {MIN_TOKENS_PER_ALG})")

    c.section("the strict relying party")
    rp = run.rp
    c.equal(rp["unknown_kid"][:5], [], f"zero unknown kids in {rp['verified']} local verifications "
            f"({len(rp['unknown_kid'])} unknown)")
    c.equal(rp["bad"][:5], [], f"zero signature (or claim) failures ({len(rp['bad'])})")
    c.equal(rp["other"], [], "every JWKS fetch answered 200 or 304")
    issued_total = sum(1 for t in tokens if t.source == "worker")
    c.equal(rp["verified"] + len(rp["unknown_kid"]) + len(rp["bad"]), issued_total,
            "the relying party checked every token the workers received")
    ages = list(rp["max_ages"]) + [p[3] for p in polls] + run.admin_max_ages
    # SPEC §4.2: N <= publish_ahead; the daemon subtracts the time since it
    # last read the token (keys.h, keys_jwks_max_age), which a client cannot
    # see — the strict relying party above is the exact check of that part.
    too_long = sorted(set(a for a in ages if not isinstance(a, int) or a > PUBLISH_AHEAD))
    c.equal(too_long, [], f"no JWKS max-age (relying party, observer, GET /admin/keys' jwks_max_age) above "
            f"publish_ahead = {PUBLISH_AHEAD}")
    # keystate.h: max-age never reaches past the next scheduled activation
    # (counted in the daemon's whole seconds).  A kid in a poll whose
    # activate_at is after the poll's answer was a next key then.
    past = []
    for send, recv, kids, age in polls:
        for kid in kids:
            at = (info.get(kid) or run.key_first.get(kid) or {}).get("activate_at")
            if at is not None and at > recv and age > at - server_second(send):
                past.append((round(send, 2), age, at))
    c.equal(past[:5], [], f"no JWKS max-age ran past the next activation ({len(polls)} polls)")

    c.section("keys on the server's clock")
    c.check(len(info) > 0, f"GET /admin/keys described {len(info)} keys")
    for kid in sorted(by_kid):
        ts = by_kid[kid]
        k = info.get(kid)
        tag = f"{alg_of[kid]} {kid[:10]}…"
        if not c.check(k is not None, f"{tag}: GET /admin/keys described the key that signed {len(ts)} tokens"):
            continue
        c.check(kid in seen, f"{tag}: in the JWKS")
        early = [t.iat for t in ts if t.iat < k["activate_at"]]
        c.check(not early, f"{tag}: no token has iat < activate_at {k['activate_at']} "
                f"(iat {min(t.iat for t in ts)}..{max(t.iat for t in ts)})",
                f"{len(early)} tokens, earliest iat {min(early) if early else None}")
        if k.get("retired_at") is not None:
            # The destruction window (retired_at + max_ttl + leeway) covers
            # only tokens signed up to retired_at.
            late = [(t.iat, t.exp, t.source) for t in ts if t.iat > k["retired_at"]]
            c.check(not late, f"{tag}: no token has iat > retired_at {k['retired_at']}",
                    f"{len(late)} tokens, e.g. {late[:3]}")
    for kid in new_kids:
        tag = f"{alg_of.get(kid)} {kid[:10]}…"
        k = run.key_first.get(kid)
        if not c.check(k is not None, f"{tag} (new): GET /admin/keys described it"):
            continue
        c.check(k["activate_at"] >= k["created"] + PUBLISH_AHEAD,
                f"{tag}: activate_at >= created + publish_ahead ({k['created']} + {PUBLISH_AHEAD} <= {k['activate_at']})")
        c.check(k["activate_at"] >= k["created"] + PUBLISH_AHEAD + SLACK,
                f"{tag}: activate_at >= created + publish_ahead + KEYSTATE_PUBLISH_SLACK")
        first_in = next((p for p in polls if kid in p[2]), None)
        last_out = None
        for p in polls:
            if kid in p[2]:
                break
            last_out = p
        ts = by_kid.get(kid, [])
        if ts and first_in is not None:
            first_recv = min(t.recv for t in ts)
            after = f"+{last_out[0] - k['created']:.2f}" if last_out else "(before the first poll)"
            # A poll sent at `send' was served at or after it, and the first
            # token was signed at or before first_recv: a poll without the kid
            # sent less than publish_ahead before first_recv proves the key
            # signed before it had been published for publish_ahead.
            c.check(last_out is None or last_out[0] < first_recv - PUBLISH_AHEAD,
                    f"{tag}: every JWKS served from publish_ahead before its first token on held it "
                    f"(published between {after} and "
                    f"+{first_in[1] - k['created']:.2f} s after created; activation at "
                    f"+{k['activate_at'] - k['created']} s; first token received "
                    f"{first_recv - first_in[1]:.2f} s after the first poll that held it)",
                    f"a poll sent at {last_out[0] if last_out else 0:.2f} lacked it, first token received at "
                    f"{first_recv:.2f}")

    c.section("destruction")
    for kid in destroyed:
        tag = f"{alg_of.get(kid)} {kid[:10]}…"
        ts = by_kid.get(kid, [])
        k = info.get(kid, {})
        first_seen = next(i for i, p in enumerate(polls) if kid in p[2])
        gone = [p for p in polls[first_seen:] if kid not in p[2]]
        max_exp = max((t.exp for t in ts), default=0)
        c.check(k.get("destroy_after") is not None, f"{tag}: was retired with a destroy_after before it went")
        early = [p for p in gone if p[1] < max_exp + LEEWAY]
        c.check(not early, f"{tag}: left the JWKS only after its last token (exp {max_exp}) was past exp + leeway "
                f"(first poll without it received {gone[0][1] - max_exp:.2f} s after that exp)",
                f"a poll received at {early[0][1]:.2f} lacked it" if early else "")
        c.check(all(kid in p[2] for p in polls[first_seen:] if p[1] < max_exp),
                f"{tag}: every JWKS poll before its tokens' max exp held it")
        if k.get("destroy_after") is not None:
            c.check(all(p[1] >= k["destroy_after"] for p in gone),
                    f"{tag}: not gone before its destroy_after {k['destroy_after']} "
                    f"(retired_at {k.get('retired_at')}; gone by +{gone[0][1] - k['destroy_after']:.2f} s)")
        # At the edge by the daemon's own clock (the answer's Date), not by
        # when the answer reached the test.
        near_end = [x for x in run.reverify_ok if x[0] == kid and x[1] == max_exp and x[3] is not None
                    and x[3] >= max_exp + LEEWAY - EDGE]
        c.check(near_end, f"{tag}: its last token was re-verified (and accepted) in the final {EDGE:.0f} s "
                f"before exp + leeway ({len(near_end)} times)")
    c.check(len(destroyed) >= MIN_DESTROYED, f"{len(destroyed)} keys destroyed during the run (>= {MIN_DESTROYED})")
    destroyed_logged = len(re.findall(r"key destroyed by its lifecycle", log))
    c.check(destroyed_logged >= len(destroyed),
            f"the daemon logged {destroyed_logged} lifecycle destructions (>= {len(destroyed)} seen)")

    c.section("rotations")
    for a in ALGORITHMS:
        mine = [k for k in new_kids if alg_of.get(k) == a]
        c.check(len(mine) >= MIN_NEW_KIDS_PER_ALG, f"{a}: {len(mine)} new keys during the run "
                f"(>= {MIN_NEW_KIDS_PER_ALG})")
    automatic = [k for k in new_kids if k not in requested]
    auto_logged = len(re.findall(r"key generated by automatic rotation", log))
    c.check(auto_logged >= len(automatic), f"the daemon logged {auto_logged} automatic rotations "
            f"(>= the {len(automatic)} new keys not requested)")

    # The summary.
    conflicts = sum(1 for _, s, _, _ in answers if s == 409)
    print("-- summary")
    print(f"  tokens issued: " + ", ".join(f"{a} {per_alg[a]}" for a in ALGORITHMS)
          + f"; admin tokens minted {sum(1 for t in tokens if t.source == 'admin')}")
    print(f"  verifications: {run.verify_count} fresh at /token/verify, {run.reverify_count} re-verifications "
          f"({run.reverify_expired} past exp + leeway), {rp['verified']} local by the relying party")
    for a in ALGORITHMS:
        kids = [k for k in sorted(set(alg_of)) if alg_of[k] == a and k in seen]
        print(f"  {a}: {len(kids)} distinct kids ({len([k for k in kids if k in initial_kids])} at start, "
              f"{len([k for k in kids if k in new_kids and k not in requested])} automatic, "
              f"{len([k for k in kids if k in requested])} requested), "
              f"{len([k for k in destroyed if alg_of.get(k) == a])} destroyed")
    print(f"  POST /admin/rotate-keys: " + ", ".join(f"+{w:.1f} s {s}" for w, s, _, _ in answers)
          + f" ({conflicts} x 409)")
    print(f"  relying party: {rp['fetch']} JWKS requests ({rp['200']} x 200, {rp['304']} x 304), "
          f"max-ages seen {dict(sorted(rp['max_ages'].items()))}")
    print(f"  observer: {len(polls)} JWKS polls; HTTP statuses {dict(sorted(run.statuses.items()))}")


def run_test(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    try:
        import jwt  # PyJWT
    except ImportError as e:
        raise Skip(f"PyJWT is missing ({e}); apt-get install python3-jwt")
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_rotation_load: FAILED: {build_dir}/{exe} is not built")
            return False
    global SLACK
    SLACK = header_constant(source_dir, "KEYSTATE_PUBLISH_SLACK")

    c = Checker("test_rotation_load")
    work = Workdir("hsmjwt-rotload-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-rotload")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"), {
        "HSMJWT_PUBLISH_AHEAD": str(PUBLISH_AHEAD),
        "HSMJWT_ROTATION_PERIOD": str(ROTATION_PERIOD),
        "HSMJWT_MAX_TTL": str(MAX_TTL),
        "HSMJWT_ACCESS_TTL": str(ACCESS_TTL),
        # Every configured lifetime must fit in max_ttl.
        "HSMJWT_REFRESH_TTL": str(MAX_TTL),
        "HSMJWT_ID_TTL": str(MAX_TTL),
        "HSMJWT_PARENT_TTL": str(MAX_TTL),
        "HSMJWT_CHILD_TTL": str(ACCESS_TTL),
        "HSMJWT_RENEW_BEFORE": "5",
        "HSMJWT_LEEWAY": str(LEEWAY),
        "HSMJWT_WORKERS": "2",
    })
    run = Run()

    def body():
        c.section("start")
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} (pid {daemon.proc.pid})")
        mint_admin(daemon, run)
        initial_kids = set(k["kid"] for k in daemon.jwks()["keys"])
        print(f"  keys at start: {len(initial_kids)}")

        c.section(f"load: {WORKERS} workers for {LOAD_MIN:.0f}..{LOAD_MAX:.0f} s, rotation_period {ROTATION_PERIOD} s, "
                  f"publish_ahead {PUBLISH_AHEAD} s, max_ttl {MAX_TTL} s")
        rp = RelyingParty(daemon, run, jwt)
        threads = [threading.Thread(target=guarded(run, f"worker {n}", lambda n=n: worker(daemon, run, n)),
                                    daemon=True) for n in range(WORKERS)]
        watchers = [threading.Thread(target=guarded(run, "re-verifier", lambda: reverifier(daemon, run)), daemon=True),
                    threading.Thread(target=guarded(run, "observer", lambda: observer(daemon, run)), daemon=True)]
        rp_thread = threading.Thread(target=guarded(run, "relying party", rp.loop), daemon=True)
        for t in watchers + [rp_thread] + threads:
            t.start()
        answers = []
        start = time.monotonic()
        last_mint = start
        rotations = list(ROTATE_AT)
        enough_at = None
        while not run.stop.is_set() and time.monotonic() - start < LOAD_MAX:
            elapsed = time.monotonic() - start
            if enough_at is None and elapsed >= LOAD_MIN and destroyed_so_far(run) >= MIN_DESTROYED:
                enough_at = elapsed
            if enough_at is not None and elapsed >= enough_at + TAIL:
                break
            if rotations and elapsed >= rotations[0]:
                first = len(answers) == 0
                status = rotate(daemon, run, c, elapsed, answers)
                rotations.pop(0)
                if first and status == 200:
                    # Its next keys wait publish_ahead: asking again while
                    # they are all still next (by the daemon's clock) must be
                    # told a rotation is under way; once one has activated,
                    # a new rotation of its algorithm is due (200).  Judged
                    # by the keys' activate_at, not by how soon it is asked.
                    waiting = [x.get("activate_at") for x in answers[0][2].get("rotated", [])]
                    sent_at = time.time()
                    again = rotate(daemon, run, c, time.monotonic() - start, answers)
                    recv_at = time.time()
                    if waiting and all(isinstance(a, int) for a in waiting):
                        if int(recv_at) < min(waiting):
                            c.equal(again, 409, "a second rotation while the next keys wait answers 409")
                        elif server_second(sent_at) >= min(waiting):
                            c.equal(again, 200, "a second rotation once a next key has activated answers 200")
                        else:
                            c.check(again in (200, 409), "a second rotation asked in the second a next key "
                                    "activates answers 409 or 200", repr(again))
                    else:
                        c.check(False, "the first rotation names each key's activate_at", repr(answers[0][2]))
            if time.monotonic() - last_mint >= ADMIN_REMINT:
                last_mint = time.monotonic()
                mint_admin(daemon, run)
            time.sleep(0.1)
        run.stop.set()
        for t in threads:
            t.join(timeout=JOIN_SECONDS)
        run.workers_done.set()
        rp_thread.join(timeout=DRAIN_SECONDS + JOIN_SECONDS)
        run.observe_stop.set()
        for t in watchers:
            t.join(timeout=JOIN_SECONDS)
        print(f"  load ran {time.monotonic() - start:.1f} s")
        c.check(not any(t.is_alive() for t in threads + watchers + [rp_thread]), "every thread ended")
        health = daemon.request("GET", "/health")
        c.equal(health.status, 200, "/health answers 200 after the load")
        # For a post-mortem (the work directory is kept when a check fails).
        with open(os.path.join(work.path, "observations.json"), "w") as f:
            json.dump({"polls": [[p[0], p[1], sorted(p[2]), p[3]] for p in run.polls], "keys": run.key_info,
                       "keys_first": run.key_first, "rotations": [[w, s, d] for w, s, d, _ in answers]}, f)
        analyse(c, run, initial_kids, answers, daemon.log_text())

    return run_daemon_test(c, work, daemon, body)


if __name__ == "__main__":
    main_with_dirs("test_rotation_load", run_test)
