#!/usr/bin/python3
"""integration.faults: hsmjwtd degrades and recovers with the same PID (SPEC
§4: 503 hsm_unavailable with Retry-After, /health; §8: HSM faults).

One daemon (algorithms ES256 and HS256, two workers) is started once on
libfaultp11.so (tests/faultp11/faultp11.c) in front of a throwaway SoftHSM
token, and the test rewrites the module's control file under it:

  1. baseline: an ES256 and an HS256 token issued and verified;
  2. error CKR_DEVICE_ERROR / CKR_SESSION_HANDLE_INVALID / CKR_TOKEN_NOT_PRESENT /
     CKR_USER_NOT_LOGGED_IN / CKR_DEVICE_REMOVED, then close-sessions and
     logout (one-shot): POST /token answers 503 hsm_unavailable with
     Retry-After (the request that discovers the fault too), /health 503
     degraded, the baseline ES256 token still verifies (cached public keys),
     the HS256 one gets 503 (it verifies in the token), the JWKS keeps its
     keys; cleared, issuance recovers within 30 s and the log says
     "recovered";
  3. hang-sign and 4. hang: a POST /token held inside the module; within
     30 s (the watchdog marks a hung token failed after 5 s) /health on a
     new connection answers 503 degraded, and from then on POST /token on a
     new connection answers 503 without entering the module — answered
     while the module still holds every call, and its `hangs' count does
     not move while they are served (probes that land on the held worker
     wait in its accept queue and are answered once the fault is cleared);
     cleared, the held request completes and issuance recovers;
  5. a POST /token held in C_Sign (hang-sign) when the token goes (error
     CKR_DEVICE_REMOVED releases it into that error): the held request
     answers 503 hsm_unavailable, nothing is registered for it (GET
     /tokens?subject=), the same PID, recovery once cleared;
  6. a second daemon on plain SoftHSM: the token's directory moved away
     while it runs (SoftHSM then finds no objects at all): 503, /health
     degraded, the JWKS keeps every key through the keyring's next looks
     at the token (polls and recovery attempts, counted by
     hsmjwt_hsm_operations_total: finds and recovers), an earlier token
     still verifies; moved back: recovery, the same kids.
Throughout: the same PID per daemon, never a 500, a clean exit on SIGTERM,
and no token in either log.  Recovery times are printed, never judged
(ctest's TIMEOUT catches a hang).

Usage: test_faults.py BUILD_DIR SOURCE_DIR FAULT_MODULE SOFTHSM_MODULE
       (exit 0 pass, 1 fail, 77 skip: FAULT_MODULE empty, no fault module
       in this build)
"""

import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Skip, Token, Workdir, faultp11_command, faultp11_stat,  # noqa: E402
                            jwt_parts, main_with_fault_module, require_tools)

ALGORITHMS = ["ES256", "HS256"]
AUDIENCE = "api-faults"
TTL = 600
HTTP_TIMEOUT = 10.0       # a request that nothing should hold
POLL = 0.2
RECOVERY_LIMIT = 30.0     # backoff caps at 8 s (keyring.h)
HANG_WITHIN = 30.0        # the watchdog marks a hung token failed after 5 s
HOLD_SEEN_WITHIN = 10.0   # for the module to report the held call
BLOCKED_LIMIT = 30.0      # the held request completes this soon after clearing
HOLD = 3.0                # an error fault is kept this long (recovery fails meanwhile)
HOLD_LONG = 10.0          # the first one longer: the backoff reaches its 8 s cap
PROBE_TIMEOUT = HANG_WITHIN + BLOCKED_LIMIT + 30   # a probe held by the busy worker waits for the clearing
KEYRING_LOOKS = 4         # finds and recovers: a poll is up to two finds (sync, load), the last one unpublished
TOKEN_IN_LOG = re.compile(r"eyJ[A-Za-z0-9_\-.]{38,}")

ERROR_FAULTS = ["CKR_DEVICE_ERROR", "CKR_SESSION_HANDLE_INVALID", "CKR_TOKEN_NOT_PRESENT",
                "CKR_USER_NOT_LOGGED_IN", "CKR_DEVICE_REMOVED"]
ONE_SHOT_FAULTS = ["close-sessions", "logout"]


