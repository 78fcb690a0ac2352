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
    record;
  - the drain and keep-alive connections, each on its own daemon with one
    worker, which exits 0: clients sending requests one after another on one
    connection each while SIGTERM comes — every request sent is answered
    whole, or the server had closed the connection before it arrived (a
    Connection: close on the previous reply, the FIN already there, or the
    request's bytes never acknowledged: TCP_INFO's tcpi_bytes_acked); a
    pipelined burst sent just before SIGTERM is answered in full; a POST
    /token half uploaded at SIGTERM and finished once the drain has begun is
    answered 200 with its token and Connection: close.

Usage: test_signals.py BUILD_DIR SOURCE_DIR [FAULT_MODULE SOFTHSM_MODULE]
(exit 0 pass, 1 fail, 77 skip)
"""

import json
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Response, Token, Workdir, faultp11_command, faultp11_stat,  # noqa: E402
                            guarded, jwt_parts, require_tools, run_daemon_test, run_main)

ALGORITHMS = ["ES256"]
NOTIFY_WAIT = 60.0        # a notification comes at once; ASan on 2 shared cores is slow
HOLD_SEEN_WITHIN = 30.0   # for the fault module to report the held sign
EXIT_WITHIN = 60.0        # SIGTERM to exit, the held request included
LOG_WAIT = 30.0           # for a line to reach log_file
ROTATE_BATCH = 20         # requests logged before the move, between move and SIGUSR1, after
AUDIENCE = "api-signals"
DRAIN_CLIENTS = 4         # keep-alive clients, one connection each
DRAIN_WARMUP = 20         # requests each has had answered before SIGTERM
DRAIN_PIPELINES = 1       # connections each sending one pipelined burst
DRAIN_DEPTH = 2000        # requests in each burst
DRAIN_REST_AFTER = 0.5    # the rest of a half-uploaded body, after the drain began
CLIENT_TIMEOUT = 60.0     # a socket operation; the daemon answers at once
JWKS = "/.well-known/jwks.json"


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


class Incomplete(Exception):
    """The connection ended inside a response."""


class KeepAlive:
    """One HTTP/1.1 connection kept open across requests, on a raw socket:
    what the client sees of the server's close (a Connection: close, the FIN
    before a request is sent, a request never acknowledged) is the point."""

    TCP_INFO_BYTES_ACKED = 120   # struct tcp_info (linux/tcp.h): __u64 tcpi_bytes_acked

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self.buf = b""
        self.sent = 0

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)
        self.sent += len(data)

    def served(self):
        """One request answered: the server has accepted the connection
        (the stop resets those still in the listening socket's queue)."""
        self.send(get_request(JWKS))
        r = self.response()
        return r is not None and r.status == 200

    def acked(self):
        """Bytes the server's TCP acknowledged: a request whose bytes it
        never acknowledged never reached it (refused: it had closed)."""
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from("Q", info, self.TCP_INFO_BYTES_ACKED)[0]

    def ended_by_server(self):
        """The server's FIN (or reset) is here already, with nothing left
        to read: a request sent now could not be answered."""
        if self.buf or not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            return True

    def _more(self):
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self.buf += data
        return bool(data)

    def response(self):
        """The next response whole (a Response), None when the connection
        ends before its first byte; Incomplete when it ends inside it."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                if self.buf:
                    raise Incomplete(f"{len(self.buf)} bytes of headers")
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        while len(self.buf) < length:
            if not self._more():
                raise Incomplete(f"{len(self.buf)} of {length} bytes of body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(status, headers, body)


def get_request(path):
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def token_request_halves(bearer, subject):
    """POST /token for subject in two parts: the headers and the first half
    of the body, then the rest of the body."""
    body = json.dumps({"subject": subject, "audience": AUDIENCE}).encode()
    head = (f"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nAuthorization: Bearer {bearer}\r\n\r\n").encode()
    return head + body[:len(body) // 2], body[len(body) // 2:]


def closes(r):
    return (r.header("Connection") or "").lower() == "close"


class Drain:
    """SIGTERM against clients on keep-alive connections, each scenario on
    its own daemon with one worker (SPEC §8: finish in-flight requests)."""

    def __init__(self, c, build_dir, token, work):
        self.c = c
        self.build_dir = build_dir
        self.token = token
        self.work = work
        self.logs = []

    def daemon(self, name):
        log = os.path.join(self.work, f"drain-{name}.log")
        self.logs.append(log)
        d = Daemon(self.build_dir, self.token, ALGORITHMS, log, {"HSMJWT_WORKERS": "1"})
        d.start()
        return d

    def stop_checks(self, d, what):
        """SIGTERM sent already: exit 0, and nothing left behind."""
        c = self.c
        pid = d.proc.pid
        try:
            code = d.proc.wait(timeout=EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            code = None
            d.kill()
        d.proc = None
        c.equal(code, 0, f"{what}: hsmjwtd (pid {pid}) exits 0")
        text = d.log_text()
        c.check("unwritten=" not in text, f"{what}: the drain did not stop with requests unanswered",
                re.findall(r"^.*unwritten=.*$", text, re.M)[:2])
        if c.failed:
            print(f"-- {d.log_path}")
            print(d.log_excerpt())
        return text

    def keepalive(self):
        c = self.c
        c.section(f"SIGTERM while {DRAIN_CLIENTS} clients send requests one after another on one connection each")
        d = self.daemon("keepalive")
        results = [dict(answered=0, statuses=set(), end=None) for _ in range(DRAIN_CLIENTS)]

        def client(res):
            conn = KeepAlive(d.port)
            try:
                while True:
                    if conn.ended_by_server():
                        res["end"] = "closed before the request was sent"
                        return
                    try:
                        conn.send(get_request(JWKS))
                    except (BrokenPipeError, ConnectionResetError):
                        res["end"] = "closed before the request was sent"
                        return
                    r = conn.response()
                    if r is None:
                        # Its bytes never acknowledged: the server had
                        # closed for reading before they arrived.
                        res["end"] = ("refused: closed before the request arrived" if conn.acked() < conn.sent
                                      else "LOST: received and not answered")
                        return
                    res["answered"] += 1
                    res["statuses"].add(r.status)
                    if closes(r):
                        res["end"] = "Connection: close on the last reply"
                        return
            except (Incomplete, OSError) as e:
                res["end"] = f"FAILED: {type(e).__name__}: {e}"
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(res,), daemon=True) for res in results]
        for th in threads:
            th.start()
        # SIGTERM while they are sending, whatever each is doing then.
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while (min(res["answered"] for res in results) < DRAIN_WARMUP and time.monotonic() < deadline and
               all(th.is_alive() for th in threads)):
            time.sleep(0.001)
        c.check(min(res["answered"] for res in results) >= DRAIN_WARMUP,
                f"each client had {DRAIN_WARMUP} requests answered on its connection", repr(results))
        d.proc.send_signal(signal.SIGTERM)
        for th in threads:
            th.join(EXIT_WITHIN)
        c.check(not any(th.is_alive() for th in threads), "every client's connection ended after SIGTERM")
        text = self.stop_checks(d, "keep-alive clients")
        ends = [res["end"] for res in results]
        print(f"  (answered {[res['answered'] for res in results]}; {ends})")
        c.check(all(res["statuses"] == {200} for res in results), "every answer is a whole 200",
                repr([res["statuses"] for res in results]))
        c.check(all(e is not None and not e.startswith("FAILED") for e in ends),
                "no response was cut short and no client failed", repr(ends))
        # A request may cross the server's close of a connection between
        # requests (it checks for bytes, then closes: they can arrive in
        # between); the server counts each such connection in its log.
        lost = sum(1 for e in ends if e and e.startswith("LOST"))
        crossed = sum(int(n) for n in re.findall(
            r'msg="closed at the stop as requests arrived[^"]*".* connections=(\d+)', text))
        c.check(lost <= crossed,
                "every request sent was answered, or the server had closed the connection before it arrived",
                f"{lost} received and not answered, {crossed} reported crossing the close")

    def pipelined(self):
        c = self.c
        c.section(f"a pipelined burst of {DRAIN_DEPTH} requests on each of {DRAIN_PIPELINES} connections, "
                  "sent just before SIGTERM")
        d = self.daemon("pipelined")
        conns = [KeepAlive(d.port) for _ in range(DRAIN_PIPELINES)]
        c.check(all(conn.served() for conn in conns), "a first request on each connection is answered")
        burst = get_request(JWKS) * DRAIN_DEPTH
        answers = [dict(statuses=[], end=None) for _ in conns]

        def reader(conn, res):
            # Reads as the answers come: the server writes no faster than
            # its client reads.
            try:
                while len(res["statuses"]) < DRAIN_DEPTH:
                    r = conn.response()
                    if r is None:
                        res["end"] = "closed"
                        return
                    res["statuses"].append(r.status)
                res["end"] = "closed" if conn.response() is None else "more"
            except (Incomplete, OSError) as e:
                res["end"] = f"{type(e).__name__}: {e}"

        readers = [threading.Thread(target=reader, args=(conn, res), daemon=True) for conn, res in zip(conns, answers)]
        try:
            for th in readers:
                th.start()
            for conn in conns:
                conn.send(burst)
            d.proc.send_signal(signal.SIGTERM)
            for th in readers:
                th.join(EXIT_WITHIN)
        finally:
            for conn in conns:
                conn.close()
        self.stop_checks(d, "pipelined bursts")
        c.check(all(res["statuses"] == [200] * DRAIN_DEPTH for res in answers),
                f"each burst of {DRAIN_DEPTH} is answered {DRAIN_DEPTH} times, each a whole 200",
                repr([(len(res["statuses"]), res["end"]) for res in answers]))
        c.check(all(res["end"] == "closed" for res in answers),
                "then the server closes each connection", repr([res["end"] for res in answers]))

    def half_body(self):
        c = self.c
        c.section("a POST /token half uploaded at SIGTERM, the rest sent once the drain has begun")
        d = self.daemon("half-body")
        first, rest = token_request_halves(d.mint("admin", ttl=3600), "drain-half-body")
        conn = KeepAlive(d.port)
        r, end = None, None
        try:
            c.check(conn.served(), "a first request on the connection is answered")
            conn.send(first)
            d.proc.send_signal(signal.SIGTERM)
            c.check(wait_for_text(d.log_path, 'msg="draining" worker=0', EXIT_WITHIN),
                    "the worker's drain begins with the request still partly received")
            time.sleep(DRAIN_REST_AFTER)
            conn.send(rest)
            r = conn.response()
            if r is None:
                end = "closed without an answer"
            else:
                end = "closed" if conn.response() is None else "open"
        except (Incomplete, OSError) as e:
            end = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        self.stop_checks(d, "half-uploaded POST /token")
        token = (r.json() or {}).get("access_token") if r is not None else None
        c.check(r is not None and r.status == 200 and token is not None and
                jwt_parts(token)[1]["sub"] == "drain-half-body",
                "it is answered 200 with its token", repr(end) if r is None else f"{r.status} {r.body[:200]!r}")
        c.check(r is not None and closes(r), "with Connection: close, as every reply during the drain",
                repr(r.headers) if r is not None else "")
        c.equal(end, "closed", "then the server closes the connection")

    def run(self):
        for stage in (self.keepalive, self.pipelined, self.half_body):
            guarded(self.c, stage.__name__, stage)


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

    drain = Drain(c, build_dir, token, work.path)

    def body():
        # Before the config-file daemon: one daemon at a time on the token.
        drain.run()
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
        text = log + read(log_file) + read(log_file + ".1") + "".join(read(p) for p in drain.logs)
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
