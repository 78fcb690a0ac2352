#!/usr/bin/python3
"""hsmjwtd under systemd's signals (issue 6, SPEC §8), with a NOTIFY_SOCKET
the test binds itself:

  - READY=1 once serving;
  - SIGHUP with a good change (log_level debug, access_ttl 1234, log_file
    set): RELOADING=1 (MONOTONIC_USEC), then READY=1 "configuration
    reloaded"; debug lines appear, a new access token lives 1234 s, lines go
    to log_file;
  - SIGHUP with a bad value, an unknown key, a restart-only key (state_dir)
    changed: RELOADING=1, READY=1 whose STATUS names the key, the same PID,
    still serving with the previous values; hsmjwt_config_reloads_total
    counts ok and refused;
  - SIGUSR1 after log_file was moved away: the lines up to the reopen are in
    the moved file, the later ones in a new file at the path, every request
    line exactly once across the two;
  - SIGTERM while a POST /token is held inside the token (libfaultp11
    hang-sign, only when this build has it): STOPPING=1, the held request is
    answered 200 with its token once the token answers, the process exits 0,
    and after a restart (log_file from the start) GET /tokens/{jti} finds its
    record.

Usage: test_signals.py BUILD_DIR SOURCE_DIR [FAULT_MODULE SOFTHSM_MODULE]
(exit 0 pass, 1 fail, 77 skip)
"""

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Token, Workdir, faultp11_command, faultp11_stat,  # noqa: E402
                            jwt_parts, require_tools, run_daemon_test, run_main)

ALGORITHMS = ["ES256"]
NOTIFY_WAIT = 60.0        # a notification comes at once; ASan on 2 shared cores is slow
HOLD_SEEN_WITHIN = 30.0   # for the fault module to report the held sign
EXIT_WITHIN = 60.0        # SIGTERM to exit, the held request included
LOG_WAIT = 30.0           # for a line to reach log_file
ROTATE_BATCH = 20         # requests logged before the move, between move and SIGUSR1, after
AUDIENCE = "api-signals"


