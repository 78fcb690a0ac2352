#!/usr/bin/python3
"""integration.pin: hsmjwt never locks a token's PIN by trying a wrong one
again (issue 6).  Real tokens count wrong PINs and lock the user PIN after a
few (a Nitrokey HSM after 3), an outage only the security officer ends.

Every process here loads libfaultp11.so (tests/faultp11/faultp11.c) in front
of a throwaway SoftHSM token; its stats file counts the C_Login calls of the
process that wrote it last (`pid', `logins'):

  1. start: a wrong pin_file (SoftHSM's own CKR_PIN_INCORRECT) and, with the
     right one, `login-error CKR_PIN_LOCKED': hsmjwtd exits 78 (EX_CONFIG,
     which the unit's RestartPreventExitStatus= names) after exactly one
     C_Login, its log naming the CKR and the remedy, systemd told why in
     STATUS=; `login-error CKR_DEVICE_ERROR' (not the PIN's fault) exits 1,
     which the unit restarts.  `hsmjwtctl status' with a wrong PIN: one
     C_Login, a message saying the PIN was refused.
  2. a running daemon that the token logs out and whose logins it now
     refuses (`logout CKR_PIN_INCORRECT'): one C_Login after the fault, one
     error line naming CKR_PIN_INCORRECT and saying to fix the PIN source and
     restart; then over 10 s with the fault in force (longer than the 8 s
     backoff cap) and 5 s more after clearing it: no C_Login at all, POST
     /token 503 hsm_unavailable, /health 503 with hsm "unavailable", the
     earlier token still verifying; SIGTERM exits 0, and a restart serves.
  3. contrast: `logout CKR_DEVICE_ERROR' (a login refused for another
     reason) keeps the backoff — C_Login is tried again — and once cleared
     issuance recovers.
No log holds either PIN.  No verdict depends on timing: the windows only
give a broken daemon the time to show a retry.

Usage: test_pin.py BUILD_DIR SOURCE_DIR FAULT_MODULE SOFTHSM_MODULE
       (exit 0 pass, 1 fail, 77 skip: FAULT_MODULE empty, no fault module
       in this build)
"""

import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Token, Workdir, faultp11_command, faultp11_stat,  # noqa: E402
                            free_port, main_with_fault_module)

EX_CONFIG = 78            # <sysexits.h>
EXIT_WAIT = 90.0          # a start that fails: key-less, but ASan on 2 shared cores is slow
LINE_WAIT = 30.0          # for the daemon to meet the fault and log its verdict
QUIET_WINDOW = 10.0       # longer than the keyring's 8 s backoff cap (keyring.h)
CLEARED_WINDOW = 5.0
RETRY_WAIT = 30.0         # for a second C_Login under a fault that is not the PIN's
RECOVERY_LIMIT = 30.0
HTTP_TIMEOUT = 10.0
POLL = 0.5
AUDIENCE = "api-pin"
WRONG_PIN = "Wrong-Pin-0042-not-the-token's"
REFUSED_LINE = "the token refused the PIN"


