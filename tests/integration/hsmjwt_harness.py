"""Shared harness for hsmjwt's end-to-end tests: a throwaway SoftHSM token, a
daemon on a free loopback port, an HTTP client that remembers every answer,
and a checker that collects failures instead of stopping at the first.

Only the standard library: the third-party verifiers are imported by the
tests that use them, so a missing one can be reported as a skip (exit 77).
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

SKIP = 77
HEALTH_TIMEOUT = 90.0   # key generation under ASan on 2 shared cores is slow
STOP_TIMEOUT = 60.0
START_ATTEMPTS = 5


class Skip(Exception):
    """A tool the test needs is missing."""


def require_tools(tools):
    """Raises Skip naming the first missing executable."""
    for tool in tools:
        if shutil.which(tool) is None:
            raise Skip(f"`{tool}' is not installed")


def run_main(name, body):
    """Runs body() and turns its outcome into the exit code CTest reads.
    TEST_REQUIRE_ALL=1 (set by tools/test-all.sh, which installs every tool)
    turns a skip into a failure, so a broken set-up cannot pass as green."""
    try:
        ok = body()
    except Skip as e:
        if os.environ.get("TEST_REQUIRE_ALL") == "1":
            print(f"{name}: FAILED: would skip, but TEST_REQUIRE_ALL=1: {e}")
            sys.exit(1)
        print(f"{name}: SKIPPED: {e}")
        sys.exit(SKIP)
    sys.exit(0 if ok else 1)


def main_with_dirs(name, run):
    """The command line of a test run as `NAME.py BUILD_DIR SOURCE_DIR' (what
    CTest passes): run(build_dir, source_dir) with absolute paths, because the
    daemon is started from another working directory."""
    if len(sys.argv) != 3:
        print(f"usage: {name}.py BUILD_DIR SOURCE_DIR", file=sys.stderr)
        sys.exit(2)
    run_main(name, lambda: run(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])))


def main_with_fault_module(name, run):
    """The command line of a test that takes the fault-injection module:
    `NAME.py BUILD_DIR SOURCE_DIR FAULT_MODULE SOFTHSM_MODULE' (FAULT_MODULE
    may be empty: not built).  run(build_dir, source_dir, fault_module,
    softhsm_module), the paths absolute."""
    if len(sys.argv) != 5:
        print(f"usage: {name}.py BUILD_DIR SOURCE_DIR FAULT_MODULE SOFTHSM_MODULE", file=sys.stderr)
        sys.exit(2)
    build_dir, source_dir = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    fault_module = os.path.abspath(sys.argv[3]) if sys.argv[3] else ""
    run_main(name, lambda: run(build_dir, source_dir, fault_module, sys.argv[4]))


def run_daemon_body(c, daemon, body, log_checks=None):
    """Runs body() against daemon.  A RuntimeError (the daemon would not
    start or answer) is one failed check, so the checks made so far still
    print.  Whatever happens, the daemon is then stopped: a non-zero exit on
    SIGTERM is what a sanitizer report looks like, so it is a failure.
    log_checks(log) then checks the daemon's whole log ("" when there is
    none) for what must never be in it; and when anything failed, the log's
    excerpt is printed, for the sanitizer report is in it.  Another exception
    propagates after the stop."""
    try:
        body()
    except RuntimeError as e:
        c.check(False, "the daemon runs", str(e))
    finally:
        c.section("stop")
        if daemon.proc is not None:
            pid = daemon.proc.pid
            c.equal(daemon.stop(), 0, f"hsmjwtd (pid {pid}) exits 0 on SIGTERM (sanitizers find nothing)")
        log = daemon.log_text() if os.path.exists(daemon.log_path) else ""
        if log_checks is not None:
            log_checks(log)
        if c.failed and log:
            print("-- daemon log (sanitizer report or tail)")
            print(daemon.log_excerpt())


def run_daemon_test(c, work, daemon, body, log_checks=None):
    """Runs body() against daemon (run_daemon_body) and returns the verdict,
    finishing work with it."""
    run_daemon_body(c, daemon, body, log_checks)
    ok = c.summary()
    work.finish(ok)
    return ok


def b64url_decode(text):
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_parts(token):
    """(header, claims) of a compact JWS, unverified."""
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


def parse_response_head(buf):
    """The head of a raw HTTP/1.x response at the start of buf: (status,
    headers with lower-cased names, the bytes after the head), or None
    while buf does not hold the whole head yet."""
    if b"\r\n\r\n" not in buf:
        return None
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def guarded(c, name, fn, *args):
    """A section that raises is a failed check, and the rest still run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 — reported, never swallowed
        traceback.print_exc()
        c.check(False, f"{name} ran to its end", f"{type(e).__name__}: {e}")
        return None