class Faults:
    def __init__(self, c, work, token, daemon, control, stats):
        self.c = c
        self.work = work
        self.token = token
        self.daemon = daemon
        self.control = control
        self.stats = stats
        self.pid = None
        self.admin = None
        self.base = {}          # alg → baseline token
        self.kids = None        # baseline JWKS kids
        self.seen = []          # (phase, method, path, status) of every answer
        self.phase = "start"
        self.recoveries = []    # (phase, seconds after clearing, seconds after the fault)
        self.threads = []
        self.started = time.monotonic()
        self.moved = None       # (away, home) while the token directory is moved

    # ---- the fault module ----------------------------------------------

    def command(self, text):
        faultp11_command(self.control, text + "\n")

    def stat(self, name):
        return faultp11_stat(self.stats, name)

    # ---- HTTP ----------------------------------------------------------

    def call(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT, daemon=None):
        """(response or None, seconds, exception text or None); every answer is
        remembered for the final 5xx scan."""
        d = daemon or self.daemon
        t0 = time.monotonic()
        try:
            r = d.request(method, path, body, headers, timeout=timeout)
        except OSError as e:
            return None, time.monotonic() - t0, f"{type(e).__name__}: {e}"
        self.seen.append((self.phase, method, path, r.status))
        return r, time.monotonic() - t0, None

    def issue(self, alg, timeout=HTTP_TIMEOUT, daemon=None):
        body = {"subject": f"fault-{alg}", "audience": AUDIENCE, "expires_in": TTL, "alg": alg}
        return self.call("POST", "/token", body, {"Authorization": f"Bearer {self.admin}"}, timeout, daemon)

    def verify(self, token, daemon=None):
        return self.call("POST", "/token/verify", {"token": token, "audience": AUDIENCE}, daemon=daemon)[0]

    def health(self, timeout=HTTP_TIMEOUT, daemon=None):
        return self.call("GET", "/health", timeout=timeout, daemon=daemon)

    def jwks_kids(self, daemon=None):
        r = self.call("GET", "/.well-known/jwks.json", daemon=daemon)[0]
        if r is None or r.status != 200:
            return None
        return sorted(k.get("kid") for k in (r.json() or {}).get("keys", []))

    # ---- what an answer must be ----------------------------------------

    @staticmethod
    def describe(r, err=None):
        if r is None:
            return f"no answer ({err})"
        return f"{r.status} {r.body[:200]!r}"

    @staticmethod
    def is_unavailable(r):
        return (r is not None and r.status == 503 and (r.json() or {}).get("error") == "hsm_unavailable" and
                r.header("Retry-After") is not None)

    @staticmethod
    def is_degraded(r):
        doc = (r.json() or {}) if r is not None else {}
        return r is not None and r.status == 503 and (doc.get("status"), doc.get("hsm")) == ("degraded", "unavailable")

    @staticmethod
    def is_ok_health(r):
        doc = (r.json() or {}) if r is not None else {}
        return r is not None and r.status == 200 and (doc.get("status"), doc.get("hsm")) == ("ok", "ok")

    @staticmethod
    def token_of(r):
        if r is None or r.status != 200:
            return None
        t = (r.json() or {}).get("access_token")
        return t if isinstance(t, str) and t.count(".") == 2 else None

    def valid(self, token, daemon=None):
        r = self.verify(token, daemon)
        return r is not None and r.status == 200 and (r.json() or {}).get("valid") is True, r

    def token_looks(self, daemon):
        """The keyring's looks at the token so far: the finds (a poll's key
        load) and recovery attempts hsmjwt_hsm_operations_total counts,
        whatever their result."""
        r = self.call("GET", "/metrics", daemon=daemon)[0]
        if r is None or r.status != 200:
            raise RuntimeError(f"GET /metrics answered {self.describe(r)}")
        pattern = r'^hsmjwt_hsm_operations_total\{[^}]*op="(?:find|recover)"[^}]*\} (\S+)$'
        return sum(float(v) for v in re.findall(pattern, r.body.decode(), re.M))

    def log_mark(self, daemon=None):
        d = daemon or self.daemon
        return os.path.getsize(d.log_path) if os.path.exists(d.log_path) else 0

    def log_since(self, mark, daemon=None):
        d = daemon or self.daemon
        with open(d.log_path, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def recovered_since(self, mark, daemon=None):
        """The log's recovery line since mark, or None.  The line that marks
        the token failed says "until it is recovered": not that one."""
        for line in self.log_since(mark, daemon).splitlines():
            if "recovered" in line and "until it is recovered" not in line:
                return line
        return None

    def failure_reasons(self, mark, daemon=None):
        """The reason= of every line since mark that marks the token failed."""
        return re.findall(r'"token failed[^"]*".* reason=(\S+)', self.log_since(mark, daemon))

    def same_pid(self, what, daemon=None, pid=None):
        d = daemon or self.daemon
        want = pid if pid is not None else self.pid
        alive = d.proc is not None and d.proc.poll() is None
        self.c.check(alive and d.proc.pid == want, f"{what}: hsmjwtd still runs with pid {want}",
                     "exited with " + str(d.proc.poll()) if d.proc is not None and not alive else
                     f"pid {d.proc.pid if d.proc else None}")

    # ---- phases --------------------------------------------------------

    def baseline(self):
        c = self.c
        self.phase = "baseline"
        c.section("baseline")
        self.pid = self.daemon.proc.pid
        c.check(True, f"hsmjwtd is healthy on {self.daemon.issuer} (pid {self.pid}) behind libfaultp11.so")
        c.check("faultp11: forwarding to" in self.daemon.log_text(),
                "the daemon loaded the fault module (its stderr line is in the log)")
        self.admin = self.daemon.mint("admin")
        c.equal(jwt_parts(self.admin)[0].get("alg"), "ES256",
                "the minted admin token is ES256 (verifies from cached public keys while the token is down)")
        r, _, err = self.health()
        c.check(self.is_ok_health(r), "/health 200 ok", self.describe(r, err))
        self.kids = self.jwks_kids()
        c.check(bool(self.kids), "the JWKS publishes keys", repr(self.kids))
        for alg in ALGORITHMS:
            r, _, err = self.issue(alg)
            t = self.token_of(r)
            if not c.check(t is not None, f"{alg}: POST /token answers 200", self.describe(r, err)):
                continue
            c.equal(jwt_parts(t)[0].get("alg"), alg, f"{alg}: the token's header says {alg}")
            ok, v = self.valid(t)
            c.check(ok, f"{alg}: the token verifies valid", self.describe(v))
            self.base[alg] = t
        self.same_pid("baseline")
        return len(self.base) == len(ALGORITHMS) and bool(self.kids)

    def during_fault(self, name, one_shot, mark):
        """The checks while the fault holds (error-*) or right after it fired
        (one-shot: there recovery may already have happened, and the log says
        so)."""
        c = self.c
        r, took, err = self.issue("ES256")
        if one_shot:
            already = self.recovered_since(mark)
            c.check(self.is_unavailable(r) or (r is not None and r.status == 200 and already),
                    f"{name}: the first POST /token answers 503 hsm_unavailable with Retry-After "
                    "(or 200 after a recovery the log already shows)",
                    self.describe(r, err))
            if r is not None and r.status == 200:
                print(f"  note: {name} fired on the keyring's own call and recovery came first")
        else:
            c.check(self.is_unavailable(r), f"{name}: the first POST /token (it may discover the fault) answers "
                    "503 hsm_unavailable with Retry-After", self.describe(r, err))
            slow = [took]
            for alg in ("HS256", "ES256", "ES256"):
                r, took, err = self.issue(alg)
                slow.append(took)
                c.check(self.is_unavailable(r), f"{name}: POST /token ({alg}) again answers 503 hsm_unavailable "
                        "with Retry-After", self.describe(r, err))
            print(f"  the 503s took at most {max(slow):.3f} s")

        h, _, err = self.health()
        if one_shot:
            c.check(self.is_degraded(h) or (self.is_ok_health(h) and self.recovered_since(mark)),
                    f"{name}: /health 503 {{status: degraded, hsm: unavailable}} (or ok after a logged recovery)",
                    self.describe(h, err))
        else:
            c.check(self.is_degraded(h), f"{name}: /health 503 {{status: degraded, hsm: unavailable}}",
                    self.describe(h, err))
            # Why, as the log's line marking the token failed says it (read
            # after /health: the line follows the mark by microseconds).
            failure = ((h.json() or {}) if h is not None else {}).get("hsm_failure")
            reasons = self.failure_reasons(mark)
            c.check(failure is not None and failure in reasons and failure != "pin_rejected",
                    f"{name}: /health names the failure the log gives (hsm_failure {failure!r})",
                    f"log reasons {reasons}")

        ok, v = self.valid(self.base["ES256"])
        c.check(ok, f"{name}: the baseline ES256 token still verifies valid (cached public keys)", self.describe(v))
        v = self.verify(self.base["HS256"])
        if one_shot:
            c.check(self.is_unavailable(v) or (v is not None and v.status == 200 and
                                               (v.json() or {}).get("valid") is True),
                    f"{name}: the baseline HS256 token gets 503 hsm_unavailable from /token/verify "
                    "(or valid after the recovery)", self.describe(v))
        else:
            c.check(self.is_unavailable(v), f"{name}: the baseline HS256 token gets 503 hsm_unavailable with "
                    "Retry-After from /token/verify (it verifies in the token)", self.describe(v))
        kids = self.jwks_kids()
        c.equal(kids, self.kids, f"{name}: the JWKS still serves the same keys")

    def hold(self, name, seconds):
        """Keeps the fault for seconds, so that the keyring's recovery fails
        again and again (its backoff grows, to the 8 s cap for the longest
        hold) and its own polls hit the fault too: everything stays 503."""
        wrong, n = [], 0
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            r, _, err = self.issue("ES256")
            h, _, herr = self.health()
            n += 1
            if not self.is_unavailable(r):
                wrong.append(f"POST /token: {self.describe(r, err)}")
            if not self.is_degraded(h):
                wrong.append(f"GET /health: {self.describe(h, herr)}")
            time.sleep(0.5)
        self.c.check(not wrong, f"{name}: held {seconds:.0f} s, POST /token stays 503 hsm_unavailable and /health "
                     f"degraded ({n} rounds)", "; ".join(wrong[:3]))

    def recover(self, name, mark, cleared_at, fault_at, daemon=None):
        """Polls POST /token every 200 ms until 200 (at most 30 s), then checks
        the new tokens, /health and the log's recovery line."""
        c = self.c
        d = daemon or self.daemon
        deadline = cleared_at + RECOVERY_LIMIT
        t, last, others = None, None, []
        while time.monotonic() < deadline:
            r, _, err = self.issue("ES256", timeout=5, daemon=d)
            last = self.describe(r, err)
            t = self.token_of(r)
            if t is not None:
                break
            if not self.is_unavailable(r):
                others.append(last)
            time.sleep(POLL)
        done = time.monotonic()
        if not c.check(t is not None, f"{name}: cleared, POST /token answers 200 within {RECOVERY_LIMIT:.0f} s",
                       f"last: {last}"):
            return False
        after_clear, after_fault = done - cleared_at, done - fault_at
        self.recoveries.append((name, after_clear, after_fault))
        print(f"  {name}: issuance recovered {after_clear:.2f} s after clearing ({after_fault:.2f} s after the fault)")
        c.check(not others, f"{name}: every answer before the recovery was 503 hsm_unavailable",
                "; ".join(others[:3]))
        ok, v = self.valid(t, d)
        c.check(ok, f"{name}: the new ES256 token verifies valid", self.describe(v))
        r, _, err = self.issue("HS256", daemon=d)
        ht = self.token_of(r)
        if c.check(ht is not None, f"{name}: POST /token HS256 answers 200", self.describe(r, err)):
            ok, v = self.valid(ht, d)
            c.check(ok, f"{name}: the new HS256 token verifies valid (in the token, new handles)", self.describe(v))
        ok, v = self.valid(self.base["HS256"], d)
        c.check(ok, f"{name}: the baseline HS256 token verifies valid again", self.describe(v))
        h, _, err = self.health(daemon=d)
        c.check(self.is_ok_health(h), f"{name}: /health 200 {{status: ok}}", self.describe(h, err))
        line = self.recovered_since(mark, d)
        if c.check(line is not None, f"{name}: the log has a recovery line (\"recovered\")",
                   self.log_since(mark, d)[-1500:]):
            print(f"  log: {line.strip()[:200]}")
        return True

    def fault_phase(self, name, one_shot, hold=0.0):
        c = self.c
        self.phase = name
        c.section(name)
        mark = self.log_mark()
        actions = self.stat("actions") or 0
        fault_at = time.monotonic()
        self.command(name)
        self.during_fault(name, one_shot, mark)
        if one_shot:
            c.check((self.stat("actions") or 0) > actions, f"{name}: the module ran the action (stats)",
                    f"actions {self.stat('actions')}, was {actions}")
            reasons = self.failure_reasons(mark)
            c.check(reasons, f"{name}: the log marks the token failed", self.log_since(mark)[-1500:])
            print(f"  {name}: the token was marked failed for {reasons}")
        else:
            self.hold(name, hold)
            c.equal(self.stat("command"), name, f"{name}: the module still holds the fault (stats)")
            code = name.split()[1]
            reasons = self.failure_reasons(mark)
            c.check(code in reasons, f"{name}: the log marks the token failed naming {code}", repr(reasons))
        self.command("forward")
        self.recover(name, mark, time.monotonic(), fault_at)
        self.same_pid(name)

    def hang_phase(self, name):
        c = self.c
        self.phase = name
        c.section(name)
        mark = self.log_mark()
        held = {}

        def held_request():
            r, took, err = self.issue("ES256", timeout=BLOCKED_LIMIT + HANG_WITHIN + 30)
            held.update(response=r, took=took, err=err, at=time.monotonic())

        fault_at = time.monotonic()
        self.command(name)
        th = threading.Thread(target=held_request, name=f"held-{name}", daemon=True)
        self.threads.append(th)
        th.start()
        deadline = fault_at + HOLD_SEEN_WITHIN
        while (self.stat("hanging") or 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        c.check((self.stat("hanging") or 0) >= 1 and th.is_alive(),
                f"{name}: the module holds a call and the background POST /token has no answer",
                f"hanging {self.stat('hanging')}, answered {held}")

        # Probes on new connections, each in its own thread: SO_REUSEPORT
        # hashes each connection to one worker's socket, and those hashed to
        # the held worker wait in its accept queue until the fault is
        # cleared, so probing one at a time could wait there all along.
        # /health first: it never calls into the module, while a POST /token
        # that reached the other worker before the watchdog fired would be
        # held there too.  A probe's answer is judged by when it came: before
        # the fault was cleared (the module then holds every call it takes),
        # or after.
        probes, threads = [], []

        def probe(kind):
            if kind == "health":
                r, took, err = self.health(timeout=PROBE_TIMEOUT)
            else:
                r, took, err = self.issue("ES256", timeout=PROBE_TIMEOUT)
            probes.append((kind, r, took, err, time.monotonic()))

        def first(kind, good, before=None):
            times = [at for k, r, _, _, at in list(probes)
                     if k == kind and good(r) and (before is None or at < before)]
            return min(times) if times else None

        deadline = fault_at + HANG_WITHIN
        degraded_at = unavailable_at = None
        hangs_before = None
        while time.monotonic() < deadline and (degraded_at is None or unavailable_at is None):
            degraded_at = first("health", self.is_degraded)
            unavailable_at = first("token", self.is_unavailable)
            if degraded_at is not None and hangs_before is None:
                # The token is marked failed: from now on nothing may enter
                # the module (a recovery waits for the held call to leave),
                # so each call that does is one more hang.
                hangs_before = self.stat("hangs")
            kinds = ["health"] + (["token"] if hangs_before is not None else [])
            for kind in kinds:
                t = threading.Thread(target=probe, args=(kind,), name=f"probe-{kind}", daemon=True)
                threads.append(t)
                t.start()
            time.sleep(0.3)
        hangs_after, hanging = self.stat("hangs"), self.stat("hanging")
        refused_503 = sum(1 for k, r, *_ in list(probes) if k == "token" and self.is_unavailable(r))
        c.check(hangs_before is not None and hangs_after == hangs_before and (hanging or 0) >= 1,
                f"{name}: the POST /token 503 answers on new connections ({refused_503}) never entered the module "
                f"(libfaultp11 counted {hangs_before} hung calls when /health first said degraded, {hangs_after} "
                f"after them, {hanging} held now)")
        c.check(th.is_alive(), f"{name}: the background POST /token is still held", repr(held))
        reasons = self.failure_reasons(mark)
        c.check("hung" in reasons, f"{name}: the log marks the token failed as hung (the watchdog)", repr(reasons))
        self.same_pid(f"{name} (held)")

        forward_at = time.monotonic()   # every answer before this came while the module held its calls
        self.command("forward")
        cleared_at = time.monotonic()
        th.join(BLOCKED_LIMIT)
        if c.check(not th.is_alive() and held.get("response") is not None,
                   f"{name}: cleared, the held POST /token completes within {BLOCKED_LIMIT:.0f} s", repr(held)):
            r = held["response"]
            print(f"  {name}: the held request answered {r.status} {held['at'] - cleared_at:.2f} s after clearing")
            c.check(r.status in (200, 503), f"{name}: the held request answers 200 or 503 (never 500)",
                    self.describe(r))
            if r.status == 503:
                c.check(self.is_unavailable(r), f"{name}: the held request's 503 is hsm_unavailable",
                        self.describe(r))
        # The probes the held worker queued are answered now.
        until = cleared_at + BLOCKED_LIMIT
        for t in threads:
            t.join(max(0.0, until - time.monotonic()))
        c.check(not any(t.is_alive() for t in threads), f"{name}: every probe has ended, once cleared")
        degraded_at = first("health", self.is_degraded, forward_at)
        unavailable_at = first("token", self.is_unavailable, forward_at)
        answered = [(k, r.status, round(at - fault_at, 2)) for k, r, _, _, at in probes if r is not None]
        early = [p for p in probes if p[4] < forward_at]
        late = [p for p in probes if p[4] >= forward_at]
        failed = [f"{k}: {self.describe(r, err)}" for k, r, _, err, _ in probes if r is None]
        wrong = [f"{k}: {self.describe(r)} at {at - fault_at:.2f} s" for k, r, _, _, at in early if r is not None and
                 not (self.is_degraded(r) or self.is_ok_health(r) if k == "health" else self.is_unavailable(r))]
        wrong_late = [f"{k}: {self.describe(r)}" for k, r, _, _, _ in late if r is not None and
                      not (self.is_degraded(r) or self.is_ok_health(r) if k == "health" else
                           self.is_unavailable(r) or self.token_of(r) is not None)]
        c.check(not failed, f"{name}: every probe was answered", "; ".join(failed[:3]))
        c.check(not wrong, f"{name}: every answer on a new connection while the module held its calls is /health ok "
                "or degraded, or POST /token 503 hsm_unavailable", "; ".join(wrong[:3]))
        c.check(not wrong_late, f"{name}: the probes answered after the clearing (queued by the held worker) are "
                "/health ok or degraded, POST /token 200 or 503 hsm_unavailable", "; ".join(wrong_late[:3]))
        c.check(degraded_at is not None and degraded_at <= deadline,
                f"{name}: /health 503 degraded within {HANG_WITHIN:.0f} s of the fault", f"answers {answered[-5:]}")
        c.check(unavailable_at is not None,
                f"{name}: a POST /token on a new connection answers 503 hsm_unavailable while the module holds "
                "its calls", f"answers {answered[-5:]}")
        if degraded_at is not None:
            print(f"  {name}: /health degraded {degraded_at - fault_at:.2f} s after the fault" +
                  (f", POST /token 503 {unavailable_at - fault_at:.2f} s after" if unavailable_at else "") +
                  f"; {len(early)} probes answered before the clearing, {len(late)} after (queued by the busy "
                  "worker)")
        self.recover(name, mark, cleared_at, fault_at)
        self.same_pid(name)

    def records_of(self, subject):
        """The registry's records of subject (GET /tokens), or None."""
        r, _, err = self.call("GET", f"/tokens?subject={subject}&limit=100",
                              headers={"Authorization": f"Bearer {self.admin}"})
        if r is None or r.status != 200:
            return None
        return (r.json() or {}).get("records")

    def removed_in_flight_phase(self):
        """A POST /token held inside C_Sign (hang-sign) when the token goes
        (error CKR_DEVICE_REMOVED, which also releases the held call into
        that error): the held request answers 503 hsm_unavailable, nothing
        is registered for it, the daemon lives on and recovers."""
        c = self.c
        name = "token removed while a sign is in flight"
        subject = "held-while-removed"
        self.phase = name
        c.section(name)
        mark = self.log_mark()
        c.equal(self.records_of(subject), [], f"{name}: no record of the held request's subject yet")
        held = {}

        def held_request():
            body = {"subject": subject, "audience": AUDIENCE, "expires_in": TTL, "alg": "ES256"}
            r, took, err = self.call("POST", "/token", body, {"Authorization": f"Bearer {self.admin}"},
                                     timeout=BLOCKED_LIMIT + HANG_WITHIN + 30)
            held.update(response=r, took=took, err=err)

        fault_at = time.monotonic()
        self.command("hang-sign")
        th = threading.Thread(target=held_request, name="held-removed", daemon=True)
        self.threads.append(th)
        th.start()
        deadline = fault_at + HOLD_SEEN_WITHIN
        while (self.stat("hanging") or 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        c.check((self.stat("hanging") or 0) >= 1 and th.is_alive(),
                f"{name}: the module holds the POST /token's sign call", f"hanging {self.stat('hanging')}, {held}")
        self.command("error CKR_DEVICE_REMOVED")
        th.join(BLOCKED_LIMIT)
        r = held.get("response")
        c.check(not th.is_alive() and self.is_unavailable(r),
                f"{name}: the held request answers 503 hsm_unavailable with Retry-After",
                self.describe(r, held.get("err")) if held else "no answer yet")
        c.equal(self.stat("hanging"), 0, f"{name}: the module holds no call any more")
        c.equal(self.records_of(subject), [], f"{name}: nothing is registered for the held request")
        self.same_pid(f"{name} (removed)")
        self.hold(name, HOLD)
        self.command("forward")
        self.recover(name, mark, time.monotonic(), fault_at)
        c.equal(self.records_of(subject), [], f"{name}: after the recovery still no record for the held request")
        r, _, err = self.call("POST", "/token", {"subject": subject, "audience": AUDIENCE, "expires_in": TTL},
                              {"Authorization": f"Bearer {self.admin}"})
        c.check(self.token_of(r) is not None, f"{name}: recovered, POST /token for that subject answers 200",
                self.describe(r, err))
        recs = self.records_of(subject) or []
        c.equal([x.get("jti") for x in recs], [(r.json() or {}).get("jti") if r is not None else None],
                f"{name}: the subject has that one record")
        self.same_pid(name)

    def directory_phase(self, d2):
        """The second daemon, on plain SoftHSM: the token directory moved
        out of the tokendir and back."""
        c = self.c
        self.phase = "token directory"
        c.section("token directory moved away (plain SoftHSM, second daemon)")
        pid2 = d2.proc.pid
        c.check(True, f"second hsmjwtd is healthy on {d2.issuer} (pid {pid2}) on plain SoftHSM")
        c.check("faultp11:" not in d2.log_text(), "the second daemon did not load the fault module")
        kids = self.jwks_kids(d2)
        c.equal(kids, self.kids, "the second daemon publishes the same keys")
        r, _, err = self.issue("ES256", daemon=d2)
        earlier = self.token_of(r)
        c.check(earlier is not None, "POST /token ES256 answers 200", self.describe(r, err))
        ok, v = self.valid(self.base["ES256"], d2)
        c.check(ok, "the first daemon's ES256 token verifies valid here", self.describe(v))

        tokens_dir = os.path.join(self.token.state_dir, "tokens")
        subdirs = [e for e in os.listdir(tokens_dir) if os.path.isdir(os.path.join(tokens_dir, e))]
        if not c.equal(len(subdirs), 1, "the tokendir holds one token directory"):
            return
        home = os.path.join(tokens_dir, subdirs[0])
        away = os.path.join(self.work, "token-away")
        mark = self.log_mark(d2)
        os.rename(home, away)
        self.moved = (away, home)
        fault_at = time.monotonic()
        print(f"  moved {home} to {away}")

        # The keyring's looks at the token with the directory gone and
        # nothing else touching it — polls (a find: SoftHSM finds no
        # objects at all, or fails) and, once that marked the token failed,
        # recovery attempts — must not empty the key set.  Counted, not
        # timed: the JWKS is watched until KEYRING_LOOKS have been made
        # (one thread makes them in turn, so everything before the last —
        # a whole poll at least — has been published by then), and read
        # once more after that.
        looks0 = self.token_looks(d2)
        changed, looks = [], 0
        deadline = fault_at + RECOVERY_LIMIT * 2
        while looks < KEYRING_LOOKS and time.monotonic() < deadline:
            k = self.jwks_kids(d2)
            if k != self.kids:
                changed.append(k)
            looks = self.token_looks(d2) - looks0
            time.sleep(0.5)
        k = self.jwks_kids(d2)
        if k != self.kids:
            changed.append(k)
        c.check(looks >= KEYRING_LOOKS, f"the keyring looked at the token {KEYRING_LOOKS} times with the directory "
                "gone (hsmjwt_hsm_operations_total: find and recover)", f"{looks:.0f} in {RECOVERY_LIMIT * 2:.0f} s")
        c.check(not changed, f"JWKS keeps every key through those {looks:.0f} looks", f"served {changed[:3]}")
        h, _, err = self.health(daemon=d2)
        print(f"  before any request: /health {self.describe(h, err)}; token failed for "
              f"{self.failure_reasons(mark, d2)}")

        r, took, err = self.issue("ES256", daemon=d2)
        c.check(self.is_unavailable(r), "POST /token answers 503 hsm_unavailable with Retry-After (not 500)",
                self.describe(r, err))
        for alg in ("HS256", "ES256"):
            r, took, err = self.issue(alg, daemon=d2)
            c.check(self.is_unavailable(r), f"POST /token ({alg}) again answers 503 hsm_unavailable",
                    self.describe(r, err))
        deadline = time.monotonic() + RECOVERY_LIMIT
        while True:
            h, _, err = self.health(daemon=d2)
            if self.is_degraded(h) or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        c.check(self.is_degraded(h), "/health 503 {status: degraded, hsm: unavailable}", self.describe(h, err))
        c.equal(self.jwks_kids(d2), self.kids, "the JWKS still serves the same keys")
        for what, t in (("the earlier ES256 token", earlier), ("the first daemon's ES256 token", self.base["ES256"])):
            if t is not None:
                ok, v = self.valid(t, d2)
                c.check(ok, f"{what} still verifies valid", self.describe(v))
        self.same_pid("directory away", d2, pid2)

        os.rename(away, home)
        self.moved = None
        cleared_at = time.monotonic()
        print(f"  moved it back after {cleared_at - fault_at:.2f} s")
        self.recover("token directory", mark, cleared_at, fault_at, d2)
        c.equal(self.jwks_kids(d2), self.kids, "after the recovery the JWKS has the same kids as before")
        if earlier is not None:
            ok, v = self.valid(earlier, d2)
            c.check(ok, "the earlier ES256 token verifies valid", self.describe(v))
        self.same_pid("token directory", d2, pid2)

    def cleanup(self):
        """Whatever happened: the fault cleared, the directory home, the
        background requests joined (they complete once the fault is gone)."""
        try:
            self.command("forward")
        except OSError:
            pass
        if self.moved is not None:
            os.rename(*self.moved)
            self.moved = None
        threads, self.threads = self.threads, []
        for th in threads:
            th.join(BLOCKED_LIMIT)
            self.c.check(not th.is_alive(), f"{th.name}: the background request has ended")


def stop_daemon(c, d, what):
    if d.proc is None:
        return
    pid = d.proc.pid
    code = d.stop()
    c.equal(code, 0, f"{what} (pid {pid}) exits 0 on SIGTERM (sanitizers find nothing)")


def run(build_dir, source_dir, fault_module, softhsm_module):
    require_tools(["softhsm2-util"])
    if not fault_module:
        raise Skip("this build has no fault module (the faultp11 target is not configured)")
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_faults: FAILED: {build_dir}/{exe} is not built")
            return False
    if not os.path.exists(fault_module):
        print(f"test_faults: FAILED: {fault_module} is not built (cmake --build {build_dir} --target faultp11)")
        return False

    c = Checker("test_faults")
    work = Workdir("hsmjwt-faults-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-faults")
    control = os.path.join(work.path, "control")
    stats = os.path.join(work.path, "stats")
    fault_env = {
        "HSMJWT_PKCS11_MODULE": fault_module,
        "FAULTP11_TARGET": softhsm_module,
        "FAULTP11_CONTROL": control,
        "FAULTP11_STATS": stats,
    }
    d1 = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"), fault_env)
    d2 = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd-plain.log"))
    f = Faults(c, work.path, token, d1, control, stats)
    with open(control, "w") as fp:
        fp.write("forward\n")

    try:
        c.section("start")
        d1.start()
        if f.baseline():
            for i, code in enumerate(ERROR_FAULTS):
                f.fault_phase(f"error {code}", one_shot=False, hold=HOLD_LONG if i == 0 else HOLD)
            for name in ONE_SHOT_FAULTS:
                f.fault_phase(name, one_shot=True)
            for name in ("hang-sign", "hang"):
                f.hang_phase(name)
            f.removed_in_flight_phase()
            f.phase = "stop"
            f.cleanup()
            f.same_pid("after every fault")
            c.section("stop the first daemon")
            stop_daemon(c, d1, "hsmjwtd on the fault module")
            c.section("start the second daemon")
            d2.port = d1.port    # the same issuer: the first daemon's tokens verify here
            d2.start(keep_port=True)
            f.directory_phase(d2)
    except RuntimeError as e:
        c.check(False, "the daemon runs", str(e))
    finally:
        f.cleanup()
        c.section("stop")
        stop_daemon(c, d1, "hsmjwtd on the fault module")
        stop_daemon(c, d2, "hsmjwtd on plain SoftHSM")

    c.section("throughout")
    fivexx = [s for s in f.seen if s[3] >= 500 and s[3] != 503]
    c.check(not fivexx, f"none of {len(f.seen)} answers is a 5xx other than 503", repr(fivexx[:10]))
    logs = [d.log_text() for d in (d1, d2) if os.path.exists(d.log_path)]
    # The daemon's own request lines also cover the probes the test gave up
    # on (answered later, by the worker that was held).
    logged = [m.group(0) for log in logs for m in re.finditer(r'msg="request".*', log)]
    bad = [line for line in logged if not re.search(r" status=([1-4]\d\d|503) ", line)]
    c.check(logged and not bad, f"none of the {len(logged)} request lines in the logs has a 5xx other than 503",
            "; ".join(line[:160] for line in bad[:3]))
    found = [m.group(0)[:12] + "..." for log in logs for m in TOKEN_IN_LOG.finditer(log)]
    c.check(not found, "no token (eyJ..., longer than 40) in either log", f"{len(found)} found: {found[:3]}")
    c.check(not any(token.pin in log for log in logs), "no log contains the PIN")
    if f.recoveries:
        print("-- recovery times (issuance 200 again)")
        for name, after_clear, after_fault in f.recoveries:
            print(f"  {name:34s} {after_clear:6.2f} s after clearing  {after_fault:6.2f} s after the fault")
    print(f"  the test took {time.monotonic() - f.started:.1f} s")
    if c.failed:
        for d in (d1, d2):
            if os.path.exists(d.log_path):
                print(f"-- {os.path.basename(d.log_path)} (sanitizer report or tail)")
                print(d.log_excerpt())
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    main_with_fault_module("test_faults", run)