class Notify:
    """The AF_UNIX datagram socket systemd would listen on: every message."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def messages(self):
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode(errors="replace"))
            except BlockingIOError:
                return out

    def close(self):
        self.sock.close()


class Pin:
    def __init__(self, c, work, build_dir, source_dir, token, fault_env, control, stats):
        self.c = c
        self.work = work
        self.build_dir = build_dir
        self.source_dir = source_dir
        self.token = token
        self.fault_env = fault_env
        self.control = control
        self.stats = stats
        self.logs = []            # every log path, for the final PIN scan
        self.wrong_pin_file = os.path.join(work, "wrong-pin")
        with open(self.wrong_pin_file, "w") as f:
            f.write(WRONG_PIN + "\n")
        os.chmod(self.wrong_pin_file, 0o600)

    def command(self, text):
        faultp11_command(self.control, text + "\n")

    def stat(self, name):
        return faultp11_stat(self.stats, name)

    def daemon(self, log_name, **env):
        d = Daemon(self.build_dir, self.token, ["ES256"], os.path.join(self.work, log_name),
                   {**self.fault_env, "HSMJWT_RSA_BITS": "2048", **env})
        self.logs.append(d.log_path)
        return d

    # ---- 1. start ------------------------------------------------------

    def start_refused(self, what, command, pin_file, want_code, want_rv):
        """hsmjwtd started under command with pin_file: (exit code, log)."""
        c = self.c
        c.section(f"start: {what}")
        self.command(command)
        d = self.daemon(f"start-{want_rv}.log", HSMJWT_PIN_FILE=pin_file)
        d.port = free_port()
        notify_path = os.path.join(self.work, f"notify-{want_rv}")
        notify = Notify(notify_path)
        env = d.env()
        env["NOTIFY_SOCKET"] = notify_path
        try:
            with open(d.log_path, "w") as log:
                proc = subprocess.Popen([os.path.join(self.build_dir, "hsmjwtd")], env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=EXIT_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
            messages = notify.messages()
        finally:
            notify.close()
        log = d.log_text()
        c.equal(code, want_code, f"{what}: hsmjwtd exits {want_code}")
        c.equal((self.stat("pid"), self.stat("logins")), (proc.pid, 1),
                f"{what}: its process called C_Login exactly once (faultp11 stats: pid, logins)")
        lines = [line for line in log.splitlines() if "level=error" in line]
        if want_code == EX_CONFIG:
            refused = [line for line in lines if REFUSED_LINE in line]
            c.check(len(refused) == 1 and f"rv={want_rv} " in refused[0] and "fix the PIN source" in refused[0],
                    f"{what}: one error line says the token refused the PIN, names {want_rv} and what to do",
                    log[-1500:])
            c.check(any("STATUS=" in m and "refused the PIN" in m for m in messages),
                    f"{what}: systemd is told why in STATUS=", repr(messages))
            c.check(not any("READY=1" in m for m in messages), f"{what}: and never READY=1", repr(messages))
        else:
            c.check(any(f"rv={want_rv}" in line for line in lines) and REFUSED_LINE not in log,
                    f"{what}: the log names {want_rv}, not a refused PIN", log[-1500:])
        return code, log

    def unit_does_not_restart(self):
        """The exit status above is only worth its number if the unit keeps
        systemd from starting the daemon again on it."""
        c = self.c
        with open(os.path.join(self.source_dir, "systemd", "hsmjwtd.service.in")) as f:
            unit = f.read()
        restart = re.findall(r"^Restart=(\S+)", unit, re.M)
        prevent = [w for line in re.findall(r"^RestartPreventExitStatus=(.*)$", unit, re.M) for w in line.split()]
        c.check(restart == ["on-failure"] and str(EX_CONFIG) in prevent,
                f"hsmjwtd.service restarts on failure but not on {EX_CONFIG} (RestartPreventExitStatus=)",
                f"Restart={restart} RestartPreventExitStatus={prevent}")

    def ctl_refused(self):
        c = self.c
        c.section("hsmjwtctl status with a wrong PIN")
        self.command("forward")
        d = self.daemon("unused.log", HSMJWT_PIN_FILE=self.wrong_pin_file)
        d.port = free_port()
        proc = subprocess.Popen([os.path.join(self.build_dir, "hsmjwtctl"), "status"], env=d.env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        c.check(proc.returncode not in (0, None), "hsmjwtctl status fails", f"exit {proc.returncode}")
        c.equal((self.stat("pid"), self.stat("logins")), (proc.pid, 1), "hsmjwtctl called C_Login exactly once")
        c.check("rv=CKR_PIN_INCORRECT" in err and "refused the PIN" in err and "fix pin_file" in err,
                "its message says the token refused the PIN, names CKR_PIN_INCORRECT and what to fix", err.strip())
        c.check(WRONG_PIN not in out + err and self.token.pin not in out + err, "and shows no PIN")

    # ---- 2. a running daemon -------------------------------------------

    def issue(self, d, admin):
        body = {"subject": "pin-test", "audience": AUDIENCE, "expires_in": 600, "alg": "ES256"}
        return d.request("POST", "/token", body, {"Authorization": f"Bearer {admin}"}, timeout=HTTP_TIMEOUT)

    def verify(self, d, token):
        r = d.request("POST", "/token/verify", {"token": token, "audience": AUDIENCE}, timeout=HTTP_TIMEOUT)
        return r.status == 200 and (r.json() or {}).get("valid") is True, r

    @staticmethod
    def unavailable(r):
        return r.status == 503 and (r.json() or {}).get("error") == "hsm_unavailable" and r.header("Retry-After")

    @staticmethod
    def degraded(r):
        doc = r.json() or {}
        return (r.status == 503 and (doc.get("status"), doc.get("hsm"), doc.get("hsm_failure")) ==
                ("degraded", "unavailable", "pin_rejected"))

    @staticmethod
    def log_since(d, mark):
        with open(d.log_path, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def wait_log(self, d, mark, needle, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_since(d, mark)
            if needle in text:
                return text
            if d.proc.poll() is not None:
                break
            time.sleep(0.2)
        return None

    def quiet(self, d, admin, base, seconds, what, logins):
        """For seconds: issuance 503, verification of base valid, /health
        degraded, and no C_Login (stats unchanged, still the daemon's)."""
        c = self.c
        wrong, rounds = [], 0
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            r = self.issue(d, admin)
            ok, v = self.verify(d, base)
            h = d.request("GET", "/health", timeout=HTTP_TIMEOUT)
            rounds += 1
            if not self.unavailable(r):
                wrong.append(f"POST /token {r.status} {r.body[:120]!r}")
            if not ok:
                wrong.append(f"POST /token/verify {v.status} {v.body[:120]!r}")
            if not self.degraded(h):
                wrong.append(f"GET /health {h.status} {h.body[:120]!r}")
            time.sleep(POLL)
        c.check(not wrong and rounds > 0, f"{what}: {rounds} rounds over {seconds:.0f} s: POST /token 503 "
                "hsm_unavailable with Retry-After, the earlier token verifies, /health 503 hsm unavailable "
                "pin_rejected",
                "; ".join(wrong[:3]))
        c.equal((self.stat("pid"), self.stat("logins")), (d.proc.pid, logins),
                f"{what}: no C_Login meanwhile (the daemon's stats still say {logins})")
        c.check(d.proc.poll() is None, f"{what}: the daemon still runs (degraded)")

    def running(self):
        c = self.c
        c.section("a running daemon: logged out, the PIN now refused")
        self.command("forward")
        d = self.daemon("running.log")
        d.start()
        try:
            pid = d.proc.pid
            admin = d.mint("admin")
            r = self.issue(d, admin)
            base = (r.json() or {}).get("access_token") if r.status == 200 else None
            if not c.check(base is not None, "baseline: POST /token 200", f"{r.status} {r.body[:200]!r}"):
                return
            c.check(self.verify(d, base)[0], "baseline: the token verifies")
            mark = os.path.getsize(d.log_path)
            self.command("logout CKR_PIN_INCORRECT")
            r = self.issue(d, admin)
            c.check(self.unavailable(r), "POST /token after the logout: 503 hsm_unavailable with Retry-After",
                    f"{r.status} {r.body[:200]!r}")
            text = self.wait_log(d, mark, REFUSED_LINE, LINE_WAIT)
            if not c.check(text is not None, f"within {LINE_WAIT:.0f} s the log says the token refused the PIN",
                           self.log_since(d, mark)[-1500:]):
                return
            refused = [line for line in text.splitlines() if REFUSED_LINE in line]
            c.check(len(refused) == 1 and "level=error" in refused[0] and "rv=CKR_PIN_INCORRECT " in refused[0] and
                    "fix the PIN source" in refused[0] and "restart hsmjwtd" in refused[0],
                    "one error line names CKR_PIN_INCORRECT and says to fix the PIN source, then restart",
                    refused[0] if refused else "")
            c.equal((self.stat("pid"), self.stat("logins")), (pid, 2),
                    "the daemon's C_Login count: 1 at start + 1 after the fault")
            # The refusal is logged inside the recovery, just before it marks
            # the failure pin_rejected: wait for /health to say so, then hold.
            deadline = time.monotonic() + LINE_WAIT
            h = d.request("GET", "/health", timeout=HTTP_TIMEOUT)
            while not self.degraded(h) and time.monotonic() < deadline:
                time.sleep(POLL)
                h = d.request("GET", "/health", timeout=HTTP_TIMEOUT)
            c.check(self.degraded(h), "/health 503 degraded, hsm unavailable, hsm_failure pin_rejected",
                    f"{h.status} {h.body[:200]!r}")
            self.quiet(d, admin, base, QUIET_WINDOW, "fault in force", 2)
            self.command("forward")
            self.quiet(d, admin, base, CLEARED_WINDOW, "fault cleared, not restarted", 2)
            text = self.log_since(d, mark)
            c.equal(text.count(REFUSED_LINE), 1, "still one refused-PIN line in the log")
            c.equal(text.count('"login failed"'), 0, "and no other login line")
            c.check("token recovered" not in text, "and no recovery")
        finally:
            code = d.stop()
        c.equal(code, 0, "the degraded daemon exits 0 on SIGTERM")

        c.section("restarted with the fault cleared")
        d2 = self.daemon("restarted.log")
        d2.start()
        try:
            r = self.issue(d2, d2.mint("admin"))
            c.equal(r.status, 200, "a restart serves: POST /token 200")
        finally:
            code = d2.stop()
        c.equal(code, 0, "it exits 0 on SIGTERM")

    # ---- 3. not the PIN's fault ------------------------------------------

    def other_failure(self):
        c = self.c
        c.section("contrast: a login refused with CKR_DEVICE_ERROR keeps the backoff")
        self.command("forward")
        d = self.daemon("device.log")
        d.start()
        try:
            pid = d.proc.pid
            admin = d.mint("admin")
            mark = os.path.getsize(d.log_path)
            self.command("logout CKR_DEVICE_ERROR")
            r = self.issue(d, admin)
            c.check(self.unavailable(r), "POST /token after the logout: 503 hsm_unavailable",
                    f"{r.status} {r.body[:200]!r}")
            deadline = time.monotonic() + RETRY_WAIT
            while time.monotonic() < deadline and not (self.stat("pid") == pid and (self.stat("logins") or 0) >= 3):
                time.sleep(0.2)
            c.check(self.stat("pid") == pid and (self.stat("logins") or 0) >= 3,
                    f"within {RETRY_WAIT:.0f} s the daemon tried C_Login again (at least twice after the fault)",
                    f"pid {self.stat('pid')} logins {self.stat('logins')}")
            text = self.log_since(d, mark)
            c.check(REFUSED_LINE not in text and "rv=CKR_DEVICE_ERROR" in text,
                    "the log names CKR_DEVICE_ERROR, not a refused PIN", text[-1500:])
            self.command("forward")
            deadline = time.monotonic() + RECOVERY_LIMIT
            status = None
            while time.monotonic() < deadline:
                status = self.issue(d, admin).status
                if status == 200:
                    break
                time.sleep(0.2)
            c.equal(status, 200, f"cleared: POST /token 200 again within {RECOVERY_LIMIT:.0f} s")
            c.check("token recovered" in self.log_since(d, mark), "the log says the token recovered")
        finally:
            code = d.stop()
        c.equal(code, 0, "it exits 0 on SIGTERM")


def run(build_dir, source_dir, fault_module, softhsm_module):
    if not fault_module:
        print("test_pin: SKIPPED: this build has no libfaultp11.so")
        sys.exit(77)
    c = Checker("test_pin")
    if not os.path.exists(fault_module):
        print(f"test_pin: FAILED: {fault_module} is not built (cmake --build {build_dir} --target faultp11)")
        return False
    work = Workdir("hsmjwt-pin-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-pin")
    control = os.path.join(work.path, "control")
    stats = os.path.join(work.path, "stats")
    fault_env = {
        "HSMJWT_PKCS11_MODULE": fault_module,
        "FAULTP11_TARGET": softhsm_module,
        "FAULTP11_CONTROL": control,
        "FAULTP11_STATS": stats,
    }
    p = Pin(c, work.path, build_dir, source_dir, token, fault_env, control, stats)
    try:
        p.start_refused("a wrong pin_file", "forward", p.wrong_pin_file, EX_CONFIG, "CKR_PIN_INCORRECT")
        p.start_refused("the right PIN, login-error CKR_PIN_LOCKED", "login-error CKR_PIN_LOCKED", token.pin_file,
                        EX_CONFIG, "CKR_PIN_LOCKED")
        p.start_refused("the right PIN, login-error CKR_DEVICE_ERROR", "login-error CKR_DEVICE_ERROR",
                        token.pin_file, 1, "CKR_DEVICE_ERROR")
        p.unit_does_not_restart()
        p.ctl_refused()
        p.running()
        p.other_failure()
    except RuntimeError as e:
        c.check(False, "the daemon runs", str(e))
    c.section("logs")
    logs = ""
    for path in p.logs:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                logs += f.read()
    c.check(logs and token.pin not in logs and WRONG_PIN not in logs, "no log holds the right or the wrong PIN")
    if c.failed:
        for path in p.logs:
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    print(f"-- {os.path.basename(path)} (tail)\n{f.read()[-3000:]}")
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    main_with_fault_module("test_pin", run)