def import_pyjwt():
    try:
        import jwt  # PyJWT
    except ImportError as e:
        raise Skip(f"PyJWT is missing ({e}); apt-get install python3-jwt")
    return jwt


def random_jti():
    return b64url_encode(os.urandom(16))


class Checker:
    """Collects named checks; every check prints one line."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = []

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failed.append(what)
            print(f"  FAIL  {what}" + (f": {detail}" if detail else ""))
        return bool(cond)

    def equal(self, got, want, what):
        return self.check(got == want, what, f"got {got!r}, want {want!r}")

    def section(self, title):
        print(f"-- {title}")

    def summary(self):
        print(f"{self.name}: {self.passed} passed, {len(self.failed)} failed")
        for what in self.failed:
            print(f"  failed: {what}")
        return not self.failed


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def free_port():
    """A port the kernel just handed out for 127.0.0.1; it may be taken again
    before the daemon binds it, hence the retries in Daemon.start()."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env():
    """The caller's environment without HSMJWT_* variables (each would be a
    config key, or a config error) and without SOFTHSM2_CONF (never the
    system token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMJWT_")}
    env.pop("SOFTHSM2_CONF", None)
    return env


def faultp11_command(control, text):
    """Makes text libfaultp11's control file (tests/faultp11/faultp11.c)
    atomically, a temporary file then a rename, as the module asks: it may
    read the file at any call, and must never see half a command."""
    tmp = control + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, control)


def faultp11_stat(stats, name):
    """A line of libfaultp11's stats file: "command" as text, the rest as
    int; None while the file or the line is missing."""
    try:
        with open(stats) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    m = re.search(rf"^{name} (.*)$", text, re.M)
    if not m:
        return None
    return m.group(1) if name == "command" else int(m.group(1))


class Token:
    """A fresh SoftHSM token made by the project's own hsm/softhsm-setup.sh."""

    def __init__(self, source_dir, state_dir, label):
        self.state_dir = state_dir
        self.label = label
        out = subprocess.run(["sh", os.path.join(source_dir, "hsm", "softhsm-setup.sh"), state_dir, label],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"softhsm-setup.sh failed ({out.returncode}): {out.stderr.strip()}")
        m = re.search(r"^SOFTHSM2_CONF=(.+)$", out.stdout, re.M)
        if not m:
            raise RuntimeError(f"softhsm-setup.sh printed no SOFTHSM2_CONF line: {out.stdout!r}")
        self.conf = m.group(1)
        self.pin_file = os.path.join(state_dir, "pin")
        with open(self.pin_file) as f:
            self.pin = f.read().strip()


