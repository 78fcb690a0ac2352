#!/usr/bin/python3
"""Crash test of the registry (issue 3): with fsync=always, concurrent
clients issue tokens and revoke them at once while the daemon is killed with
SIGKILL; after each restart on the same state_dir every revocation whose 200
answer was received must still be revoked, and every token whose issue was
acknowledged must exist.

The verdict does not depend on timing: when the kill lands only changes how
many acknowledgements there are to check (and the test waits for a minimum
before killing, so that the count means something).

Usage: test_crash.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import concurrent.futures
import http.client
import os
import random
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import Checker, Daemon, Token, Workdir, main_with_dirs, require_tools, run_daemon_test  # noqa: E402

ALGORITHMS = ["ES256"]
ROUNDS = 3
CLIENTS = 16
KILL_AFTER = (2.0, 4.0)       # seconds of load before the kill, drawn per round
ROUND_LIMIT = 10.0            # the kill comes at the latest this long after the load starts
MIN_ACKED_PER_ROUND = 20      # the kill waits (up to ROUND_LIMIT) for this many acknowledged revocations
MIN_ACKED_TOTAL = 50
TTL = 3600
CHECK_THREADS = 4


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


def run_round(c, daemon, admin, rnd):
    load = Load()
    threads = [threading.Thread(target=client, args=(daemon, admin, n, load), daemon=True) for n in range(CLIENTS)]
    kill_after = random.uniform(*KILL_AFTER)
    start = time.monotonic()
    for t in threads:
        t.start()
    while True:
        elapsed = time.monotonic() - start
        with load.lock:
            acked = len(load.revoked)
        if (elapsed >= kill_after and acked >= MIN_ACKED_PER_ROUND) or elapsed >= ROUND_LIMIT:
            break
        time.sleep(0.02)
    pid = daemon.proc.pid
    sig = daemon.crash()
    load.stop.set()
    for t in threads:
        t.join(timeout=60)
    c.check(not any(t.is_alive() for t in threads), f"round {rnd}: every client thread ended")
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
        print(f"checked {len(revoked)} acknowledged revocations, {lost} lost")
        c.check(len(revoked) >= MIN_ACKED_TOTAL,
                f"enough acknowledged revocations to mean something ({len(revoked)} >= {MIN_ACKED_TOTAL})")

    return run_daemon_test(c, work, daemon, body)


if __name__ == "__main__":
    main_with_dirs("test_crash", run)
