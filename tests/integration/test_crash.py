#!/usr/bin/python3
"""Crash test of the registry (issue 3): with fsync=always, concurrent
clients issue tokens and revoke them at once while the daemon is killed with
SIGKILL; after each restart on the same state_dir every revocation whose 200
answer was received must still be revoked, and every token whose issue was
acknowledged must exist.

Then (issue 8) a mixed workload killed at random points: clients issue
access tokens, revoke them (PATCH and RFC 7009), suspend and resume them,
issue parent/child pairs and revoke parents (the cascade), and rotate
refresh tokens through the refresh_token grant, while the daemon is killed
after a random delay.  The seed is printed (HSMJWT_CRASH_SEED=N replays the
same choices and delays).  After each kill `hsmjwtctl registry check` finds
the file clean or with a torn tail, never corrupt; after each restart
registry_model.py checks every acknowledged state: present, its status what
the clients were told (or either outcome for a change the kill cut), and
the record, the status list entry and /token/verify agreeing.  After the
last SIGTERM the check says clean.

The verdict does not depend on timing: when the kill lands only changes how
many acknowledgements there are to check (and the test waits for a minimum
before killing, so that the count means something).

Usage: test_crash.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import concurrent.futures
import http.client
import os
import random
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Token, Workdir, jwt_parts, main_with_dirs, require_tools,  # noqa: E402
                            run_daemon_test)
from registry_model import Model, check_model  # noqa: E402

ALGORITHMS = ["ES256"]
ROUNDS = 3
CLIENTS = 16
KILL_AFTER = (2.0, 4.0)       # seconds of load before the kill, drawn per round
# The kill waits for the round's minimum of acknowledgements; past this
# deadline (the count never came: the daemon stuck or refusing) it kills
# anyway and the round fails. Generous: it is no verdict on speed.
ROUND_LIMIT = 120.0
MIN_ACKED_PER_ROUND = 20      # acknowledged revocations a round waits for before the kill
TTL = 3600
CHECK_THREADS = 4
MIXED_ROUNDS = 4
MIXED_CLIENTS = 8
MIXED_KILL_AFTER = (0.3, 4.0)  # seconds of mixed load before the kill, drawn from the seed
MIXED_MIN_ACKED = 15           # acknowledged changes a mixed round waits for before the kill


class Load:
    """What the clients of one round were told."""

    def __init__(self):
        self.lock = threading.Lock()
        self.issued = []        # (jti, token): POST /token answered 200 with both
        self.revoked = []       # (jti, token, how): the revocation answered 200
        self.unexpected = []    # complete answers that are not the success ones
        self.cut = 0            # requests that the kill interrupted (not answered)
        self.stop = threading.Event()


def client(daemon, admin, n, load):
    headers = {"Authorization": f"Bearer {admin}"}
    i = 0
    while not load.stop.is_set():
        i += 1
        try:
            r = daemon.request("POST", "/token", {"subject": f"crash-{n}", "expires_in": TTL}, headers,
                               record=False, timeout=30)
        except (OSError, http.client.HTTPException):
            with load.lock:
                load.cut += 1
            time.sleep(0.01)
            continue
        doc = r.json() or {}
        if r.status != 200 or not isinstance(doc.get("access_token"), str) or not isinstance(doc.get("jti"), str):
            with load.lock:
                load.unexpected.append(("POST /token", r.status, r.body[:200]))
            continue
        jti, token = doc["jti"], doc["access_token"]
        with load.lock:
            load.issued.append((jti, token))
        # Alternate the two ways of revoking, so both are crash-tested.
        how = "PATCH" if (n + i) % 2 == 0 else "revoke"
        try:
            if how == "PATCH":
                r = daemon.request("PATCH", f"/tokens/{jti}", {"status": "revoked"}, headers, record=False, timeout=30)
                ok = r.status == 200 and (r.json() or {}).get("status") == "revoked"
            else:
                r = daemon.request("POST", "/token/revoke", {"jti": jti}, headers, record=False, timeout=30)
                ok = r.status == 200 and r.json() == {}
        except (OSError, http.client.HTTPException):
            with load.lock:
                load.cut += 1
            continue
        with load.lock:
            if ok:
                load.revoked.append((jti, token, how))
            else:
                load.unexpected.append((how, r.status, r.body[:200]))


def kill_when_acknowledged(daemon, load, threads, kill_after, min_acked, acked, poll):
    """Starts the load's threads, SIGKILLs hsmjwtd once kill_after seconds
    have passed and acked() (read under load.lock) is at least min_acked (or
    at ROUND_LIMIT, when the count never comes), then stops the load and
    joins its threads: (the daemon's signal, the seconds elapsed, acked() at
    the kill, its pid, every thread ended)."""
    start = time.monotonic()
    for t in threads:
        t.start()
    while True:
        elapsed = time.monotonic() - start
        with load.lock:
            done = acked()
        if (elapsed >= kill_after and done >= min_acked) or elapsed >= ROUND_LIMIT:
            break
        time.sleep(poll)
    pid = daemon.proc.pid
    sig = daemon.crash()
    load.stop.set()
    for t in threads:
        t.join(timeout=60)
    return sig, elapsed, done, pid, not any(t.is_alive() for t in threads)


def run_round(c, daemon, admin, rnd):
    load = Load()
    threads = [threading.Thread(target=client, args=(daemon, admin, n, load), daemon=True) for n in range(CLIENTS)]
    kill_after = random.uniform(*KILL_AFTER)
    sig, elapsed, done, pid, ended = kill_when_acknowledged(daemon, load, threads, kill_after, MIN_ACKED_PER_ROUND,
                                                            lambda: len(load.revoked), 0.02)
    c.check(done >= MIN_ACKED_PER_ROUND,
            f"round {rnd}: the kill came after {done} acknowledged revocations (at least {MIN_ACKED_PER_ROUND})",
            f"still {done} at the {ROUND_LIMIT:.0f} s deadline")
    c.check(ended, f"round {rnd}: every client thread ended")
    c.equal(sig, 9, f"round {rnd}: hsmjwtd (pid {pid}) was killed by SIGKILL after {elapsed:.1f} s")
    print(f"  round {rnd}: {len(load.issued)} issues and {len(load.revoked)} revocations acknowledged, "
          f"{load.cut} requests cut by the kill")
    c.check(not load.unexpected, f"round {rnd}: every complete answer before the kill was a success",
            repr(load.unexpected[:5]))
    return load


def check_one(daemon, admin, jti, token, revoked):
    """(jti, what is wrong) or None."""
    headers = {"Authorization": f"Bearer {admin}"}
    r = daemon.request("GET", f"/tokens/{jti}", headers=headers, record=False)
    status = (r.json() or {}).get("status") if r.status == 200 else None
    if r.status != 200:
        return (jti, f"GET /tokens/{{jti}} answered {r.status}")
    if revoked and status != "revoked":
        return (jti, f"acknowledged revocation lost: GET says {status!r}")
    if not revoked and status not in ("active", "revoked"):
        return (jti, f"GET says {status!r}")
    if revoked:
        r = daemon.request("POST", "/token/verify", {"token": token}, record=False)
        doc = r.json() or {}
        if r.status != 200 or doc.get("valid") is not False or doc.get("error") != "revoked":
            return (jti, f"acknowledged revocation lost: /token/verify says {r.status} {r.body[:100]!r}")
    return None


def check_all(c, daemon, admin, issued, revoked, when):
    revoked_jtis = {jti for jti, _, _ in revoked}
    work = [(jti, tok, True) for jti, tok, _ in revoked] + \
           [(jti, tok, False) for jti, tok in issued if jti not in revoked_jtis]
    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
        problems = [p for p in pool.map(lambda w: check_one(daemon, admin, *w), work) if p is not None]
    lost = [p for p in problems if p[0] in revoked_jtis]
    by_how = {how: sum(1 for _, _, h in revoked if h == how) for how in ("PATCH", "revoke")}
    print(f"  {when}: checked {len(revoked)} acknowledged revocations "
          f"({by_how['PATCH']} by PATCH, {by_how['revoke']} by POST /token/revoke), {len(lost)} lost; "
          f"{len(issued)} acknowledged issues, {len(problems) - len(lost)} missing or wrong")
    c.check(not lost, f"{when}: every one of {len(revoked)} acknowledged revocations is still revoked "
            "(GET /tokens/{jti} and /token/verify)", repr(lost[:5]))
    c.check(not [p for p in problems if p not in lost],
            f"{when}: every one of {len(issued)} acknowledged issues exists (active or revoked)",
            repr([p for p in problems if p not in lost][:5]))
    return len(lost)


def check_list(c, daemon, admin, issued, cut):
    """GET /tokens after the crashes: every acknowledged token once, and
    beyond those at most one per request the kills cut (registered, but the
    answer never arrived)."""
    headers = {"Authorization": f"Bearer {admin}"}
    listed, cursor, pages = [], None, 0
    while pages < 1000:
        path = "/tokens?limit=1000" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        r = daemon.request("GET", path, headers=headers, record=False)
        doc = r.json() or {}
        if r.status != 200:
            c.check(False, f"GET /tokens page {pages + 1} answers 200", f"{r.status} {r.body[:200]!r}")
            return
        listed += [x.get("jti") for x in doc.get("records", [])]
        cursor, pages = doc.get("next_cursor"), pages + 1
        if cursor is None:
            break
    acked = {jti for jti, _ in issued}
    c.check(cursor is None, f"GET /tokens?limit=1000 ends after {pages} pages")
    c.equal(len(listed), len(set(listed)), f"GET /tokens lists each of {len(listed)} records once")
    c.check(acked <= set(listed), f"GET /tokens lists every one of {len(acked)} acknowledged tokens",
            f"{len(acked - set(listed))} missing")
    c.check(len(set(listed) - acked) <= cut,
            f"the {len(set(listed) - acked)} listed tokens never acknowledged are at most the {cut} requests cut")
    r = daemon.request("GET", "/tokens?limit=5000", headers=headers, record=False)
    got = len((r.json() or {}).get("records", []))
    c.equal((r.status, got), (200, min(1000, len(listed))), "GET /tokens?limit=5000 answers one page of at most 1000")


# ---- the mixed workload ----------------------------------------------------


class Mixed:
    """One mixed round's clients and what they were told (into model)."""

    def __init__(self, daemon, admin, model, rnd, seed):
        self.daemon, self.admin, self.model = daemon, admin, model
        self.rnd, self.seed = rnd, seed
        self.lock = threading.Lock()
        self.unexpected = []
        self.cut = 0
        self.acked = 0
        self.stop = threading.Event()

    def call(self, method, path, body):
        """The Response, or None when the kill cut the request."""
        try:
            return self.daemon.request(method, path, body, {"Authorization": f"Bearer {self.admin}"},
                                       record=False, timeout=30)
        except (OSError, http.client.HTTPException):
            with self.lock:
                self.cut += 1
            return None

    def bad(self, what, r):
        with self.lock:
            self.unexpected.append((what, r.status, r.body[:200]))

    def ack(self):
        with self.lock:
            self.acked += 1

    def client(self, n):
        rng = random.Random(f"{self.seed}/{self.rnd}/{n}")
        subject = f"mixed-{self.rnd}-{n}"
        mine = []            # jtis of access tokens and parents this client may change
        refresh = None       # the refresh token this client rotates
        while not self.stop.is_set():
            op = rng.choice(["issue", "issue", "revoke", "suspend", "resume", "pair", "pair-revoke", "refresh"])
            snap = self.model.snapshot()
            single = [j for j in mine if len(snap[j][0]) == 1]
            if op == "issue" or (op in ("revoke", "suspend", "resume") and not single):
                r = self.call("POST", "/token", {"subject": subject, "expires_in": TTL})
                if r is not None and r.status == 200:
                    mine.append(self.model.issued(r.json()["access_token"]))
                    self.ack()
                elif r is not None:
                    self.bad("POST /token", r)
            elif op in ("revoke", "suspend", "resume"):
                want = {"revoke": "revoked", "suspend": "suspended", "resume": "active"}[op]
                fit = [j for j in single if (snap[j][0] == {"active"}) == (op != "resume") and
                       snap[j][0] != {"revoked"}]
                if not fit:
                    continue
                jti = rng.choice(fit)
                if op == "revoke" and rng.random() < 0.5:
                    r = self.call("POST", "/token/revoke", {"jti": jti})
                else:
                    r = self.call("PATCH", f"/tokens/{jti}", {"status": want})
                if r is not None and r.status != 200:
                    self.bad(f"{op} {jti}", r)
                    continue
                self.model.changed(jti, want, r is not None, op if op != "revoke" else "revoke")
                if r is not None:
                    self.ack()
            elif op in ("pair", "pair-revoke"):
                r = self.call("POST", "/token-pairs", {"subject": subject, "include_child": True})
                if r is None:
                    continue
                doc = r.json() or {}
                if r.status != 200 or not isinstance(doc.get("child_token"), str):
                    self.bad("POST /token-pairs", r)
                    continue
                parent = self.model.issued(doc["parent_token"], kind="pair")
                self.model.issued(doc["child_token"], parent=parent, kind="pair")
                self.ack()
                if op == "pair-revoke":
                    r = self.call("POST", "/token/revoke", {"jti": parent})
                    if r is not None and r.status != 200:
                        self.bad(f"revoke parent {parent}", r)
                        continue
                    self.model.changed(parent, "revoked", r is not None, "revoke")
                    if r is not None:
                        self.ack()
                else:
                    mine.append(parent)
            elif op == "refresh":
                if refresh is None:
                    r = self.call("POST", "/token", {"subject": subject, "token_type": "refresh",
                                                     "expires_in": TTL})
                    if r is not None and r.status == 200:
                        refresh = r.json()["refresh_token"]
                        self.model.issued(refresh)
                        self.ack()
                    elif r is not None:
                        self.bad("POST /token (refresh)", r)
                    continue
                old = jwt_parts(refresh)[1]["jti"]
                r = self.call("POST", "/token", {"grant_type": "refresh_token", "refresh_token": refresh})
                if r is None:
                    # Maybe consumed: never used again (reuse would revoke the family).
                    self.model.changed(old, "revoked", False, "refresh")
                    refresh = None
                    continue
                doc = r.json() or {}
                if r.status != 200 or not isinstance(doc.get("refresh_token"), str):
                    self.bad("refresh grant", r)
                    refresh = None
                    continue
                self.model.changed(old, "revoked", True, "refresh")
                self.model.issued(doc["access_token"])
                refresh = doc["refresh_token"]
                self.model.issued(refresh)
                self.ack()


