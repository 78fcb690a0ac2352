#!/usr/bin/python3
"""Two hsmjwtd replicas on ONE SoftHSM token (same SOFTHSM2_CONF and token,
each with its own state_dir and port) and hsmjwtctl acting on that token
(SPEC §6: the key state lives in the token, so replicas and hsmjwtctl agree
on it without a restart, and a daemon picks up a change within 5 s).

After each change — hsmjwtctl keys rotate, rotate --immediate, retire of a
next key, destroy --force of a retired key, POST /admin/rotate-keys on
daemon A, and the activation that follows by time — both daemons' GET
/.well-known/jwks.json and GET /admin/keys must show the key set that
`hsmjwtctl keys list --json` reads from the token (same kids, states and
signers) once two keyring polls have completed on that daemon since the
change.  That is SPEC §6's "within 5 s" as a count: a poll under way at the
change may have read the token before it, the next one cannot have, and
include/hsmjwt/keyring.h ties two polls (KEYRING_POLL_MS) to the 5 s with a
_Static_assert.  Each daemon logs its completed polls at debug level
("keyring poll done" polls=N); the wait for them is generous and fails only
when they never come.  The time each daemon took is printed, not judged.
After each
change a token issued by A is signed by the expected signer, and every token
A issued so far verifies on B (POST /token/verify), except those whose key
was destroyed by force, which must then fail there.

Usage: test_key_replicas.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import Checker, Daemon, Token, Workdir, jwt_parts, main_with_dirs, require_tools  # noqa: E402

ALGORITHMS = ["ES256", "RS256"]
# Long enough that no next key activates by time while a section waits
# for its polls (a retire of a next key must find it still next).
PUBLISH_AHEAD = 20
ENV = {"HSMJWT_PUBLISH_AHEAD": str(PUBLISH_AHEAD), "HSMJWT_ROTATION_PERIOD": "0",
       "HSMJWT_LOG_LEVEL": "debug"}   # the "keyring poll done" lines
POLLS = 2               # keyring polls after which a change must be shown (keyring.h)
POLL_DEADLINE = 60.0    # the longest wait for those polls: fails only if they never come
POLL = 0.1
POLL_LINE = re.compile(r'msg="keyring poll done" polls=(\d+)')
AUDIENCE = "api-replicas"
TTL = 600


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


class Replicas:
    def __init__(self, c, a, b):
        self.c = c
        self.a = a
        self.b = b
        self.admin = {}       # daemon → keys:admin token minted for its issuer
        self.tokens = []      # (alg, kid, token) issued by A
        self.destroyed = set()
        self.timings = []     # (what, seconds for A, seconds for B)

    def ctl_keys(self):
        out = self.a.ctl("keys", "list", "--json")
        if out.returncode != 0:
            raise RuntimeError(f"hsmjwtctl keys list --json failed ({out.returncode}): {out.stderr.strip()}")
        return json.loads(out.stdout)

    def ctl(self, *args):
        out = self.a.ctl(*args)
        print(f"  $ hsmjwtctl {' '.join(args)} -> exit {out.returncode} {out.stdout.strip()!r} {out.stderr.strip()!r}")
        return out

    @staticmethod
    def view_of(entries):
        """What two replicas must agree on: every key's kid, alg, state,
        signing and published, and the kids of the JWKS."""
        keys = sorted((e["kid"], e["alg"], e["state"], e["signing"], e["published"]) for e in entries)
        return keys, sorted(e["kid"] for e in entries if e["published"])

    def daemon_view(self, d):
        """(view, jwks response) of a daemon, or (the two statuses, None)
        when one of the two requests does not answer 200."""
        keys = d.request("GET", "/admin/keys", headers=bearer(self.admin[d]), record=False, timeout=5)
        jwks = d.request("GET", "/.well-known/jwks.json", record=False, timeout=5)
        if keys.status != 200 or jwks.status != 200:
            return f"GET /admin/keys {keys.status}, GET /.well-known/jwks.json {jwks.status}", None
        entries = (keys.json() or {}).get("keys", [])
        return (self.view_of(entries)[0], sorted(k["kid"] for k in (jwks.json() or {}).get("keys", []))), jwks

    @staticmethod
    def polls(d):
        """The keyring polls daemon d has completed (its last debug line)."""
        found = POLL_LINE.findall(d.log_text())
        return int(found[-1]) if found else 0

    def converge(self, what, since):
        """Called right after a change (since: its time.monotonic(), for the
        printed timing only): once POLLS more keyring polls than now have
        completed on a daemon, it must show the token's key set as hsmjwtctl
        reads it then."""
        daemons = (("A", self.a), ("B", self.b))
        marks = {name: self.polls(d) for name, d in daemons}
        reached = {}
        deadline = time.monotonic() + POLL_DEADLINE
        while len(reached) < 2 and time.monotonic() < deadline:
            for name, d in daemons:
                if name not in reached and self.polls(d) >= marks[name] + POLLS:
                    reached[name] = time.monotonic() - since
            time.sleep(POLL)
        for name, d in daemons:
            self.c.check(name in reached, f"{what}: daemon {name} completes {POLLS} keyring polls after the change",
                         f"polls {marks[name]} -> {self.polls(d)} in {POLL_DEADLINE:.0f} s")
        want = self.view_of(self.ctl_keys())
        shown = {}
        for name, d in daemons:
            if name not in reached:
                continue
            view, jwks = self.daemon_view(d)
            shown[name] = jwks
            self.c.check(view == want, f"{what}: daemon {name} shows the token's key set and signers after "
                         f"{POLLS} keyring polls (polls {marks[name] + 1}..{self.polls(d)})",
                         f"want {want}, got {view}")
        ta, tb = reached.get("A"), reached.get("B")
        print(f"  {what}: {POLLS} polls since the change on A after "
              f"{'-' if ta is None else f'{ta:.2f}'} s, on B after {'-' if tb is None else f'{tb:.2f}'} s")
        self.timings.append((what, ta, tb))
        ja, jb = shown.get("A"), shown.get("B")
        if ja is not None and jb is not None:
            self.c.check(ja.body == jb.body and ja.header("ETag") == jb.header("ETag"),
                         f"{what}: both serve the same JWKS document and ETag",
                         f"{ja.header('ETag')} vs {jb.header('ETag')}")
        return want

    def signers(self):
        return {e["alg"]: e["kid"] for e in self.ctl_keys() if e["signing"]}

    def issue_and_verify(self, what):
        """A token per algorithm from A, signed by the signer the token says;
        then every token A issued verifies on B (the destroyed keys' fail)."""
        signers = self.signers()
        for alg in ALGORITHMS:
            body = {"subject": f"user-{alg}", "audience": AUDIENCE, "scope": "read", "client_id": "replicas",
                    "expires_in": TTL, "alg": alg}
            r = self.a.request("POST", "/token", body, bearer(self.admin[self.a]))
            token = (r.json() or {}).get("access_token")
            if not self.c.equal(r.status, 200, f"{what}: A issues an {alg} token"):
                print(f"        body: {r.body[:300]!r}")
                continue
            kid = jwt_parts(token)[0].get("kid")
            self.c.equal(kid, signers.get(alg), f"{what}: A signs {alg} with the token's signer")
            self.tokens.append((alg, kid, token))
        bad = []
        for alg, kid, token in self.tokens:
            r = self.b.request("POST", "/token/verify", {"token": token, "audience": AUDIENCE, "issuer": self.a.issuer,
                                                         "token_type": "access"})
            valid = (r.json() or {}).get("valid")
            want = kid not in self.destroyed
            if r.status != 200 or valid is not want:
                bad.append(f"{alg} {kid}: {r.status} {r.body[:200]!r}")
        live = sum(1 for _, kid, _ in self.tokens if kid not in self.destroyed)
        self.c.check(not bad, f"{what}: B verifies all {live} live tokens from A and refuses "
                              f"{len(self.tokens) - live} signed by destroyed keys", "; ".join(bad))


def one_line(c, out, what):
    if not c.equal(out.returncode, 0, f"{what} exits 0"):
        raise RuntimeError(f"{what} failed: {out.stderr.strip()}")
    return out.stdout.split()


def scenario(c, r):
    c.section("start: both replicas on one token")
    r.a.start()
    c.check(True, f"A is healthy on {r.a.issuer} (state_dir {r.a.state_dir})")
    r.b.start()
    c.check(True, f"B is healthy on {r.b.issuer} (state_dir {r.b.state_dir})")
    r.admin[r.a] = r.a.mint("tokens:issue,keys:admin")
    r.admin[r.b] = r.b.mint("keys:admin")
    r.converge("start", time.monotonic())
    r.issue_and_verify("start")
    first = r.signers()

    c.section("hsmjwtctl keys rotate")
    out = r.ctl("keys", "rotate", "--alg", "ES256")
    n1 = one_line(c, out, "keys rotate --alg ES256")[1]
    r.converge("ctl rotate", time.monotonic())
    r.issue_and_verify("ctl rotate")

    c.section("hsmjwtctl keys rotate --immediate")
    out = r.ctl("keys", "rotate", "--alg", "ES256", "--immediate")
    c.equal(one_line(c, out, "keys rotate --immediate")[1], n1, "--immediate promotes the waiting next key")
    r.converge("ctl rotate --immediate", time.monotonic())
    c.equal(r.signers().get("ES256"), n1, "it signs ES256 now")
    r.issue_and_verify("ctl rotate --immediate")

    c.section("hsmjwtctl keys retire of a next key")
    out = r.ctl("keys", "rotate", "--alg", "ES256")
    n2 = one_line(c, out, "keys rotate --alg ES256")[1]
    r.converge("ctl rotate (a next key to retire)", time.monotonic())
    out = r.ctl("keys", "retire", n2)
    one_line(c, out, "keys retire NEXT")
    want = r.converge("ctl retire", time.monotonic())
    c.check((n2, "ES256", "retired", False, True) in want[0], "the next key is retired in the token")

    c.section("hsmjwtctl keys destroy --force of a retired key")
    old = first["ES256"]
    # The admin tokens are signed by that key: the replicas would refuse them.
    r.admin[r.a] = r.a.mint("tokens:issue,keys:admin")
    r.admin[r.b] = r.b.mint("keys:admin")
    c.check(all(jwt_parts(t)[0].get("kid") == n1 for t in r.admin.values()),
            "the admin tokens are minted anew by the current signer")
    out = r.ctl("keys", "destroy", old, "--force")
    one_line(c, out, "keys destroy --force")
    r.destroyed.add(old)
    want = r.converge("ctl destroy --force", time.monotonic())
    c.check(old not in want[1], "the destroyed key is gone from the token's set")
    r.issue_and_verify("ctl destroy --force")

    c.section("POST /admin/rotate-keys on A")
    resp = r.a.request("POST", "/admin/rotate-keys", None, bearer(r.admin[r.a]), timeout=120)
    done = time.monotonic()
    rotated = (resp.json() or {}).get("rotated", [])
    c.equal(resp.status, 200, "POST /admin/rotate-keys answers 200")
    c.equal(sorted(e.get("alg") for e in rotated), sorted(ALGORITHMS), "it rotated every configured algorithm")
    c.check(all(e.get("state") == "next" for e in rotated), "into next keys", repr(rotated))
    r.converge("POST /admin/rotate-keys on A", done)
    r.issue_and_verify("POST /admin/rotate-keys")

    c.section("the rotated keys activate by time, on both replicas")
    keys = {e["kid"]: e for e in r.ctl_keys()}
    moments = [keys[e["kid"]]["activate_at"] for e in rotated if e.get("kid") in keys]
    if not c.check(len(moments) == len(rotated) and moments, "the rotated keys are in the token"):
        return
    at = max(moments)
    while time.time() < at:            # from here on time(NULL) >= at everywhere
        time.sleep(0.01)
    r.converge("activation by time", time.monotonic() - (time.time() - at))
    c.equal(r.signers(), {e["alg"]: e["kid"] for e in rotated}, "the rotated keys sign every algorithm")
    r.issue_and_verify("activation by time")


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_key_replicas: FAILED: {build_dir}/{exe} is not built")
            return False
    c = Checker("test_key_replicas")
    work = Workdir("hsmjwt-replicas-")
    token = Token(source_dir, os.path.join(work.path, "token"), "hsmjwt-replicas")
    a = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "a.log"), ENV,
               state_dir=os.path.join(work.path, "state-a"))
    b = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "b.log"), ENV,
               state_dir=os.path.join(work.path, "state-b"))
    r = Replicas(c, a, b)
    try:
        scenario(c, r)
    except (RuntimeError, KeyError) as e:
        c.check(False, "the scenario could go on", repr(e))
    finally:
        c.section("stop")
        for name, d in (("A", a), ("B", b)):
            if d.proc is not None:
                pid = d.proc.pid
                c.equal(d.stop(), 0, f"hsmjwtd {name} (pid {pid}) exits 0 on SIGTERM")
    print(f"-- seconds until {POLLS} keyring polls had completed after the change (shown, not judged)")
    for what, ta, tb in r.timings:
        print(f"  {what:40s} A {ta if ta is None else f'{ta:.2f}'}  B {tb if tb is None else f'{tb:.2f}'}")
    if c.failed:
        for name, d in (("A", a), ("B", b)):
            if os.path.exists(d.log_path):
                print(f"-- daemon {name} log (sanitizer report or tail)")
                print(d.log_excerpt())
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    main_with_dirs("test_key_replicas", run)