class Notify:
    """The AF_UNIX datagram socket systemd would listen on (NOTIFY_SOCKET):
    every message received, in order, as a dict of its KEY=VALUE lines."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []
        self.seen = 0          # messages wait() has looked at

    def _read(self, timeout):
        self.sock.settimeout(max(timeout, 0.01))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return False
        fields = {}
        for line in data.decode(errors="replace").split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                fields[k] = v
        self.messages.append(fields)
        return True

    def wait(self, pred, timeout=NOTIFY_WAIT):
        """The first message not looked at yet that satisfies pred, reading
        more as they come; None at the deadline.  Messages before it are
        passed over (and stay in self.messages)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.seen < len(self.messages):
                m = self.messages[self.seen]
                self.seen += 1
                if pred(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                return None

    def close(self):
        self.sock.close()


class FileDaemon(Daemon):
    """A daemon whose reloadable keys, and state_dir, come from its config
    file: the harness's HSMJWT_LOG_LEVEL and HSMJWT_STATE_DIR would override
    whatever the file says (the environment wins, SPEC §3)."""

    FILE_KEYS = ("HSMJWT_LOG_LEVEL", "HSMJWT_STATE_DIR")

    def env(self):
        env = super().env()
        for k in self.FILE_KEYS:
            env.pop(k, None)
        return env

    def ctl(self, *args, timeout=120):
        return subprocess.run([os.path.join(self.build_dir, "hsmjwtctl"), *args], env=super().env(),
                              capture_output=True, text=True, timeout=timeout)


def write_config(path, **keys):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("# test_signals\n")
        for k, v in keys.items():
            f.write(f"{k} = {v}\n")
    os.replace(tmp, path)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def wait_for_text(path, needle, timeout=LOG_WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in read(path):
            return True
        time.sleep(0.05)
    return needle in read(path)


def monotonic_usec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Signals:
    def __init__(self, c, work, d, notify, conf, base_keys, log_file):
        self.c = c
        self.work = work
        self.d = d
        self.notify = notify
        self.conf = conf
        self.base = dict(base_keys)
        self.log_file = log_file
        self.admin = None
        self.pid = None
        self.reload_ok = 0
        self.reload_refused = 0

    # ---- helpers ----------------------------------------------------------

    def issue(self, expect=200):
        r = self.d.request("POST", "/token", {"subject": "signals", "audience": AUDIENCE},
                           {"Authorization": f"Bearer {self.admin}"})
        body = r.json() or {}
        if r.status != expect or "access_token" not in body:
            return r, None
        return r, jwt_parts(body["access_token"])[1]

    def lifetime(self, what):
        r, claims = self.issue()
        if not self.c.check(claims is not None, f"{what}: POST /token answers 200 with an access token",
                            f"{r.status} {r.body[:200]!r}"):
            return None
        return claims["exp"] - claims["iat"]

    def metric(self, name, labels):
        r = self.d.request("GET", "/metrics")
        if r.status != 200:
            return None
        m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", r.body.decode(), re.M)
        return float(m.group(1)) if m else 0.0

    def hup(self, what):
        """SIGHUP: (RELOADING message, the READY that follows) or Nones."""
        before = monotonic_usec()
        os.kill(self.pid, signal.SIGHUP)
        reloading = self.notify.wait(lambda m: m.get("RELOADING") == "1")
        after = monotonic_usec()
        c = self.c
        if c.check(reloading is not None, f"{what}: RELOADING=1", repr(self.notify.messages[-3:])):
            usec = reloading.get("MONOTONIC_USEC", "")
            c.check(usec.isdigit() and before <= int(usec) <= after,
                    f"{what}: with MONOTONIC_USEC of the signal's time (CLOCK_MONOTONIC)",
                    f"{usec!r} not in [{before}, {after}]")
        ready = self.notify.wait(lambda m: m.get("READY") == "1")
        c.check(ready is not None, f"{what}: then READY=1", repr(self.notify.messages[-3:]))
        return reloading, ready

    def same_pid(self, what):
        self.c.check(self.d.proc is not None and self.d.proc.poll() is None and self.d.proc.pid == self.pid,
                     f"{what}: the same process (pid {self.pid}) still runs")

    # ---- the stages ---------------------------------------------------------

    def start(self):
        c = self.c
        c.section("start: READY=1")
        self.d.start()
        self.pid = self.d.proc.pid
        ready = self.notify.wait(lambda m: m.get("READY") == "1")
        c.check(ready is not None and ready.get("STATUS") == "serving",
                f"READY=1 with STATUS=serving once healthy (pid {self.pid})", repr(self.notify.messages))
        self.admin = self.d.mint("admin", ttl=3600)
        c.equal(self.lifetime("before any reload"), int(self.base["access_ttl"]),
                "an access token lives access_ttl from the file")
        r = self.d.request("POST", "/token/verify", b"{not json", {"Content-Type": "application/json"})
        c.equal(r.status, 400, "a body that is not JSON is refused")
        c.check('msg="JSON refused"' not in self.d.log_text(), "at log_level info, no debug line")

    def good_reload(self):
        c = self.c
        c.section("SIGHUP with a good change: log_level debug, access_ttl 1234, log_file set")
        self.base.update(log_level="debug", access_ttl="1234", log_file=self.log_file)
        write_config(self.conf, **self.base)
        _, ready = self.hup("good reload")
        c.equal((ready or {}).get("STATUS"), "serving; configuration reloaded", "STATUS says it was reloaded")
        self.reload_ok += 1
        c.check(wait_for_text(self.log_file, 'msg="configuration reloaded" changed=log_level,log_file,access_ttl'),
                "log_file has the reload's line naming the keys changed", read(self.log_file)[-500:])
        try:
            mode = stat.S_IMODE(os.stat(self.log_file).st_mode)
        except FileNotFoundError:
            mode = None
        c.equal(mode, 0o600, "log_file is created 0600")
        c.equal(self.lifetime("after the reload"), 1234, "a new access token lives 1234 s")
        r = self.d.request("POST", "/token/verify", b"{not json", {"Content-Type": "application/json"})
        c.equal(r.status, 400, "a body that is not JSON is refused")
        c.check(wait_for_text(self.log_file, 'level=debug msg="JSON refused"'),
                "at log_level debug the refusal's debug line is logged", read(self.log_file)[-500:])
        c.check('msg="configuration reloaded"' not in self.d.log_text(),
                "and nothing after the reopen goes to standard error")
        self.same_pid("good reload")

    def bad_reloads(self):
        c = self.c
        cases = [
            ("a bad value", dict(self.base, access_ttl="soon"), "access_ttl"),
            ("an unknown key", dict(self.base, acces_ttl="600"), "acces_ttl"),
            ("a restart-only key changed", dict(self.base, state_dir=os.path.join(self.work, "elsewhere")),
             "state_dir"),
        ]
        for what, keys, key in cases:
            c.section(f"SIGHUP with {what} ({key})")
            write_config(self.conf, **keys)
            failed_before = read(self.log_file).count('msg="configuration reload failed')
            _, ready = self.hup(what)
            status = (ready or {}).get("STATUS", "")
            c.check(status.startswith("serving with the previous configuration: reload failed: ") and key in status,
                    f"{what}: STATUS keeps the previous configuration and names {key}", repr(status))
            self.reload_refused += 1
            lines = [ln for ln in read(self.log_file).splitlines()
                     if 'msg="configuration reload failed, the running configuration stays"' in ln]
            c.check(len(lines) == failed_before + 1 and "level=error" in lines[-1] and key in lines[-1],
                    f"{what}: one error line in the log naming {key}", repr(lines[-1:]))
            self.same_pid(what)
            r = self.d.request("GET", "/health")
            c.equal(r.status, 200, f"{what}: still serving (/health)")
            c.equal(self.lifetime(what), 1234, f"{what}: access_ttl is still 1234")
        c.section("SIGHUP with the good file back: nothing changed")
        write_config(self.conf, **self.base)
        _, ready = self.hup("the same file again")
        c.equal((ready or {}).get("STATUS"), "serving; configuration reloaded", "reloaded")
        self.reload_ok += 1
        c.check(wait_for_text(self.log_file, 'msg="configuration reloaded" changed=none'),
                "the log line says nothing changed")
        ok = self.metric("hsmjwt_config_reloads_total", 'result="ok"')
        refused = self.metric("hsmjwt_config_reloads_total", 'result="refused"')
        if ok is None:
            print("  (no /metrics in this build: reload counters not checked)")
        else:
            c.equal((ok, refused), (float(self.reload_ok), float(self.reload_refused)),
                    "hsmjwt_config_reloads_total counts the reloads by result")

    def rotate(self):
        c = self.c
        c.section("SIGUSR1 after log_file was moved away")
        moved = self.log_file + ".1"
        done = []
        stop = threading.Event()
        errors = []

        def client():
            n = 0
            while not stop.is_set():
                try:
                    r = self.d.request("GET", f"/missing-{n}", record=False)
                except OSError as e:
                    errors.append(f"{n}: {e}")
                    break
                if r.status != 404:
                    errors.append(f"{n}: {r.status}")
                done.append(n)
                n += 1

        def wait_done(count):
            deadline = time.monotonic() + LOG_WAIT
            while len(done) < count and time.monotonic() < deadline and th.is_alive():
                time.sleep(0.01)

        th = threading.Thread(target=client, name="rotate-client", daemon=True)
        th.start()
        wait_done(ROTATE_BATCH)
        os.rename(self.log_file, moved)
        wait_done(len(done) + ROTATE_BATCH)
        os.kill(self.pid, signal.SIGUSR1)
        reopened = wait_for_text(self.log_file, 'msg="log file reopened"')
        c.check(reopened, "a new file at the path has the reopen line")
        wait_done(len(done) + ROTATE_BATCH)
        stop.set()
        th.join(30)
        c.check(not th.is_alive() and not errors, f"{len(done)} requests answered 404 meanwhile", repr(errors[:3]))
        after = []
        for i in range(5):
            r = self.d.request("GET", f"/after-{i}", record=False)
            after.append(r.status)
        c.equal(after, [404] * 5, "five more requests after the reopen")
        # A request's line is written before its reply goes out: nothing
        # to wait for.
        old, new = read(moved), read(self.log_file)
        counts = [old.count(f'path="/missing-{n}" ') + new.count(f'path="/missing-{n}" ') for n in done]
        lost = [n for n, k in zip(done, counts) if k == 0]
        twice = [n for n, k in zip(done, counts) if k > 1]
        c.check(not lost and not twice, f"each of the {len(done)} requests' lines is in exactly one of the two files",
                f"lost {lost[:10]}, twice {twice[:10]}")
        c.check(any(f'path="/missing-{n}" ' in old for n in done) and
                any(f'path="/missing-{n}" ' in new for n in done),
                "some went to the moved file, the later ones to the new file")
        c.check('msg="log file reopened"' not in old, "the moved file does not have the reopen line")
        c.check(all(f'path="/after-{i}" ' in new and f'path="/after-{i}" ' not in old for i in range(5)),
                "lines after the reopen are in the new file only")
        # Every line of the moved file came before every line of the new
        # one: no request line in the moved file after the reopen.
        first_new = min((n for n in done if f'path="/missing-{n}" ' in new), default=None)
        last_old = max((n for n in done if f'path="/missing-{n}" ' in old), default=None)
        c.check(first_new is None or last_old is None or last_old < first_new,
                "the two files split the requests in order", f"last in the moved file {last_old}, "
                f"first in the new one {first_new}")
        try:
            mode = stat.S_IMODE(os.stat(self.log_file).st_mode)
        except FileNotFoundError:
            mode = None
        c.equal(mode, 0o600, "the new file is 0600")
        self.same_pid("SIGUSR1")

    def drain(self, control, stats):
        c = self.c
        c.section("SIGTERM while a POST /token is held inside the token")
        held = {}

        def held_request():
            try:
                r, claims = self.issue()
                held.update(response=r, claims=claims)
            except OSError as e:
                held.update(error=f"{type(e).__name__}: {e}")

        faultp11_command(control, "hang-sign\n")
        th = threading.Thread(target=held_request, name="held", daemon=True)
        th.start()
        deadline = time.monotonic() + HOLD_SEEN_WITHIN
        while (faultp11_stat(stats, "hanging") or 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        if not c.check((faultp11_stat(stats, "hanging") or 0) >= 1 and th.is_alive(),
                       "the module holds the sign and POST /token has no answer yet", repr(held)):
            faultp11_command(control, "forward\n")
            return None
        os.kill(self.pid, signal.SIGTERM)
        stopping = self.notify.wait(lambda m: m.get("STOPPING") == "1")
        c.check(stopping is not None, "STOPPING=1 once SIGTERM is taken", repr(self.notify.messages[-3:]))
        c.check(th.is_alive() and self.d.proc.poll() is None,
                "the held request is still open and the process still runs", repr(held))
        faultp11_command(control, "forward\n")
        th.join(EXIT_WITHIN)
        r = held.get("response")
        claims = held.get("claims")
        c.check(r is not None and r.status == 200 and claims is not None,
                "the held POST /token is answered 200 with its token",
                repr(held) if r is None else f"{r.status} {r.body[:300]!r}")
        try:
            code = self.d.proc.wait(timeout=EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            code = None
            self.d.kill()
        self.d.proc = None
        c.equal(code, 0, f"hsmjwtd (pid {self.pid}) exits 0")
        text = read(self.log_file)
        c.check('msg="stopping" signal=Terminated' in text and 'msg="stopped"' in text,
                "the log says stopping, then stopped")
        c.check('unwritten=' not in text, "no reply was left unwritten or waiting at the stop")
        return claims

    def after_restart(self, claims):
        c = self.c
        c.section("restart (log_file from the start): the held token's record is there")
        size_before = len(read(self.log_file))
        self.d.start(keep_port=True)
        self.pid = self.d.proc.pid
        ready = self.notify.wait(lambda m: m.get("READY") == "1")
        c.check(ready is not None, "READY=1 again")
        c.check('msg="listening"' in read(self.log_file)[size_before:],
                "the restarted daemon logs to log_file from the start")
        if claims is None:
            return
        r = self.d.request("GET", f"/tokens/{claims['jti']}", headers={"Authorization": f"Bearer {self.admin}"})
        rec = r.json() or {}
        c.check(r.status == 200 and rec.get("jti") == claims["jti"],
                "GET /tokens/{jti} finds the record of the token answered during the stop",
                f"{r.status} {r.body[:300]!r}")


def run(build_dir, source_dir, fault_module="", softhsm_module=""):
    require_tools(["softhsm2-util"])
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_signals: FAILED: {build_dir}/{exe} is not built")
            return False

    c = Checker("test_signals")
    work = Workdir("hsmjwt-signals-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-signals")
    notify = Notify(os.path.join(work.path, "notify.sock"))
    conf = os.path.join(work.path, "hsmjwt.conf")
    log_file = os.path.join(work.path, "hsmjwt.log")
    control = os.path.join(work.path, "control")
    stats = os.path.join(work.path, "stats")
    base = {"state_dir": token.state_dir, "log_level": "info", "access_ttl": "600", "fsync": "always"}
    write_config(conf, **base)
    env = {"NOTIFY_SOCKET": notify.path}
    if fault_module:
        faultp11_command(control, "forward\n")
        env.update({"HSMJWT_PKCS11_MODULE": fault_module, "FAULTP11_TARGET": softhsm_module,
                    "FAULTP11_CONTROL": control, "FAULTP11_STATS": stats})
    d = FileDaemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"), env,
                   args=["--config", conf])
    s = Signals(c, work.path, d, notify, conf, base, log_file)

    def body():
        s.start()
        s.good_reload()
        s.bad_reloads()
        s.rotate()
        if not fault_module:
            if os.environ.get("TEST_REQUIRE_ALL") == "1":
                c.check(False, "the fault module is built (TEST_REQUIRE_ALL=1)")
            print("-- SIGTERM during a held request: skipped (no fault module in this build)")
            return
        if not os.path.exists(fault_module):
            c.check(False, f"{fault_module} is built")
            return
        claims = s.drain(control, stats)
        s.after_restart(claims)

    def log_checks(log):
        text = log + read(log_file) + read(log_file + ".1")
        c.check(token.pin not in text, "no log holds the PIN")
        c.check(s.admin is None or s.admin.split(".")[-1] not in text, "no log holds the admin token's signature")
        if c.failed:
            print("-- log_file tail")
            print(read(log_file)[-4000:])

    try:
        return run_daemon_test(c, work, d, body, log_checks)
    finally:
        notify.close()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 5):
        print("usage: test_signals.py BUILD_DIR SOURCE_DIR [FAULT_MODULE SOFTHSM_MODULE]", file=sys.stderr)
        sys.exit(2)
    args = [os.path.abspath(a) if a else "" for a in sys.argv[1:]]
    run_main("test_signals", lambda: run(*args))