def registry_verdict(daemon):
    """`hsmjwtctl registry check` on the stopped daemon's state_dir: the
    verdict line's words and the exit code."""
    out = daemon.ctl("registry", "check")
    m = re.search(r"^verdict:\s+(.*)$", out.stdout, re.M)
    return (m.group(1) if m else f"no verdict: {out.stdout.strip()} {out.stderr.strip()[-300:]}"), out.returncode


def run_mixed_round(c, daemon, admin, model, rnd, seed):
    load = Mixed(daemon, admin, model, rnd, seed)
    kill_after = random.Random(f"{seed}/{rnd}/kill").uniform(*MIXED_KILL_AFTER)
    threads = [threading.Thread(target=load.client, args=(n,), daemon=True) for n in range(MIXED_CLIENTS)]
    sig, elapsed, done, pid, ended = kill_when_acknowledged(daemon, load, threads, kill_after, MIXED_MIN_ACKED,
                                                            lambda: load.acked, 0.01)
    c.check(done >= MIXED_MIN_ACKED,
            f"mixed round {rnd}: the kill came after {done} acknowledged changes (at least {MIXED_MIN_ACKED})",
            f"still {done} at the {ROUND_LIMIT:.0f} s deadline")
    c.check(ended, f"mixed round {rnd}: every client thread ended")
    c.equal(sig, 9, f"mixed round {rnd}: hsmjwtd (pid {pid}) was killed by SIGKILL after {elapsed:.2f} s "
            f"(drawn {kill_after:.2f} s)")
    print(f"  mixed round {rnd}: {load.acked} changes acknowledged, {load.cut} requests cut by the kill")
    c.check(not load.unexpected, f"mixed round {rnd}: every complete answer before the kill was a success",
            repr(load.unexpected[:5]))
    verdict, code = registry_verdict(daemon)
    c.check((verdict == "clean" and code == 0) or verdict.startswith("torn tail"),
            f"mixed round {rnd}: after the kill, registry check finds the file clean or with a torn tail",
            f"{verdict} (exit {code})")


