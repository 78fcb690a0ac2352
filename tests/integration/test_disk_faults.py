#!/usr/bin/python3
"""The registry on a disk that fails (issue 8): hsmjwtd's state_dir on a
small filesystem of its own, with fsync=always, while clients issue and
revoke tokens.

Full disk (a tmpfs, filled by a filler file under load): every change the
disk cannot take answers 503 registry_unavailable with Retry-After — never
200, never 500 — and /health says degraded with registry failed; writes are
refused, not queued without bound; reads and verification keep working; once
the filler is removed the same process (no restart) takes changes again and
/health is ok.  A tmpfs full in the middle of a page tears the write that
crosses it: the registry cuts that off and writes the batch again later.
Then, with no other writer, refresh grants on a full disk until one is
refused: that one retired its token before its batch failed, so its 503
carries no Retry-After and says not to present the token again.

Read-only disk (ext4 on a loop device, mounted errors=remount-ro, then
`mount -o remount,abort` between requests: the kernel turns it read-only as
it does on an I/O error — a plain `remount,ro` is refused with EBUSY while
the daemon holds registry.log open for writing, and an aborted ext4 can be
writable again only after an unmount, so the daemon is stopped first):
every change — issue, revocation, pair, refresh grant — answers 503, none
200, /health says degraded, SIGTERM still exits 0.

Then the disk is filled again and the daemon SIGKILLed while full: registry
check finds a clean file or a torn tail (never a corrupt middle), and after
a restart the model holds.

After each phase: SIGTERM (exit 0), `hsmjwtctl registry check` says clean
(no torn write left in the middle), restart, and every token whose issue
answered 200 exists, every revocation that answered 200 is revoked, a
revocation that answered 503 is either applied or not but never half (the
record, the status list entry and /token/verify agree; registry_model.py).

Needs root with CAP_SYS_ADMIN and a free loop device (probed: a tiny tmpfs
mount and `losetup -f`); skipped (77) otherwise, a failure under
TEST_REQUIRE_ALL=1.  No verdict depends on timing: waits are bounded
generously and the test asserts on answers.

Usage: test_disk_faults.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import errno
import http.client
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Skip, Token, Workdir, guarded, jwt_parts,  # noqa: E402
                            main_with_dirs, require_tools, run_daemon_body)
from registry_model import Model, check_model  # noqa: E402

ALGORITHMS = ["ES256"]
TTL = 3600
CLIENTS = 4
BASELINE = 12              # tokens issued (half of them revoked) before a fault
MIN_REFUSED = 20           # changes answered 503 before the fault is lifted
FAULT_LIMIT = 120.0        # seconds the load may take to see MIN_REFUSED refusals
RECOVER_LIMIT = 120.0      # seconds the daemon may take to take writes again
TMPFS_SIZE = "4m"
EXT4_SIZE = 32 << 20


def sh(*args, check=True):
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


class Load:
    """CLIENTS threads issuing tokens and revoking them, and what they were
    told; a 503 is a change of unknown outcome in the model."""

    def __init__(self, daemon, admin, model, name, revocable=()):
        self.daemon, self.admin, self.model, self.name = daemon, admin, model, name
        # jtis acknowledged before, for the clients to revoke (client n
        # takes every CLIENTS-th): revocations are tried even when no
        # issue succeeds.
        self.revocable = list(revocable)
        self.lock = threading.Lock()
        self.ok = {"issue": 0, "revoke": 0, "pair": 0, "refresh": 0}
        self.refused = {"issue": 0, "revoke": 0, "pair": 0, "refresh": 0}
        self.unexpected = []          # (what, status, body)
        self.no_retry_after = 0       # 503s without Retry-After that should have one
        self.no_retry_grant = 0       # refresh grants' 503s that must not be retried
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(CLIENTS)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)
        return not any(t.is_alive() for t in self.threads)

    def refusals(self):
        with self.lock:
            return sum(self.refused.values())

    def answer(self, what, r):
        """'ok', 'refused' or None (unexpected, recorded)."""
        if r.status == 200:
            with self.lock:
                self.ok[what] += 1
            return "ok"
        doc = r.json() or {}
        if r.status == 503 and doc.get("error") == "registry_unavailable":
            with self.lock:
                self.refused[what] += 1
                if r.header("Retry-After") is None:
                    # A grant whose batch failed after its token was
                    # retired in the index: it may still take effect, so
                    # no retry is invited and the client is told not to
                    # present the token again.  Any other 503 invites one.
                    final = what == "refresh" and "do not present this refresh token again" in str(
                        doc.get("error_description", ""))
                    self.no_retry_grant += final
                    self.no_retry_after += not final
            return "refused"
        with self.lock:
            self.unexpected.append((what, r.status, r.body[:200]))
        return None

    def call(self, method, path, body, headers):
        """The Response, or None for a request cut (a connection error: the
        kill of the last phase), recorded as such."""
        try:
            return self.daemon.request(method, path, body, headers, record=False)
        except (OSError, http.client.HTTPException) as e:
            with self.lock:
                self.unexpected.append(("connection", 0, repr(e).encode()))
            return None

    def client(self, n):
        headers = {"Authorization": f"Bearer {self.admin}"}
        pending = self.revocable[n::CLIENTS]   # jtis of this client's, not yet revoked
        refresh = None                # the refresh token this client rotates
        i = 0
        while not self.stop.is_set():
            i += 1
            r = self.call("POST", "/token", {"subject": f"{self.name}-{n}", "expires_in": TTL}, headers)
            if r is not None and self.answer("issue", r) == "ok":
                pending.append(self.model.issued(r.json()["access_token"]))
            if i % 2 == 0 and pending:
                jti = pending.pop(0)
                if i % 4 == 0:
                    r = self.call("PATCH", f"/tokens/{jti}", {"status": "revoked"}, headers)
                else:
                    r = self.call("POST", "/token/revoke", {"jti": jti}, headers)
                got = self.answer("revoke", r) if r is not None else "cut"
                if got is not None:
                    self.model.changed(jti, "revoked", got == "ok", "revoke")
                if got == "refused":
                    pending.append(jti)   # tried again later: a client's retry
            if i % 2 == 1:
                refresh = self.pair_and_refresh(n, headers, refresh)
            if self.refusals():
                time.sleep(0.02)      # a refusing daemon is not a benchmark

    def pair_and_refresh(self, n, headers, refresh):
        """A parent/child pair, and one rotation of this client's refresh
        token (a new one when it has none): the refresh token to use next."""
        r = self.call("POST", "/token-pairs", {"subject": f"{self.name}-pair-{n}", "include_child": True}, headers)
        if r is not None and self.answer("pair", r) == "ok":
            doc = r.json()
            parent = self.model.issued(doc["parent_token"], kind="pair")
            self.model.issued(doc["child_token"], parent=parent, kind="pair")
        if refresh is None:
            r = self.call("POST", "/token", {"subject": f"{self.name}-rt-{n}", "token_type": "refresh",
                                             "expires_in": TTL}, headers)
            if r is not None and self.answer("issue", r) == "ok":
                refresh = r.json()["refresh_token"]
                self.model.issued(refresh)
            return refresh
        old = jwt_parts(refresh)[1]["jti"]
        r = self.call("POST", "/token", {"grant_type": "refresh_token", "refresh_token": refresh}, {})
        got = self.answer("refresh", r) if r is not None else "cut"
        if got is None:
            return None
        self.model.changed(old, "revoked", got == "ok", "refresh")
        if got != "ok":
            return None               # maybe consumed: never presented again (reuse revokes the family)
        doc = r.json()
        self.model.issued(doc["access_token"], kind="refresh")
        self.model.issued(doc["refresh_token"], kind="refresh")
        return doc["refresh_token"]


def baseline(c, daemon, admin, model, what):
    headers = {"Authorization": f"Bearer {admin}"}
    answers, unrevoked = [], []
    for k in range(BASELINE):
        r = daemon.request("POST", "/token", {"subject": f"base-{k}", "expires_in": TTL}, headers, record=False)
        answers.append(r.status)
        if r.status == 200:
            jti = model.issued(r.json()["access_token"])
            if k % 2 == 0:
                r = daemon.request("POST", "/token/revoke", {"jti": jti}, headers, record=False)
                answers.append(r.status)
                if r.status == 200:
                    model.changed(jti, "revoked", True, "revoke")
            else:
                unrevoked.append(jti)
    c.check(all(s == 200 for s in answers), f"{what}: {len(answers)} issues and revocations answer 200",
            repr(answers))
    return unrevoked


def wait_refusals(c, load, what):
    deadline = time.monotonic() + FAULT_LIMIT
    while load.refusals() < MIN_REFUSED and time.monotonic() < deadline and not load.unexpected:
        time.sleep(0.05)
    c.check(load.refusals() >= MIN_REFUSED, f"{what}: the clients see changes refused (>= {MIN_REFUSED})",
            f"{load.refusals()} refused, {load.ok}")


def health(c, daemon, what, want_ok):
    r = daemon.request("GET", "/health", record=False)
    doc = r.json() or {}
    if want_ok:
        c.equal((r.status, doc.get("status"), doc.get("registry")), (200, "ok", "ok"),
                f"{what}: /health 200 ok, registry ok")
    else:
        c.equal((r.status, doc.get("status"), doc.get("registry"), doc.get("hsm")),
                (503, "degraded", "unavailable", "ok"), f"{what}: /health 503 degraded, registry unavailable, hsm ok")


def reads_work(c, daemon, admin, model, what):
    """Reads and verification do not need the disk."""
    snap = model.snapshot()
    jti, (allowed, token) = next(iter(snap.items()))
    r = daemon.request("GET", f"/tokens/{jti}", headers={"Authorization": f"Bearer {admin}"}, record=False)
    c.check(r.status == 200 and (r.json() or {}).get("status") in allowed, f"{what}: GET /tokens/{{jti}} answers",
            f"{r.status} {r.body[:200]!r}")
    r = daemon.request("POST", "/token/verify", {"token": token}, record=False)
    c.equal(r.status, 200, f"{what}: POST /token/verify answers 200")


def load_verdict(c, load, what):
    c.check(load.finish(), f"{what}: every client thread ended")
    print(f"  {what}: answered 200 {load.ok}, 503 {load.refused} (grants not to retry: {load.no_retry_grant})")
    c.check(not load.unexpected, f"{what}: every answer was 200 or 503 registry_unavailable (never 500)",
            repr(load.unexpected[:5]))
    c.equal(load.no_retry_after, 0,
            f"{what}: every 503 carries Retry-After, but a refresh grant's that says not to present the token again")


def load_verdict_cut(c, load, what):
    """load_verdict for a load the kill cut: connection errors after the
    kill are what the kill does; every complete answer is still 200 or 503."""
    c.check(load.finish(), f"{what}: every client thread ended")
    with load.lock:
        load.unexpected = [u for u in load.unexpected if u[0] != "connection"]
    print(f"  {what}: answered 200 {load.ok}, 503 {load.refused}")
    c.check(not load.unexpected, f"{what}: every complete answer was 200 or 503 registry_unavailable",
            repr(load.unexpected[:5]))


def after_stop(c, daemon, admin, model, what):
    """registry check on the stopped daemon's state_dir, then a restart and
    the model's check."""
    out = daemon.ctl("registry", "check")
    c.check(out.returncode == 0 and "clean" in out.stdout,
            f"{what}: hsmjwtctl registry check says clean (no torn write in the middle)",
            f"{out.returncode} {out.stdout.strip()} {out.stderr.strip()[-500:]}")
    daemon.start(keep_port=True)
    check_model(c, daemon, admin, model, f"{what}, restarted")
    health(c, daemon, f"{what}, restarted", True)
    r = daemon.request("POST", "/token", {"subject": "after", "expires_in": TTL},
                       {"Authorization": f"Bearer {admin}"}, record=False)
    c.equal(r.status, 200, f"{what}, restarted: POST /token answers 200")


