#!/usr/bin/python3
"""hsmjwtctl's key lifecycle commands (SPEC §6) on a throwaway SoftHSM token,
without a daemon: the key set is what `keys list --json` reads from the token
at the moment it runs, so every state change below comes either from a
command or from the clock (a next key activates at its activate_at, the key
it follows retires at that same second).

bootstrap with `keys generate` (and its refusals), `keys rotate` with and
without --alg and --immediate, a rotation already under way, activation by
time, `keys retire` (signer refused, next key retired, twice), `keys destroy`
(refused inside the window naming its end, --force, a next key, unforced once
the window is over), `mint` refusing without a signer, HS256 keys listed but
never published, `status` and the table form of `keys list`.

Usage: test_keys_ctl.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import datetime
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import Checker, Daemon, Token, Workdir, free_port, jwt_parts, main_with_dirs, require_tools  # noqa: E402

ALGORITHMS = ["ES256", "RS256"]
PUBLISH_AHEAD = 6
PUBLISH_SLACK = 2       # KEYSTATE_PUBLISH_SLACK: activate_at = created + publish_ahead + this
MAX_TTL = 60            # the smallest max_ttl the configuration accepts
LEEWAY = 2
ENV = {
    "HSMJWT_PUBLISH_AHEAD": str(PUBLISH_AHEAD),
    "HSMJWT_ROTATION_PERIOD": "0",
    "HSMJWT_MAX_TTL": str(MAX_TTL),
    "HSMJWT_LEEWAY": str(LEEWAY),
    "HSMJWT_ACCESS_TTL": "10",
    "HSMJWT_ID_TTL": "10",
    "HSMJWT_REFRESH_TTL": str(MAX_TTL),
    "HSMJWT_PARENT_TTL": str(MAX_TTL),
    "HSMJWT_CHILD_TTL": "30",
    "HSMJWT_RENEW_BEFORE": "5",
}
WAIT_SLACK = 15.0       # how long past the moment it is due a wait gives up
KID_RE = re.compile(r"[A-Za-z0-9_-]{43}")
MEMBERS = {"kid", "alg", "state", "signing", "published", "created", "activate_at"}
RETIRED_MEMBERS = MEMBERS | {"retired_at", "destroy_after"}


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ctl:
    """hsmjwtctl with the configuration of a daemon that never runs."""

    def __init__(self, daemon):
        self.d = daemon

    def run(self, *args, show=True):
        out = self.d.ctl(*args)
        # mint prints a token: never shown.
        shown = f"{out.stdout.strip()!r} " if show and out.stdout.strip() else ""
        print(f"  $ hsmjwtctl {' '.join(args)} -> exit {out.returncode} {shown}{out.stderr.strip()!r}")
        return out

    def keys(self):
        """kid → entry of `keys list --json`; RuntimeError when it fails."""
        out = self.d.ctl("keys", "list", "--json")
        if out.returncode != 0:
            raise RuntimeError(f"keys list --json failed ({out.returncode}): {out.stderr.strip()}")
        entries = json.loads(out.stdout)
        return {e["kid"]: e for e in entries}

    def jwks_kids(self):
        out = self.d.ctl("jwks")
        if out.returncode != 0:
            raise RuntimeError(f"jwks failed ({out.returncode}): {out.stderr.strip()}")
        return sorted(k["kid"] for k in json.loads(out.stdout)["keys"])


def timed(fn):
    """(floor of the clock before, fn(), floor of the clock after): a time(NULL)
    read inside fn lies in [before, after]."""
    before = int(time.time())
    result = fn()
    return before, result, int(time.time())


def rotate_one(c, ctl, args, pattern, prints):
    """`keys rotate ARGS` for one algorithm whose key the sequence goes on
    with: (floor of the clock before, the match of its output against
    pattern, floor after); RuntimeError when it exits non-zero or prints
    anything else, since there is then no key to follow."""
    t0, out, t1 = timed(lambda: ctl.run("keys", "rotate", *args))
    c.equal(out.returncode, 0, f"keys rotate {' '.join(args)} exits 0")
    m = re.fullmatch(pattern, out.stdout)
    if not c.check(out.returncode == 0 and m, f"it prints `{prints}'", repr(out.stdout)):
        raise RuntimeError(f"keys rotate {' '.join(args)} made no key to follow")
    return t0, m, t1


def check_entry(c, keys, kid, what, **want):
    """keys[kid]'s members are exactly the ones of its state, with want's values."""
    e = keys.get(kid)
    if not c.check(e is not None, f"{what}: {kid} is listed", sorted(keys)):
        return None
    members = RETIRED_MEMBERS if e.get("state") == "retired" else MEMBERS
    c.equal(set(e), members, f"{what}: {kid}'s members")
    for name, value in want.items():
        c.equal(e.get(name), value, f"{what}: {kid} {name}")
    return e


def check_retired(c, keys, kid, what, retired_at, activate_at):
    e = check_entry(c, keys, kid, what, state="retired", signing=False, retired_at=retired_at,
                    activate_at=activate_at)
    if e is not None:
        c.equal(e.get("destroy_after"), retired_at + MAX_TTL + LEEWAY,
                f"{what}: {kid} destroy_after = retired_at + max_ttl + leeway")
    return e


def wait_active(c, ctl, kid, what):
    """Polls `keys list` until kid is active, at most WAIT_SLACK past its
    activate_at; every answer must agree with the clock: next while the
    clock was before activate_at, active only once it had come."""
    activate_at = ctl.keys()[kid]["activate_at"]
    deadline = activate_at + WAIT_SLACK
    agree = True
    # Always look at least once: under ASan the test may reach this point
    # after the deadline, when the key must simply be active already.
    while True:
        start = time.time()
        state = ctl.keys().get(kid, {}).get("state")
        end = time.time()
        if state == "active":
            c.check(agree, f"{what}: {kid} was next in every listing before its activate_at")
            return c.check(end >= activate_at, f"{what}: {kid} is active once {iso(activate_at)} has come",
                           f"listed active at {end:.2f} < {activate_at}")
        if state != "next" or start >= activate_at + 1:
            agree = c.check(state == "next" and start < activate_at + 1,
                            f"{what}: {kid} is next before {iso(activate_at)}", f"{state} at {start:.2f}") and agree
        if start >= deadline:
            return c.check(False, f"{what}: {kid} becomes active by {iso(int(deadline))}", f"{state} at {start:.2f}")
        time.sleep(0.5)


def bootstrap(c, ctl):
    c.section("a fresh token: nothing to sign with, mint does not generate")
    c.equal(ctl.keys(), {}, "a fresh token has no keys")
    out = ctl.run("mint", "--roles", "admin", show=False)
    c.equal(out.returncode, 1, "mint without a signing key exits 1")
    c.check("no signing key for ES256: run hsmjwtctl keys generate --alg ES256 or start the daemon once" in out.stderr,
            "mint says how to get a signing key", out.stderr.strip())
    c.equal(ctl.keys(), {}, "mint generated no key")
    c.equal(ctl.jwks_kids(), [], "jwks of a fresh token is empty")

    c.section("keys generate bootstraps an algorithm, once")
    t0, out, t1 = timed(lambda: ctl.run("keys", "generate", "--alg", "ES256"))
    c.equal(out.returncode, 0, "keys generate --alg ES256 exits 0")
    k1 = out.stdout.strip()
    c.check(KID_RE.fullmatch(k1), "it prints the new kid", repr(out.stdout))
    keys = ctl.keys()
    c.equal(sorted(keys), [k1], "the token has that one key")
    e = check_entry(c, keys, k1, "generated", alg="ES256", state="active", signing=True, published=True)
    if e:
        c.check(t0 <= e["created"] <= t1, "created is the moment of generation", f"{e['created']} not in [{t0}, {t1}]")
        c.equal(e["activate_at"], e["created"], "an active key from generate signs since its creation")

    out = ctl.run("keys", "generate", "--alg", "ES256")
    c.equal(out.returncode, 1, "generate for an algorithm that has a signer exits 1")
    c.check(k1 in out.stderr and "keys rotate --alg ES256" in out.stderr,
            "the refusal names the signer's kid and points at keys rotate --alg ES256", out.stderr.strip())
    out = ctl.run("keys", "generate", "--alg", "ES256", "--force")
    c.equal(out.returncode, 2, "generate --force is a usage error")
    c.check("no --force any more" in out.stderr and "keys rotate" in out.stderr and "usage:" in out.stderr,
            "it says --force is gone and what to use instead", out.stderr.strip())
    out = ctl.run("keys", "generate", "--alg", "HS512")
    c.equal(out.returncode, 2, "generate for an algorithm hsmjwt holds no keys for is a usage error")
    c.check("`HS512'" in out.stderr, "the message names it", out.stderr.strip())
    same_keys(c, keys, ctl.keys(), "the refused commands changed nothing")

    out = ctl.run("keys", "generate", "--alg", "RS256")
    c.equal(out.returncode, 0, "keys generate --alg RS256 exits 0")
    r1 = out.stdout.strip()
    keys = ctl.keys()
    check_entry(c, keys, r1, "generated", alg="RS256", state="active", signing=True, published=True)
    c.equal(sorted(keys), sorted([k1, r1]), "two keys, one per algorithm")
    return k1, r1


def rotate(c, ctl, k1, r1):
    c.section("keys rotate: a next key, published ahead")
    before = ctl.keys()
    t0, m, t1 = rotate_one(c, ctl, ["--alg", "ES256"], r"ES256 (\S+) next activates at (\S+)\n",
                           "ES256 KID next activates at TIME")
    k2 = m.group(1)
    keys = ctl.keys()
    e = check_entry(c, keys, k2, "rotated", alg="ES256", state="next", signing=False, published=True)
    if e:
        c.check(t0 <= e["created"] <= t1, "the next key's created is the moment of rotation",
                f"{e['created']} not in [{t0}, {t1}]")
        c.equal(e["activate_at"], e["created"] + PUBLISH_AHEAD + PUBLISH_SLACK,
                "activate_at = created + publish_ahead + 2")
        c.equal(m.group(2), iso(e["activate_at"]), "the printed time is activate_at in UTC ISO 8601")
    c.equal(keys[k1], before[k1], "the signer is unchanged until then")
    c.equal(ctl.jwks_kids(), sorted([k1, r1, k2]), "jwks publishes the next key already")
    activate_at = keys[k2]["activate_at"]

    out = ctl.run("keys", "rotate", "--alg", "ES256")
    c.equal(out.returncode, 1, "a second rotation while one is under way exits 1")
    c.check(f"ES256: a rotation is already under way: {k2} activates at {iso(activate_at)}" in out.stderr,
            "it names the waiting key and its activation time", out.stderr.strip())
    same_keys(c, keys, ctl.keys(), "and changes nothing")

    c.section("keys rotate without --alg: every configured algorithm, going on past a refusal")
    t0, out, t1 = timed(lambda: ctl.run("keys", "rotate"))
    c.equal(out.returncode, 1, "exit 1: ES256 had a rotation under way")
    c.check(f"ES256: a rotation is already under way: {k2}" in out.stderr, "ES256's refusal is reported",
            out.stderr.strip())
    m = re.fullmatch(r"RS256 (\S+) next activates at (\S+)\n", out.stdout)
    c.check(m, "RS256 was rotated all the same", repr(out.stdout))
    r2 = m.group(1) if m else None
    keys = ctl.keys()
    if r2:
        e = check_entry(c, keys, r2, "rotated", alg="RS256", state="next", signing=False, published=True)
        if e:
            c.check(t0 <= e["created"] <= t1, "RS256's next key was created by this rotation")
            c.equal(e["activate_at"], e["created"] + PUBLISH_AHEAD + PUBLISH_SLACK,
                    "RS256 activate_at = created + publish_ahead + 2")
    c.equal(sorted(k for k in keys if keys[k]["alg"] == "ES256"), sorted([k1, k2]), "no second ES256 next key")
    return k2, r2


def activation(c, ctl, k1, k2):
    c.section("activation by time: the next key signs, the old one retires")
    wait_active(c, ctl, k2, "activation")
    keys = ctl.keys()
    e2 = check_entry(c, keys, k2, "activated", state="active", signing=True, published=True)
    if e2:
        check_retired(c, keys, k1, "superseded", retired_at=e2["activate_at"], activate_at=keys[k1]["created"])
        c.equal(keys[k1]["published"], True, "the retired key stays published")
    c.check(k1 in ctl.jwks_kids(), "jwks still publishes the retired key")


def moved_by_time_only(before, after):
    """Whether `after` is the listing `before` becomes by the clock alone: the
    same kids, and every difference a scheduled activation that has come
    since (a next key active from its activate_at, the key it took over from
    retired at that second).  Under ASan such an activation may fall between
    two listings; anything else — a key gone, a record written — is a change."""
    if set(before) != set(after):
        return False
    now = time.time()
    came = {e["activate_at"] for e in before.values() if e["state"] == "next" and e["activate_at"] <= now}
    time_fields = ("state", "signing", "retired_at", "destroy_after")
    for kid, b in before.items():
        a = after[kid]
        if a == b:
            continue
        if {k: v for k, v in a.items() if k not in time_fields} != {k: v for k, v in b.items() if k not in time_fields}:
            return False
        if b["state"] == "next" and a["state"] == "active" and b["activate_at"] in came:
            continue
        if b["state"] == "active" and a["state"] == "retired" and a.get("retired_at") in came:
            continue
        return False
    return True


def same_keys(c, before, after, what):
    c.check(moved_by_time_only(before, after), what, f"got {after}, want {before}")


def destroy_retired(c, ctl, k1):
    c.section("keys destroy of a retired key: refused inside its window, --force")
    keys = ctl.keys()
    e1 = keys.get(k1, {})
    out = ctl.run("keys", "destroy", k1)
    c.equal(out.returncode, 1, "destroy inside the window exits 1")
    c.check(f"{k1} may still have live tokens until {iso(e1.get('destroy_after', 0))}" in out.stderr,
            "it names the key and destroy_after", out.stderr.strip())
    c.check(f"retired at {iso(e1.get('retired_at', 0))} + max_ttl {MAX_TTL} + leeway {LEEWAY}" in out.stderr
            and "--force" in out.stderr, "and how that time is made, and --force", out.stderr.strip())
    same_keys(c, keys, ctl.keys(), "the refusal destroyed nothing")

    out = ctl.run("keys", "destroy", k1, "--force")
    c.equal(out.returncode, 0, "destroy --force exits 0")
    c.equal(out.stdout, f"destroyed {k1}\n", "it prints `destroyed KID'")
    c.check(f"warning: tokens {k1} signed may have been live until {iso(e1.get('destroy_after', 0))}" in out.stderr,
            "and warns that the tokens it signed stop verifying", out.stderr.strip())
    after = ctl.keys()
    c.check(k1 not in after, "the key is gone from keys list", sorted(after))
    same_keys(c, {k: v for k, v in keys.items() if k != k1}, after, "every other key is as it was")
    c.check(k1 not in ctl.jwks_kids(), "and from jwks")
    out = ctl.run("keys", "destroy", k1)
    c.equal(out.returncode, 1, "destroying it again exits 1")
    c.check("no key" in out.stderr, "no such key", out.stderr.strip())


def retire(c, ctl, k2):
    c.section("keys retire: the signer refused, a next key retired")
    keys = ctl.keys()
    out = ctl.run("keys", "retire", k2)
    c.equal(out.returncode, 1, "retiring the signer exits 1")
    c.check(f"{k2} signs ES256; rotate first (keys rotate --alg ES256 --immediate)" in out.stderr,
            "it says to rotate first", out.stderr.strip())
    out = ctl.run("keys", "destroy", k2)
    c.equal(out.returncode, 1, "destroying the signer without --force exits 1")
    c.check(f"{k2} signs ES256; rotate first" in out.stderr, "it says to rotate first", out.stderr.strip())
    same_keys(c, keys, ctl.keys(), "neither changed anything")

    # A new next key, to retire.
    k3 = rotate_one(c, ctl, ["--alg", "ES256"], r"ES256 (\S+) next activates at \S+\n",
                    "ES256 KID next activates at TIME")[1].group(1)
    k3_due = ctl.keys()[k3]["activate_at"]    # when it would have signed
    t0, out, t1 = timed(lambda: ctl.run("keys", "retire", k3))
    c.equal(out.returncode, 0, "retiring a next key exits 0")
    c.check(out.stdout.startswith(f"retired {k3} (ES256)"), "it prints `retired KID (ALG)'", repr(out.stdout))
    keys = ctl.keys()
    e3 = check_entry(c, keys, k3, "retired next key", alg="ES256", state="retired", signing=False, published=True)
    if e3:
        c.check(t0 <= e3["retired_at"] <= t1, "retired_at is the moment of retirement",
                f"{e3['retired_at']} not in [{t0}, {t1}]")
        c.equal(e3["activate_at"], e3["retired_at"], "a retired next key's activate_at is its retired_at (it never signed)")
        c.check(e3["created"] <= e3["retired_at"], "created <= retired_at", f"{e3['created']}, {e3['retired_at']}")
        c.equal(e3["destroy_after"], e3["retired_at"] + MAX_TTL + LEEWAY, "destroy_after = retired_at + 62")
        c.check(f"destroyed after {iso(e3['destroy_after'])}" in out.stdout, "it prints when it may be destroyed",
                repr(out.stdout))
    check_entry(c, keys, k2, "after retiring the next key", state="active", signing=True)
    out = ctl.run("keys", "retire", k3)
    c.equal(out.returncode, 0, "retiring it again exits 0")
    c.check("already retired" in out.stdout, "and says it is already retired", repr(out.stdout))
    same_keys(c, keys, ctl.keys(), "and changes nothing")
    out = ctl.run("keys", "retire", "no-such-kid")
    c.equal(out.returncode, 1, "retiring an unknown kid exits 1")
    c.check("no key `no-such-kid'" in out.stderr, "naming it", out.stderr.strip())
    # A thumbprint starts with "--" once in 4096 (CI met one): it is a kid, not an option.
    dashed = "--" + "A" * 41
    for argv, what in ((["keys", "retire", dashed], "retire"), (["keys", "destroy", dashed], "destroy"),
                       (["keys", "destroy", "--force", dashed], "destroy --force"),
                       (["keys", "retire", "--", dashed], "retire --")):
        out = ctl.run(*argv)
        c.equal(out.returncode, 1, f"keys {what} of a kid starting with -- looks it up (exit 1, not usage 2)")
        c.check(f"no key `{dashed}'" in out.stderr, f"keys {what}: naming it", out.stderr.strip())
    out = ctl.run("keys", "retire", "--", k3)
    c.equal(out.returncode, 0, "keys retire -- KID exits 0")
    c.check("already retired" in out.stdout, "keys retire -- KID finds the key", repr(out.stdout))
    out = ctl.run("keys", "retire", k3, k2)
    c.equal(out.returncode, 2, "keys retire with two kids is a usage error")

    c.section("keys destroy of a next key: it never signed")
    out = ctl.run("keys", "rotate", "--alg", "ES256")
    m = re.fullmatch(r"ES256 (\S+) next activates at \S+\n", out.stdout)
    c.equal(out.returncode, 0, "a retired next key is no rotation under way: rotate makes another")
    if m:
        k4 = m.group(1)
        out = ctl.run("keys", "destroy", k4)
        c.equal(out.returncode, 0, "destroying a next key needs no --force")
        c.check(k4 not in ctl.keys(), "it is gone")
    return k3, k3_due


def immediate(c, ctl, k2):
    c.section("keys rotate --immediate: the new key signs at once")
    t0, m, t1 = rotate_one(c, ctl, ["--alg", "ES256", "--immediate"], r"ES256 (\S+) active now \(immediate\)\n",
                           "ES256 KID active now (immediate)")
    k5 = m.group(1)
    keys = ctl.keys()
    e5 = check_entry(c, keys, k5, "immediate", alg="ES256", state="active", signing=True, published=True)
    if e5:
        # Active at that moment — or, made in the very second its
        # predecessor took over, a second later, so that it wins the tie
        # (keystate_rotate: times are whole seconds).
        previous = keys[k2]["activate_at"]
        want = e5["created"] if previous < e5["created"] else previous + 1
        c.check(t0 <= e5["created"] <= t1 and e5["activate_at"] == want,
                "it was generated active at that moment (or a second after its predecessor's activation)",
                f"{e5['created']}, {e5['activate_at']} vs [{t0}, {t1}], predecessor active since {previous}")
        check_retired(c, keys, k2, "superseded at once", retired_at=e5["activate_at"],
                      activate_at=keys[k2]["activate_at"])
    out = ctl.run("mint", "--roles", "admin", "--ttl", "10", show=False)
    c.equal(out.returncode, 0, "mint exits 0")
    header = jwt_parts(out.stdout.strip())[0] if out.returncode == 0 else {}
    c.equal((header.get("alg"), header.get("kid")), ("ES256", k5), "mint signs with the new signer")
    return k5


def hs256(c, ctl):
    c.section("HS256: listed, never published")
    out = ctl.run("keys", "generate", "--alg", "HS256")
    c.equal(out.returncode, 0, "keys generate --alg HS256 exits 0")
    kh = out.stdout.strip()
    c.check("not one of the configured algorithms" in out.stderr, "it warns that HS256 is not configured",
            out.stderr.strip())
    out = ctl.run("keys", "rotate", "--alg", "HS256")
    m = re.fullmatch(r"HS256 (\S+) next activates at \S+\n", out.stdout)
    c.check(out.returncode == 0 and m, "keys rotate --alg HS256 makes a next key", repr(out.stdout))
    kh2 = m.group(1) if m else None
    keys = ctl.keys()
    check_entry(c, keys, kh, "HS256", alg="HS256", state="active", signing=True, published=False)
    if kh2:
        check_entry(c, keys, kh2, "HS256 next", alg="HS256", state="next", signing=False, published=False)
    jwks = ctl.jwks_kids()
    c.check(kh not in jwks and kh2 not in jwks, "neither is in jwks", jwks)
    c.equal(jwks, sorted(k for k, e in keys.items() if e["alg"] != "HS256"), "jwks is every other key")


def status_and_table(c, ctl, k5):
    c.section("status and the table of keys list")
    # The JSON listing, status and the table are three reads of the token:
    # a key whose activation (or retirement) falls between them shows two
    # states.  The comparison is made on reads that a JSON listing on either
    # side shows unchanged, whatever the machine's speed.
    stable = False
    for attempt in range(1, 6):
        keys = ctl.keys()
        out = ctl.run("status", show=False)
        table = ctl.run("keys", "list", show=False)
        stable = ctl.keys() == keys
        if stable:
            break
        print(f"  a key changed state during the reads (attempt {attempt}); reading again")
    c.check(stable, f"the key states held still over one round of reads (attempt {attempt} of 5)")
    count = {s: sum(1 for e in keys.values() if e["state"] == s) for s in ("next", "active", "retired")}
    c.equal(out.returncode, 0, "status exits 0")
    c.check(f"keys:         {len(keys)} (next {count['next']}, active {count['active']}, retired {count['retired']})"
            in out.stdout, "status counts the keys per state", out.stdout)
    c.check(re.search(rf"^  ES256  {k5} active since {re.escape(iso(keys[k5]['activate_at']))}$", out.stdout, re.M),
            "status names ES256's signer and since when", out.stdout)
    out = table
    c.equal(out.returncode, 0, "keys list exits 0")
    lines = out.stdout.splitlines()
    c.equal(lines[0].split() if lines else [], ["KID", "ALG", "STATE", "SIGNING", "PUBLISHED", "CREATED",
                                                "ACTIVATE_AT", "RETIRED_AT", "DESTROY_AFTER"], "the table's header")
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.split()}
    c.equal(sorted(rows), sorted(keys), "one row per key")
    for kid, e in keys.items():
        want = [kid, e["alg"], e["state"], "yes" if e["signing"] else "no", "yes" if e["published"] else "no",
                iso(e["created"]), iso(e["activate_at"]),
                iso(e["retired_at"]) if "retired_at" in e else "-",
                iso(e["destroy_after"]) if "destroy_after" in e else "-"]
        c.equal(rows.get(kid), want, f"the row of {kid} ({e['alg']} {e['state']})")


def late(c, ctl, r1, r2, k2, k3, k3_due):
    c.section("RS256's rotation activates; a retired next key never does")
    if r2:
        wait_active(c, ctl, r2, "RS256 activation")
        keys = ctl.keys()
        e = check_entry(c, keys, r2, "RS256 activated", state="active", signing=True)
        if e:
            check_retired(c, keys, r1, "RS256 superseded", retired_at=e["activate_at"],
                          activate_at=keys[r1]["activate_at"])
    while time.time() < k3_due + 1:    # time(NULL) >= k3_due everywhere
        time.sleep(0.5)
    keys = ctl.keys()
    check_entry(c, keys, k3, f"past {iso(k3_due)}, when it would have signed", state="retired", signing=False)

    c.section("keys destroy without --force once the window is over")
    destroy_after = keys.get(k2, {}).get("destroy_after", 0)
    deadline = destroy_after + WAIT_SLACK
    refused_late = None
    # Always look at least once: under ASan the test may reach this point
    # after the deadline, when the key must simply be active already.
    while True:
        start = time.time()
        out = ctl.d.ctl("keys", "destroy", k2)
        end = time.time()
        if out.returncode == 0:
            print(f"  $ hsmjwtctl keys destroy {k2} -> exit 0 at {end:.2f} (destroy_after {destroy_after})")
            c.check(end >= destroy_after, "it is allowed only once destroy_after has come", f"{end:.2f}")
            c.check(refused_late is None, "it was refused only before destroy_after", f"refused at {refused_late}")
            c.equal(out.stdout, f"destroyed {k2}\n", "it prints `destroyed KID'")
            c.check(k2 not in ctl.keys(), "the key is gone")
            return
        if out.returncode != 1 or "may still have live tokens" not in out.stderr:
            c.check(False, "before destroy_after it is refused as inside the window",
                    f"exit {out.returncode}: {out.stderr.strip()}")
            return
        if start > destroy_after + 1:
            refused_late = f"{start:.2f}"
        time.sleep(1.0)
    c.check(False, f"destroy without --force succeeds by {iso(int(deadline))}")


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    if not os.access(os.path.join(build_dir, "hsmjwtctl"), os.X_OK):
        print(f"test_keys_ctl: FAILED: {build_dir}/hsmjwtctl is not built")
        return False
    c = Checker("test_keys_ctl")
    work = Workdir("hsmjwt-keys-ctl-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-keys")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "unused.log"), ENV)
    daemon.port = free_port()    # in the configuration only: no daemon runs
    ctl = Ctl(daemon)
    try:
        k1, r1 = bootstrap(c, ctl)
        k2, r2 = rotate(c, ctl, k1, r1)
        activation(c, ctl, k1, k2)
        destroy_retired(c, ctl, k1)
        k3, k3_due = retire(c, ctl, k2)
        k5 = immediate(c, ctl, k2)
        hs256(c, ctl)
        status_and_table(c, ctl, k5)
        late(c, ctl, r1, r2, k2, k3, k3_due)
    except (RuntimeError, KeyError) as e:
        c.check(False, "the sequence could go on", repr(e))
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    main_with_dirs("test_keys_ctl", run)