def mixed(c, daemon, admin):
    seed = int(os.environ.get("HSMJWT_CRASH_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"  mixed workload seed {seed} (replay: HSMJWT_CRASH_SEED={seed})")
    model = Model()
    for rnd in range(1, MIXED_ROUNDS + 1):
        c.section(f"mixed round {rnd}: {MIXED_CLIENTS} clients issue, revoke, suspend, resume, pair, refresh; "
                  "SIGKILL")
        daemon.start(keep_port=True)
        if rnd > 1:
            check_model(c, daemon, admin, model, f"mixed: after restart {rnd - 1}")
        run_mixed_round(c, daemon, admin, model, rnd, seed)
    c.section("mixed: final restart, check, SIGTERM")
    daemon.start(keep_port=True)
    check_model(c, daemon, admin, model, f"mixed: after restart {MIXED_ROUNDS}")
    c.check(model.acked["suspend"] > 0 and model.acked["pair"] > 0 and model.acked["refresh"] > 0 and
            model.acked["revoke"] > 0, "mixed: every kind of change was acknowledged at least once",
            repr(model.acked))
    pid = daemon.proc.pid
    c.equal(daemon.stop(), 0, f"mixed: hsmjwtd (pid {pid}) exits 0 on SIGTERM")
    verdict, code = registry_verdict(daemon)
    c.equal((verdict, code), ("clean", 0), "mixed: after SIGTERM, registry check says clean")


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_crash: FAILED: {build_dir}/{exe} is not built")
            return False

    c = Checker("test_crash")
    work = Workdir("hsmjwt-crash-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-crash")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"),
                    {"HSMJWT_FSYNC": "always", "HSMJWT_LOG_LEVEL": "warn"})

    def body():
        issued, revoked, cut = [], [], 0
        c.section("start")
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} (pid {daemon.proc.pid})")
        admin = daemon.mint("admin", ttl=TTL)
        for rnd in range(1, ROUNDS + 1):
            c.section(f"round {rnd}: {CLIENTS} clients issue and revoke, then SIGKILL")
            if rnd > 1:
                daemon.start(keep_port=True)
                check_all(c, daemon, admin, issued, revoked, f"after restart {rnd - 1}")
            load = run_round(c, daemon, admin, rnd)
            issued += load.issued
            revoked += load.revoked
            cut += load.cut
        c.section("final restart")
        daemon.start(keep_port=True)
        health = daemon.request("GET", "/health").json() or {}
        c.equal(health.get("registry"), "ok", "/health says registry ok after the last crash")
        # Cumulative: every acknowledgement of every round, after the last crash.
        lost = check_all(c, daemon, admin, issued, revoked, f"after restart {ROUNDS}")
        c.equal(len({jti for jti, _ in issued}), len(issued), "every acknowledged jti is distinct")
        check_list(c, daemon, admin, issued, cut)
        # Enough to mean something: each round's kill waited for its
        # minimum (checked per round), however long the load took.
        print(f"checked {len(revoked)} acknowledged revocations, {lost} lost")
        c.section("mixed workload")
        pid = daemon.proc.pid
        c.equal(daemon.stop(), 0, f"hsmjwtd (pid {pid}) exits 0 on SIGTERM before the mixed rounds")
        mixed(c, daemon, admin)

    return run_daemon_test(c, work, daemon, body)


if __name__ == "__main__":
    main_with_dirs("test_crash", run)
