#!/usr/bin/python3
"""Start-up rules of hsmjwtd: `--check-config` names what is wrong, keys this
build cannot honour are refused rather than ignored, one daemon per
state_dir (SPEC §7), one owner per listening port, and the development PIN
leaves no trace in the process environment or the log.

Usage: test_startup.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import Checker, Daemon, Token, Workdir, clean_env, free_port, run_main  # noqa: E402

EXIT_TIMEOUT = 90.0


def check_config(build_dir, env_extra, args=()):
    env = clean_env()
    env.update(env_extra)
    return subprocess.run([os.path.join(build_dir, "hsmjwtd"), "--check-config", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def config_checks(c, build_dir, work):
    c.section("--check-config")
    out = check_config(build_dir, {})
    c.equal(out.returncode, 0, "the defaults are a valid configuration")
    cases = [
        ({"HSMJWT_RSA_BITS": "1000"}, "rsa_bits"),
        ({"HSMJWT_BOGUS": "1"}, "HSMJWT_BOGUS"),
        ({"HSMJWT_ACCESS_TTL": "99999999", "HSMJWT_MAX_TTL": "3600"}, "access_ttl"),
        ({"HSMJWT_ALGORITHMS": "ES256 ES512"}, "algorithms"),   # a JWS alg hsmjwt holds no keys for
        ({"HSMJWT_RATE_LIMIT": "-5"}, "rate_limit"),
        ({"HSMJWT_MAX_CONNECTIONS": "1", "HSMJWT_WORKERS": "2"}, "max_connections"),
        ({"HSMJWT_ADMIN_LISTEN": "127.0.0.1:9999", "HSMJWT_LISTEN": "127.0.0.1:9999"}, "admin_listen"),
    ]
    for env, key in cases:
        out = check_config(build_dir, env)
        c.equal(out.returncode, 1, f"{env} is refused")
        c.check(key in out.stderr, f"the message names {key}", out.stderr.strip())
    path = os.path.join(work, "bad.conf")
    with open(path, "w") as f:
        f.write("# hsmjwt.conf\nleeway = 10\nlistne = 127.0.0.1:1\n")
    out = check_config(build_dir, {}, ["--config", path])
    c.equal(out.returncode, 1, "a config file with an unknown key is refused")
    c.check(f"{path}:3" in out.stderr and "listne" in out.stderr, "the message names file:line and the key",
            out.stderr.strip())
    out = check_config(build_dir, {"HSMJWT_PIN": "Secret-Pin-Marker-42", "HSMJWT_LEEWAY": "9999"})
    c.equal(out.returncode, 1, "a bad leeway is refused")
    c.check("Secret-Pin-Marker-42" not in out.stderr + out.stdout, "no message shows the PIN")


def wait_exit(proc):
    try:
        return proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def second_daemon(c, build_dir, first, work, log_name, **overrides):
    """Starts another hsmjwtd with first's configuration changed by overrides;
    returns (exit code, log text)."""
    env = first.env()
    env.update(overrides)
    log_path = os.path.join(work, log_name)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([os.path.join(build_dir, "hsmjwtd")], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    code = wait_exit(proc)
    with open(log_path, errors="replace") as f:
        return code, f.read()


def exclusivity_checks(c, build_dir, first, work):
    c.section("one daemon per state_dir, one owner per port")
    code, log = second_daemon(c, build_dir, first, work, "same-state.log",
                              HSMJWT_LISTEN=f"127.0.0.1:{free_port()}")
    c.check(code not in (0, None), "a second daemon on the same state_dir refuses to start", f"exit {code}")
    c.check("another hsmjwtd already runs on this state_dir" in log, "and says why", log[-500:])

    other_state = os.path.join(work, "other-state")
    code, log = second_daemon(c, build_dir, first, work, "same-port.log", HSMJWT_STATE_DIR=other_state)
    c.check(code not in (0, None), "a second daemon on the same port refuses to start", f"exit {code}")
    c.check("cannot listen" in log or "in use" in log, "and says why", log[-500:])
    c.equal(first.request("GET", "/health").status, 200, "the first daemon still serves")


def dev_pin_checks(c, build_dir, token, work):
    c.section("the development PIN")
    d = Daemon(build_dir, token, ["ES256"], os.path.join(work, "devpin.log"),
               extra_env={"HSMJWT_PIN_FILE": "", "HSMJWT_PIN": token.pin})
    d.start()
    try:
        with open(f"/proc/{d.proc.pid}/environ", "rb") as f:
            environ = f.read()
        c.check(token.pin.encode() not in environ, "the PIN is not in /proc/PID/environ")
        # The kernel shows the environment block the process started with;
        # unsetenv cannot shorten it, but the value in it is wiped in place.
        at = environ.find(b"HSMJWT_PIN=")
        start = at + len("HSMJWT_PIN=")
        c.check(at < 0 or environ[start:start + len(token.pin)] == b"\0" * len(token.pin),
                "the HSMJWT_PIN value is wiped to NUL bytes")
        c.equal(d.request("GET", "/health").status, 200, "the daemon logged in with it")
    finally:
        code = d.stop()
    c.equal(code, 0, "it exits 0 on SIGTERM")
    log = d.log_text()
    c.check("development-only pin key" in log, "the log warns that the development pin key is in use")
    c.check(token.pin not in log, "the log does not contain the PIN")


def duplicate_pin_checks(c, build_dir, token, work):
    """The environment may name HSMJWT_PIN twice; the config applies the last,
    and neither value may stay readable in /proc/PID/environ."""
    c.section("a duplicated HSMJWT_PIN")
    d = Daemon(build_dir, token, ["ES256"], os.path.join(work, "duppin.log"),
               extra_env={"HSMJWT_PIN_FILE": ""})
    d.port = free_port()
    env = d.env()
    env.pop("HSMJWT_PIN", None)
    envp = [f"{k}={v}".encode() for k, v in env.items()]
    envp += [b"HSMJWT_PIN=decoy-value-1", f"HSMJWT_PIN={token.pin}".encode()]
    with open(d.log_path, "w") as log:
        d.proc = _spawn_with_envp(build_dir, envp, log)
    try:
        healthy = d._wait_healthy() == "up"
        c.check(healthy, "the daemon logged in with the last HSMJWT_PIN")
        with open(f"/proc/{d.proc.pid}/environ", "rb") as f:
            environ = f.read()
        c.check(token.pin.encode() not in environ and b"decoy-value-1" not in environ,
                "neither value is in /proc/PID/environ")
    finally:
        code = d.stop()
    c.equal(code, 0, "it exits 0 on SIGTERM")


def _spawn_with_envp(build_dir, envp, log):
    """subprocess and os.posix_spawn take a mapping, which cannot hold one
    name twice: fork, and execve with a raw environment array through libc."""
    path = os.path.join(build_dir, "hsmjwtd").encode()
    argv = (ctypes.c_char_p * 2)(path, None)
    env = (ctypes.c_char_p * (len(envp) + 1))(*envp, None)
    libc = ctypes.CDLL(None, use_errno=True)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            libc.execve(path, argv, env)
        finally:
            os._exit(127)
    return _Proc(pid)


class _Proc:
    """The little of subprocess.Popen that Daemon uses, for a posix_spawn'd pid."""

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("hsmjwtd", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def main():
    build_dir, source_dir = sys.argv[1], sys.argv[2]
    c = Checker("test_startup")
    work = Workdir("hsmjwt-startup-")
    ok = False
    first = None
    try:
        config_checks(c, build_dir, work.path)
        token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-startup")
        first = Daemon(build_dir, token, ["ES256"], os.path.join(work.path, "first.log"))
        first.start()
        exclusivity_checks(c, build_dir, first, work.path)
        code = first.stop()
        first = None
        c.equal(code, 0, "the first daemon exits 0 on SIGTERM")
        # The lock dies with its process: the same state_dir serves again.
        dev_pin_checks(c, build_dir, token, work.path)
        duplicate_pin_checks(c, build_dir, token, work.path)
        ok = c.summary()
    finally:
        if first is not None:
            first.kill()
        work.finish(ok)
    return ok


if __name__ == "__main__":
    run_main("test_startup", main)