def fill(path):
    """Fills the filesystem of path with one file: big writes, then smaller
    ones down to a byte, until ENOSPC.  Returns the bytes written."""
    total = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = 1 << 20
        while chunk >= 1:
            try:
                total += os.write(fd, b"\0" * chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return total


def grant_batch_fails(c, daemon, admin, filler):
    """No other writer; the disk filled; refresh grants, each with the
    token the last one returned, until one is refused.  The registry took
    every write before it, so that one retired its token in the index and
    then its batch failed: a 503 that must not invite a retry (presented
    again, the token would be reuse and revoke its family).  Then the space
    is freed and the same process takes writes again."""
    what = "a refresh grant whose batch fails"
    r = daemon.request("POST", "/token", {"subject": "grant-batch", "token_type": "refresh", "expires_in": TTL},
                       {"Authorization": f"Bearer {admin}"}, record=False)
    c.equal(r.status, 200, f"{what}: the refresh token is issued before the disk fills")
    if r.status != 200:
        return
    refresh = r.json()["refresh_token"]
    rotations = 0
    try:
        fill(filler)
        # A write fits in the tmpfs's last page until it crosses it: a few
        # KiB of grants at most.
        for _ in range(200):
            r = daemon.request("POST", "/token", {"grant_type": "refresh_token", "refresh_token": refresh}, {},
                               record=False)
            if r.status != 200:
                break
            refresh = r.json()["refresh_token"]
            rotations += 1
        doc = r.json() or {}
        print(f"  {what}: {rotations} rotations answered 200 on the full disk, then {r.status}")
        c.equal((r.status, doc.get("error")), (503, "registry_unavailable"),
                f"{what}: answered 503 registry_unavailable")
        c.check(r.header("Retry-After") is None, f"{what}: the 503 carries no Retry-After",
                f"Retry-After: {r.header('Retry-After')}")
        c.check("do not present this refresh token again" in str(doc.get("error_description", "")),
                f"{what}: the 503 says not to present the refresh token again", repr(doc))
    finally:
        os.unlink(filler)
    deadline = time.monotonic() + RECOVER_LIMIT
    while time.monotonic() < deadline:
        if daemon.request("GET", "/health", record=False).status == 200:
            break
        time.sleep(0.05)
    health(c, daemon, f"{what}, space freed", True)


def full_disk(c, build_dir, work, token, mounts):
    c.section("full disk: state_dir on a tmpfs of " + TMPFS_SIZE)
    mnt = os.path.join(work.path, "tmpfs")
    os.mkdir(mnt, 0o700)
    sh("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", mnt)
    mounts.append(mnt)
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "full.log"),
                    {"HSMJWT_FSYNC": "always", "HSMJWT_LOG_LEVEL": "warn"}, state_dir=os.path.join(mnt, "state"))
    model = Model()

    def body():
        daemon.start()
        pid = daemon.proc.pid
        admin = daemon.mint("admin", ttl=TTL)
        unrevoked = baseline(c, daemon, admin, model, "before the disk fills")
        load = Load(daemon, admin, model, "full", unrevoked)
        load.start()
        filler = os.path.join(mnt, "filler")
        try:
            filled = fill(filler)
            print(f"  filled the tmpfs with {filled} bytes")
            wait_refusals(c, load, "disk full")
            health(c, daemon, "disk full", False)
            reads_work(c, daemon, admin, model, "disk full")
        finally:
            os.unlink(filler)
        c.section("full disk: space freed, same process")
        deadline = time.monotonic() + RECOVER_LIMIT
        before = dict(load.ok)
        while time.monotonic() < deadline and not load.unexpected:
            with load.lock:
                if load.ok["issue"] > before["issue"] + 10 and load.ok["revoke"] > before["revoke"] + 5:
                    break
            time.sleep(0.05)
        with load.lock:
            c.check(load.ok["issue"] > before["issue"] + 10 and load.ok["revoke"] > before["revoke"] + 5,
                    "space freed: issues and revocations answer 200 again without a restart",
                    f"{before} -> {load.ok}")
        c.equal(daemon.proc.pid if daemon.proc else None, pid, "space freed: the same hsmjwtd process serves")
        load_verdict(c, load, "full disk")
        c.check(all(load.refused[k] > 0 for k in ("issue", "revoke")) and load.ok["pair"] + load.refused["pair"] > 0
                and load.ok["refresh"] + load.refused["refresh"] > 0,
                "full disk: issues and revocations were refused, pairs and refresh grants were tried",
                f"200 {load.ok}, 503 {load.refused}")
        health(c, daemon, "space freed", True)
        c.section("full disk: stop, check, restart")
        c.equal(daemon.stop(), 0, f"hsmjwtd (pid {pid}) exits 0 on SIGTERM")
        after_stop(c, daemon, admin, model, "full disk")

        c.section("full disk: a refresh grant whose own batch the disk refuses")
        grant_batch_fails(c, daemon, admin, filler)

        # Killed while the disk is full: the daemon has been tearing and
        # cutting its retries meanwhile, and the file must never be left
        # with a tear in the middle.
        c.section("full disk again, then SIGKILL while full")
        pid = daemon.proc.pid
        load = Load(daemon, admin, model, "kill", baseline(c, daemon, admin, model, "before the disk fills again"))
        load.start()
        try:
            fill(filler)
            wait_refusals(c, load, "disk full again")
            c.equal(daemon.crash(), 9, f"hsmjwtd (pid {pid}) killed by SIGKILL while the disk is full")
            load_verdict_cut(c, load, "disk full again")
            out = daemon.ctl("registry", "check")
            print("  killed while full: registry check says " +
                  " ".join(re.findall(r"^verdict:\s+(.*)$", out.stdout, re.M)))
            c.check(re.search(r"^verdict:\s+(clean|torn tail)", out.stdout, re.M) is not None,
                    "killed while full: registry check finds the file clean or with a torn tail, never corrupt",
                    f"{out.returncode} {out.stdout.strip()}")
        finally:
            os.unlink(filler)
        daemon.start(keep_port=True)
        check_model(c, daemon, admin, model, "killed while full, restarted")
        pid = daemon.proc.pid
        c.equal(daemon.stop(), 0, f"hsmjwtd (pid {pid}) exits 0 on SIGTERM")
        after_stop(c, daemon, admin, model, "killed while full")

    def log_checks(log):
        m = re.search(r"registry takes writes again.* rewritten_frames=(\d+)", log)
        c.check(m is not None and int(m.group(1)) > 0,
                "the log says the registry takes writes again, having rewritten the refused batch's frames",
                m.group(0) if m else "no such line")

    run_daemon_body(c, daemon, body, log_checks)