class Daemon:
    """build/hsmjwtd on its own token and a free loopback port.

    state_dir: the daemon's own state_dir (registry, lock) when several
    daemons share one token as replicas; the token's directory by default."""

    def __init__(self, build_dir, token, algorithms, log_path, extra_env=None, state_dir=None, args=None,
                 prefix=None):
        self.build_dir = build_dir
        self.args = list(args or [])   # hsmjwtd's command line, e.g. ["--config", FILE]
        self.prefix = list(prefix or [])   # a command that execs hsmjwtd, e.g. setpriv ...
        self.token = token
        self.state_dir = state_dir or token.state_dir
        self.algorithms = algorithms
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc = None
        self.port = None
        self.responses = []   # every Response this harness received

    @property
    def issuer(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        env = clean_env()
        env.update({
            "SOFTHSM2_CONF": self.token.conf,
            "HSMJWT_LISTEN": f"127.0.0.1:{self.port}",
            "HSMJWT_ISSUER": self.issuer,
            "HSMJWT_STATE_DIR": self.state_dir,
            "HSMJWT_PIN_FILE": self.token.pin_file,
            "HSMJWT_TOKEN": self.token.label,
            "HSMJWT_ALGORITHMS": " ".join(self.algorithms),
            "HSMJWT_RSA_BITS": "2048",
            "HSMJWT_WORKERS": "2",
            "HSMJWT_LOG_LEVEL": "info",
        })
        env.update(self.extra_env)
        return env

    def ctl(self, *args, timeout=120):
        """Runs build/hsmjwtctl with the daemon's configuration."""
        return subprocess.run([os.path.join(self.build_dir, "hsmjwtctl"), *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def token_kids(self):
        """The kids `hsmjwtctl jwks' reads from this daemon's token."""
        out = self.ctl("jwks")
        if out.returncode != 0:
            raise RuntimeError(f"hsmjwtctl jwks failed ({out.returncode}): {out.stderr.strip()}")
        return sorted(k["kid"] for k in json.loads(out.stdout)["keys"])

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_excerpt(self):
        """What a reader needs from the log after a failure: a sanitizer
        report whole, else the tail."""
        text = self.log_text()
        m = re.search(r"^=+\d+=+ *(ERROR|WARNING)|^\S+:\d+:\d+: runtime error", text, re.M)
        if m:
            return text[m.start():m.start() + 20000]
        return text[-4000:]

    def start(self, keep_port=False):
        """Starts the daemon and waits for /health; retries on another port when
        the one picked was taken meanwhile, or when what answers on it is not
        this daemon (SO_REUSEPORT lets a second process share a port).

        keep_port=True restarts on the port of the previous start (the issuer,
        hence every token's iss, aud and status list URI, names it) and appends
        to the log instead of replacing it, so a post-mortem sees every run."""
        if keep_port and self.port is None:
            raise RuntimeError("keep_port=True needs a previous start")
        for attempt in range(1, START_ATTEMPTS + 1):
            if not keep_port:
                self.port = free_port()
            log = open(self.log_path, "a" if keep_port else "w")
            self.proc = subprocess.Popen([*self.prefix, os.path.join(self.build_dir, "hsmjwtd"), *self.args],
                                         env=self.env(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            state = self._wait_healthy()
            if state == "up":
                if self.token_kids() == sorted(k["kid"] for k in self.jwks()["keys"]):
                    return
                print(f"  port {self.port} is served by another process; retrying")
                self.kill()
                continue
            if state == "exited" and "cannot listen" in self.log_text() and attempt < START_ATTEMPTS:
                print(f"  port {self.port} was taken; retrying")
                if keep_port:
                    time.sleep(1.0)
                continue
            tail = self.log_text()[-3000:]
            self.kill()
            raise RuntimeError(f"hsmjwtd did not become healthy ({state}); log tail:\n{tail}")
        raise RuntimeError(f"hsmjwtd could not get a free port in {START_ATTEMPTS} attempts")

    def _wait_healthy(self):
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited"
            try:
                if self.request("GET", "/health", record=False, timeout=2).status == 200:
                    return "up"
            except OSError:
                pass
            time.sleep(0.2)
        return "timeout"

    def request(self, method, path, body=None, headers=None, record=True, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            r = Response(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()
        if record:
            self.responses.append(r)
        return r

    def jwks(self):
        r = self.request("GET", "/.well-known/jwks.json")
        if r.status != 200:
            raise RuntimeError(f"GET /.well-known/jwks.json answered {r.status}")
        return json.loads(r.body)

    def mint(self, roles, ttl=600, org=None, sub=None):
        """`hsmjwtctl mint' → the token it prints."""
        args = ["mint", "--roles", roles, "--ttl", str(ttl)]
        if org is not None:
            args += ["--org", org]
        if sub is not None:
            args += ["--sub", sub]
        out = self.ctl(*args)
        if out.returncode != 0:
            raise RuntimeError(f"hsmjwtctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout.strip()

    def stop(self):
        """SIGTERM by PID; the exit status (None when it had to be killed)."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self.proc = None
        return code

    def crash(self):
        """SIGKILL by PID, as a power cut would end it: nothing is flushed.
        Returns the signal the process died of (None if it had already
        exited)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self.proc = None
            return None
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait()
        self.proc = None
        return -code if code < 0 else None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Workdir:
    """A temporary directory, removed on success and kept (and named) on
    failure for the post-mortem."""

    def __init__(self, prefix):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def finish(self, ok):
        if ok:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            print(f"  kept {self.path} for inspection")