def read_only_disk(c, build_dir, work, token, mounts, loops):
    c.section("read-only disk: state_dir on ext4 (errors=remount-ro) on a loop device")
    image = os.path.join(work.path, "ext4.img")
    with open(image, "wb") as f:
        f.truncate(EXT4_SIZE)
    sh("mkfs.ext4", "-q", "-F", image)
    dev = sh("losetup", "-f", "--show", image).stdout.strip()
    loops.append(dev)
    mnt = os.path.join(work.path, "ext4")
    os.mkdir(mnt, 0o700)
    sh("mount", "-o", "errors=remount-ro", dev, mnt)
    mounts.append(mnt)
    state = os.path.join(mnt, "state")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "ro.log"),
                    {"HSMJWT_FSYNC": "always", "HSMJWT_LOG_LEVEL": "info"}, state_dir=state)
    model = Model()

    def body():
        daemon.start()
        pid = daemon.proc.pid
        admin = daemon.mint("admin", ttl=TTL)
        unrevoked = baseline(c, daemon, admin, model, "before the disk turns read-only")
        # Between requests, not under load: an fdatasync in flight when ext4
        # aborts may return 0 with the data lost (seen here with a plain
        # write+fdatasync loop too, about one run in ten), which no process
        # can tell from a durable write.
        sh("mount", "-o", "remount,abort", mnt)
        w = subprocess.run(["touch", os.path.join(state, "probe")], capture_output=True, text=True)
        c.check(w.returncode != 0 and "Read-only" in w.stderr, "the kernel made the filesystem read-only",
                f"{w.returncode} {w.stderr.strip()}")
        load = Load(daemon, admin, model, "ro", unrevoked)
        load.start()
        wait_refusals(c, load, "read-only")
        health(c, daemon, "read-only", False)
        reads_work(c, daemon, admin, model, "read-only")
        load_verdict(c, load, "read-only disk")
        c.equal(load.ok, {"issue": 0, "revoke": 0, "pair": 0, "refresh": 0},
                "read-only disk: no change answered 200 (nothing could be made durable)")
        c.check(load.refused["issue"] > 0 and load.refused["revoke"] > 0 and load.refused["pair"] > 0,
                "read-only disk: issues, revocations and pairs were refused", repr(load.refused))
        c.section("read-only disk: stop, unmount, fsck, mount rw, check, restart")
        c.equal(daemon.stop(), 0, f"hsmjwtd (pid {pid}) exits 0 on SIGTERM with the disk read-only")
        sh("umount", mnt)
        mounts.remove(mnt)
        fsck = sh("e2fsck", "-fy", image, check=False)
        c.check(fsck.returncode in (0, 1), "e2fsck finds the filesystem clean or fixed", fsck.stdout[-500:])
        sh("mount", dev, mnt)
        mounts.append(mnt)
        after_stop(c, daemon, admin, model, "read-only disk")

    run_daemon_body(c, daemon, body)


def first_line(text):
    return (text.strip().splitlines() or [""])[0]


def probe_privileges():
    """Skip unless this process can mount (root alone is not enough in a
    container without CAP_SYS_ADMIN) and a loop device is free."""
    with tempfile.TemporaryDirectory(prefix="hsmjwt-disk-probe-") as d:
        out = sh("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d, check=False)
        if out.returncode != 0:
            raise Skip(f"cannot mount a tmpfs (CAP_SYS_ADMIN?): {first_line(out.stderr)}")
        out = sh("umount", d, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"umount of the probe tmpfs {d} failed: {out.stderr.strip()}")
    out = sh("losetup", "-f", check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise Skip(f"no free loop device (losetup -f): {first_line(out.stderr)}")


def run(build_dir, source_dir):
    if os.geteuid() != 0:
        raise Skip("not root: the test mounts a tmpfs and an ext4 loop device")
    require_tools(["softhsm2-util", "mount", "umount", "losetup", "mkfs.ext4", "e2fsck"])
    probe_privileges()
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_disk_faults: FAILED: {build_dir}/{exe} is not built")
            return False
    c = Checker("test_disk_faults")
    work = Workdir("hsmjwt-disk-")
    mounts, loops = [], []
    try:
        token = Token(source_dir, os.path.join(work.path, "token"), "hsmjwt-disk")
        guarded(c, "full disk", full_disk, c, build_dir, work, token, mounts)
        guarded(c, "read-only disk", read_only_disk, c, build_dir, work, token, mounts, loops)
    finally:
        for m in reversed(mounts):
            out = sh("umount", m, check=False)
            if out.returncode != 0:
                c.check(False, f"umount {m}", out.stderr.strip())
        for dev in loops:
            sh("losetup", "-d", dev, check=False)
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    main_with_dirs("test_disk_faults", run)
