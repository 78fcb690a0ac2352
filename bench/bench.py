#!/usr/bin/python3
"""The HTTP bench of issue 7: hsmjwtd against a Node.js peer, in one run.

    bench/bench.py --build-dir BUILD [--smoke] [options]

On a fresh SoftHSM token in a temporary directory:
  1. hsmjwtd starts once to generate its keys and stops; sign_bench measures
     the raw Cryptoki signing ceiling (1 and `workers` threads);
  2. hsmjwtd and the peer (bench/peer/server.mjs) run side by side, and wrk
     drives each route on each, alternating the two servers round by round;
  3. hsmjwtd restarts with 1..workers workers (the curve), then on a registry
     of 10^6 records with 10 and 1,000 keep-alive connections (the scale);
  4. the report (Markdown) is printed and written to --out.

It exits 1 when anything did not work — a response that was not a 200, a
socket error, a server that did not start or stop cleanly, sign_bench
failing, a row missing from the report — and 0 otherwise.  A goal missed is
a line of the report, never an exit code.  77: a tool is missing and
--skip-missing was given (ctest), unless TEST_REQUIRE_ALL=1.
bench/README.md says what every line means.
"""

import argparse
import datetime
import http.client
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
import hsmjwt_harness as harness  # noqa: E402 — the path is set just above

SKIP = 77
ALGS = ["ES256", "RS256", "PS256", "EdDSA"]
COUNT_LUA = os.path.join(BENCH_DIR, "count.lua")
PEER_DIR = os.path.join(BENCH_DIR, "peer")
PEER_READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
WRK_TIMEOUT = "10s"          # a response slower than this is a wrk timeout: a failure (full run)
# Smoke mode judges answers, never speed: a wrk run whose window closed
# before any answer came (a slow or busy machine, a sanitizer build) is run
# again with twice the window, up to SMOKE_WINDOW_MAX seconds, and no
# answer can be a timeout (SMOKE_WRK_TIMEOUT outlasts every window).
SMOKE_WINDOW_MAX = 32
SMOKE_WRK_TIMEOUT = "60s"
# What a 200 must say to count as served (count.lua's BENCH_EXPECT_BODY, a
# Lua pattern; both servers answer compact JSON): /token/verify and
# /token/introspect answer 200 to a token they reject too.
EXPECT_BODY = {
    "verify": '^{"valid":true[,}]',
    "verify-many": '^{"valid":true[,}]',
    "introspect": '[{,]"active":true[,}]',
}
ADMIN_TTL = 3600             # both admin tokens outlive any run
FILE_LIMIT = 8192            # 1,000 connections on each side, and then some

# (key, the route as the report names it)
# ES256 issuance once more with hsmjwtd restarted with fsync = interval: the
# peer's registry is in memory, never durable, and fsync = always makes
# hsmjwtd wait on fdatasync (CPU idle) where the peer does not.
INTERVAL_ROUTE = "issue-ES256-interval"
ROUTES = [("issue-ES256", "POST /token ES256"), (INTERVAL_ROUTE, "POST /token ES256, fsync=interval")] + [
    (f"issue-{alg}", f"POST /token {alg}") for alg in ALGS if alg != "ES256"] + [
    ("verify", "POST /token/verify"),
    # hsmjwtd remembers the tokens whose signature it verified (jws_verify's
    # memo, 4096 per worker): one token sent again and again measures the
    # memo.  Tokens in turn, far more than the memo holds, measure the
    # signature checks a relying party with many users makes.
    ("verify-many", "POST /token/verify, distinct tokens"),
    ("introspect", "POST /token/introspect"),
    ("jwks", "GET /.well-known/jwks.json"),
]
ROUTE_LABEL = dict(ROUTES)


class BenchError(Exception):
    """The run cannot go on (a server that does not start, a tool that fails)."""


class Interrupted(Exception):
    """SIGTERM or SIGINT: clean up and leave."""


# ---------------------------------------------------------------- helpers


def log(text):
    print(f".. {text}", flush=True)


def run_text(cmd, timeout=30, env=None):
    """stdout of cmd, stripped; "" when it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout or out.stderr).strip()


def dpkg_version(package):
    return run_text(["dpkg-query", "-W", "-f=${Version}", package]) or "?"


def proc_status_kb(pid, name):
    """A "Name:  N kB" line of /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {name}")


def cpu_seconds(pids):
    """utime + stime of the processes (every thread of each), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def group_pids(pgid):
    """The processes of a process group."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def mb(kb):
    return f"{kb / 1024:.1f} MB"


def fmt_rate(x):
    return f"{x:,.0f}"


def fmt_ms(us):
    return f"{us / 1000:.2f} ms"


def fs_type(path):
    return run_text(["stat", "-f", "-c", "%T", path]) or "?"


def work_base(build_dir):
    """Where the token and the registries live: BENCH_DIR, else $TMPDIR (or
    /tmp) unless it is tmpfs (fsync would cost nothing there: fsync=always
    would not be measured), else the build directory."""
    base = os.environ.get("BENCH_DIR")
    if base:
        return base
    tmp = os.environ.get("TMPDIR") or "/tmp"
    if fs_type(tmp) != "tmpfs":
        return tmp
    return build_dir


def raise_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FILE_LIMIT if hard == resource.RLIM_INFINITY else min(hard, FILE_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- servers


class Server:
    """What the bench asks of either server: a port, an admin bearer token,
    a PID, one-off requests."""

    name = "?"

    def __init__(self):
        self.port = None
        self.admin = None

    @property
    def pid(self):
        raise NotImplementedError

    def request(self, method, path, body=None, bearer=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        return resp.status, doc

    def issue(self, alg, conn=None):
        """A fresh access token of alg, issued by this server."""
        body = {"subject": "bench-user", "alg": alg}
        if conn is None:
            status, doc = self.request("POST", "/token", body, self.admin)
        else:
            conn.request("POST", "/token", body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.admin}"})
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
        if status != 200 or not isinstance(doc, dict) or "access_token" not in doc:
            raise BenchError(f"{self.name}: POST /token {alg} answered {status}: {doc}")
        return doc["access_token"]

    def issue_many(self, alg, count, clients=8):
        """count fresh tokens, issued over clients keep-alive connections at
        once (one at a time would wait for an fdatasync each)."""
        tokens = []
        errors = []
        lock = threading.Lock()

        def client(n):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                mine = [self.issue(alg, conn) for _ in range(n)]
            except Exception as e:  # noqa: BLE001 — reported by the caller
                with lock:
                    errors.append(e)
                return
            finally:
                conn.close()
            with lock:
                tokens.extend(mine)

        share = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
        threads = [threading.Thread(target=client, args=(n,)) for n in share if n]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise BenchError(f"{self.name}: issuing {count} tokens: {errors[0]}")
        return tokens

    def alive(self):
        raise NotImplementedError

    def pids(self):
        """The processes whose CPU time is the server's."""
        return [self.pid]

    def popen(self):
        raise NotImplementedError

    def exit_text(self):
        """How it ended: "exit N", "signal NAME", or "running"."""
        proc = self.popen()
        if proc is None or proc.poll() is None:
            return "running"
        code = proc.returncode
        return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


class Hsmjwtd(Server):
    name = "hsmjwtd"

    def __init__(self, build_dir, token, work, workers, state_dir=None, tag="hsmjwtd", fsync="always"):
        super().__init__()
        env = {
            "HSMJWT_WORKERS": str(workers),
            "HSMJWT_LOG_LEVEL": "warn",
            "HSMJWT_RATE_LIMIT": "0",
            "HSMJWT_FSYNC": fsync,
            "HSMJWT_RSA_BITS": "2048",
        }
        self.daemon = harness.Daemon(build_dir, token, ALGS, os.path.join(work, f"{tag}.log"),
                                     extra_env=env, state_dir=state_dir)
        self.workers = workers

    @property
    def pid(self):
        return self.daemon.proc.pid

    def popen(self):
        return self.daemon.proc

    def start(self):
        try:
            self.daemon.start()
        except RuntimeError as e:
            raise BenchError(f"hsmjwtd did not start: {e}") from e
        self.port = self.daemon.port
        try:
            self.admin = self.daemon.mint("admin", ttl=ADMIN_TTL)
        except RuntimeError as e:
            raise BenchError(str(e)) from e

    def alive(self):
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def stop(self):
        """SIGTERM by PID, then wait; the exit status (None: it had to be
        killed)."""
        return self.daemon.stop()

    def log_tail(self):
        return self.daemon.log_excerpt() if os.path.exists(self.daemon.log_path) else ""


class Peer(Server):
    name = "peer"

    def __init__(self, work, workers):
        super().__init__()
        self.work = work
        self.workers = workers
        self.proc = None
        self.log_path = os.path.join(work, "peer.log")
        self.admin_file = os.path.join(work, "peer-admin")

    @property
    def pid(self):
        return self.proc.pid

    def popen(self):
        return self.proc

    def start(self):
        for attempt in range(1, 6):
            self.port = harness.free_port()
            env = dict(os.environ, PEER_PORT=str(self.port), PEER_WORKERS=str(self.workers),
                       PEER_ISSUER=f"http://127.0.0.1:{self.port}", PEER_ADMIN_FILE=self.admin_file)
            with open(self.log_path, "w") as out:
                # Its own process group: its workers are found by its PID,
                # and a Ctrl-C in the terminal reaches the bench alone, which
                # stops it.
                self.proc = subprocess.Popen(["node", os.path.join(PEER_DIR, "server.mjs")], cwd=PEER_DIR, env=env,
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            deadline = time.monotonic() + PEER_READY_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if re.search(r"^ready$", self.log_text(), re.M) and os.path.exists(self.admin_file):
                    with open(self.admin_file) as f:
                        self.admin = f.read().strip()
                    return
                time.sleep(0.1)
            text = self.log_text()
            self.stop()
            if "EADDRINUSE" in text and attempt < 5:
                log(f"peer: port {self.port} was taken; retrying")
                continue
            raise BenchError(f"the peer did not become ready; its log:\n{text[-3000:]}")
        raise BenchError("the peer could not get a free port")

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def pids(self):
        # The primary and its cluster workers: the process group it leads.
        return group_pids(self.proc.pid)

    def log_tail(self):
        return self.log_text()[-3000:] if os.path.exists(self.log_path) else ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM to the primary, which stops its workers; then whatever is
        left of its process group is killed.  The primary's exit status (None:
        it had to be killed)."""
        if self.proc is None:
            return None
        pid = self.proc.pid
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            os.killpg(pid, signal.SIGKILL)
            log(f"peer: workers of {pid} outlived it; killed")
            code = None
        except ProcessLookupError:
            pass
        self.proc = None
        return code


# ---------------------------------------------------------------- load


class Load:
    """One wrk run's figures."""

    def __init__(self, fields, cores, wrk_cores):
        self.cores = cores            # the server's CPU seconds per second of the run
        self.wrk_cores = wrk_cores    # wrk's
        self.responses = fields["responses"]
        self.non200 = fields["non200"]
        self.unexpected = fields["unexpected"]
        self.requests = fields["requests"]
        self.seconds = fields["duration_us"] / 1e6
        self.rps = self.requests / self.seconds if self.seconds > 0 else 0.0
        self.p50 = fields["p50_us"]
        self.p99 = fields["p99_us"]
        self.errors = {k: fields[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")}
        self.first_non200 = fields["first_non200"]


class Bench:
    def __init__(self, args):
        self.args = args
        self.failures = []
        self.checks = 0
        self.servers = []          # started, to stop whatever happens
        self.work = None
        self.bodies = {}           # (server name, route) -> (body file, bearer file)

    # -- checks

    def check(self, cond, what, detail=""):
        self.checks += 1
        if not cond:
            self.failures.append(what + (f": {detail}" if detail else ""))
            print(f"  FAIL  {what}" + (f": {detail}" if detail else ""), flush=True)
        return bool(cond)

    # -- processes

    def start(self, server):
        self.servers.append(server)
        server.start()
        return server

    def stop(self, server):
        """Stops server by its PID; a non-zero exit is a failure (it is how
        a sanitizer report ends hsmjwtd in the ASan build)."""
        if server not in self.servers:
            return
        self.servers.remove(server)
        code = server.stop()
        if not self.check(code == 0, f"{server.name} exits 0 on SIGTERM", f"exit status {code}"):
            print(server.log_tail())

    def stop_all(self):
        for server in list(reversed(self.servers)):
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 — the others must still stop
                print(f"bench: stopping {server.name}: {e}", file=sys.stderr)
        self.servers = []

    # -- wrk

    def write_file(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def prepare(self, server, routes=None):
        """Body and bearer files for each route on server; the verify and
        introspect bodies carry an ES256 access token it has just issued."""
        token = server.issue("ES256")
        admin = self.write_file(f"{server.name}-{server.port}-admin", server.admin)
        for key, _ in ROUTES:
            if routes is not None and key not in routes:
                continue
            if key == "verify-many":
                t0 = time.monotonic()
                tokens = server.issue_many("ES256", self.args.verify_tokens)
                self.check(len(set(tokens)) == self.args.verify_tokens,
                           f"{server.name}: {self.args.verify_tokens} distinct tokens for verify-many",
                           f"{len(set(tokens))}")
                log(f"{server.name}: {len(tokens)} ES256 tokens issued for verify-many in "
                    f"{time.monotonic() - t0:.1f} s")
                lines = "".join(json.dumps({"token": t}) + "\n" for t in tokens)
                path = self.write_file(f"{server.name}-{server.port}-{key}.lines", lines)
                self.bodies[(server.name, server.port, key)] = (None, path, None)
                continue
            if key.startswith("issue-"):
                body = {"subject": "bench-user", "alg": key.split("-")[1]}
                bearer = admin
            elif key == "verify":
                body, bearer = {"token": token}, None
            elif key == "introspect":
                body, bearer = {"token": token}, admin
            else:
                body, bearer = None, None
            path = None
            if body is not None:
                path = self.write_file(f"{server.name}-{server.port}-{key}.json", json.dumps(body))
            self.bodies[(server.name, server.port, key)] = (path, None, bearer)
        return token

    def preflight(self, server):
        """One request per route, its answer checked, before any load: both
        servers must do the same work for the figures to compare."""
        for alg in ALGS:
            token = server.issue(alg)
            header, claims = harness.jwt_parts(token)
            self.check(header.get("alg") == alg and header.get("typ") == "at+jwt" and "kid" in header,
                       f"{server.name}: POST /token {alg} gives an {alg} at+jwt with a kid", str(header))
            self.check(claims.get("sub") == "bench-user" and claims.get("iss") == f"http://127.0.0.1:{server.port}"
                       and isinstance(claims.get("jti"), str) and claims.get("exp", 0) > time.time(),
                       f"{server.name}: its claims name the subject, the issuer, a jti and a future exp",
                       str(claims))
            status, doc = server.request("POST", "/token/verify", {"token": token})
            self.check(status == 200 and isinstance(doc, dict) and doc.get("valid") is True
                       and doc.get("claims", {}).get("jti") == claims.get("jti"),
                       f"{server.name}: POST /token/verify finds its {alg} token valid", f"{status} {doc}")
        status, doc = server.request("POST", "/token/introspect", {"token": token}, server.admin)
        self.check(status == 200 and isinstance(doc, dict) and doc.get("active") is True
                   and doc.get("jti") == claims.get("jti"),
                   f"{server.name}: POST /token/introspect finds it active", f"{status} {doc}")
        status, doc = server.request("POST", "/token/verify", {"token": token[:-4] + "AAAA"})
        self.check(status == 200 and isinstance(doc, dict) and doc.get("valid") is False,
                   f"{server.name}: POST /token/verify refuses a forged signature", f"{status} {doc}")
        status, doc = server.request("GET", "/.well-known/jwks.json")
        algs = sorted(k.get("alg", "") for k in doc.get("keys", [])) if isinstance(doc, dict) else []
        self.check(status == 200 and algs == sorted(ALGS),
                   f"{server.name}: the JWKS holds one key per algorithm", f"{status} {algs}")

    def wrk(self, server, key, connections, duration):
        """Drives one route of server with wrk; the figures, and a failure
        recorded for any response that was not served (a non-200, or a 200
        whose body does not say EXPECT_BODY's) or any socket error.  Smoke
        mode: a run with no answer at all is run again with twice the
        window, up to SMOKE_WINDOW_MAX s (see there)."""
        if not self.args.smoke:
            return self.wrk_once(server, key, connections, duration, WRK_TIMEOUT, True)
        while True:
            last = duration * 2 > SMOKE_WINDOW_MAX
            load = self.wrk_once(server, key, connections, duration, SMOKE_WRK_TIMEOUT, last)
            if load is None or load.responses > 0 or last:
                return load
            log(f"{server.name} {ROUTE_LABEL[key]}: no answer within {duration} s; again with {duration * 2} s")
            duration *= 2

    def wrk_once(self, server, key, connections, duration, timeout, last):
        """One wrk run (see wrk); last: the run that must have counted
        responses."""
        body, bodies, bearer = self.bodies[(server.name, server.port, key)]
        path = {"verify": "/token/verify", "verify-many": "/token/verify", "introspect": "/token/introspect",
                "jwks": "/.well-known/jwks.json"}.get(key, "/token")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
        if body:
            env["BENCH_BODY_FILE"] = body
        if bodies:
            env["BENCH_BODIES_FILE"] = bodies
        if bearer:
            env["BENCH_BEARER_FILE"] = bearer
        if key in EXPECT_BODY:
            env["BENCH_EXPECT_BODY"] = EXPECT_BODY[key]
        threads = min(self.args.wrk_threads, connections)
        cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", timeout,
               "--latency", "-s", COUNT_LUA, f"http://127.0.0.1:{server.port}{path}"]
        what = f"{server.name} {ROUTE_LABEL[key]} c={connections}"
        pids = server.pids()
        cpu0, wrk0, t0 = cpu_seconds(pids), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 120)
        except subprocess.TimeoutExpired:
            self.check(False, f"{what}: wrk ends", "it ran 120 s past its duration")
            return None
        wall = time.monotonic() - t0
        wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cores = (cpu_seconds(pids) - cpu0) / wall
        wrk_cores = (wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime) / wall
        m = re.search(r"^bench-wrk: (.*)$", out.stdout, re.M)
        if not self.check(out.returncode == 0 and m, f"{what}: wrk ran",
                          f"exit {out.returncode}: {out.stderr.strip()[-500:]} {out.stdout[-500:]}"):
            return None
        fields = {}
        for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', m.group(1)):
            fields[k] = v.strip('"') if v.startswith('"') else float(v)
        load = Load(fields, cores, wrk_cores)
        if last:
            self.check(load.responses > 0, f"{what}: responses were counted",
                       f"none in {duration} s" + (" (the longest smoke window)" if self.args.smoke else ""))
        self.check(load.non200 == 0, f"{what}: every response was a 200",
                   f"{load.non200:.0f} of {load.responses:.0f} were not; the first: {load.first_non200}")
        if key in EXPECT_BODY:
            self.check(load.unexpected == 0, f"{what}: every 200 says the token is good ({EXPECT_BODY[key]})",
                       f"{load.unexpected:.0f} of {load.responses:.0f} did not; the first: {load.first_non200}")
        self.check(load.responses == load.requests, f"{what}: the script counted every response wrk did",
                   f"{load.responses:.0f} counted, wrk says {load.requests:.0f}")
        errors = {k: v for k, v in load.errors.items() if v}
        self.check(not errors, f"{what}: no socket errors", str(errors))
        if not self.check(server.alive(), f"{what}: {server.name} still runs", server.exit_text()):
            raise BenchError(f"{server.name} died under load ({server.exit_text()}); its log:\n{server.log_tail()}")
        log(f"{what}: {fmt_rate(load.rps)} req/s, p50 {fmt_ms(load.p50)}, p99 {fmt_ms(load.p99)}, "
            f"{server.name} {load.cores:.2f} cores, wrk {load.wrk_cores:.2f}")
        return load

    # -- phases

    def sign_ceiling(self, token, workers):
        threads = sorted({1, workers})
        cmd = [self.args.sign_bench, "--module", self.args.module, "--token", token.label, "--pin-file",
               token.pin_file, "--algs", ",".join(ALGS), "--threads", ",".join(map(str, threads)),
               "--seconds", str(self.args.sign_seconds)]
        env = harness.clean_env()
        env["SOFTHSM2_CONF"] = token.conf
        budget = len(ALGS) * len(threads) * (self.args.sign_seconds + 30) + 60
        log(f"sign_bench: {' '.join(ALGS)}, threads {','.join(map(str, threads))}, "
            f"{self.args.sign_seconds} s each")
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=budget)
        except subprocess.TimeoutExpired:
            raise BenchError(f"sign_bench ran over {budget} s")
        print(out.stdout, end="", flush=True)
        if not self.check(out.returncode == 0, "sign_bench exits 0",
                          f"exit {out.returncode}: {out.stderr.strip()[-1000:]}"):
            raise BenchError("sign_bench failed")
        ceiling = {}
        pattern = (r"^sign alg=(\S+) threads=(\d+) signs=(\d+) seconds=([0-9.]+) per_second=([0-9.]+) "
                   r"verified=(\d+)$")
        for alg, t, signs, secs, rate, verified in re.findall(pattern, out.stdout, re.M):
            key = (alg, int(t))
            self.check(key not in ceiling, f"sign_bench measures {alg} with {t} threads once")
            self.check(int(signs) > 0 and float(rate) > 0 and int(verified) > 0,
                       f"sign_bench {alg} threads={t} signed and verified", f"signs={signs} verified={verified}")
            ceiling[key] = float(rate)
        for alg in ALGS:
            for t in threads:
                self.check((alg, t) in ceiling, f"sign_bench printed a line for {alg} with {t} threads")
        return ceiling

    def compare(self, daemon, peer, routes):
        """Every route on both servers, alternating round by round (hsmjwtd
        first in odd rounds, the peer first in even ones, so that neither
        always runs on the warmer or the busier machine)."""
        results = {}
        for key in routes:
            rounds = {daemon.name: [], peer.name: []}
            for r in range(self.args.rounds):
                order = (daemon, peer) if r % 2 == 0 else (peer, daemon)
                for server in order:
                    load = self.wrk(server, key, self.args.connections, self.args.duration)
                    if load is not None:
                        rounds[server.name].append(load)
            results[key] = rounds
        return results

    def curve(self, build_dir, token, state_dir, workers):
        points = []
        for w in range(1, workers + 1):
            daemon = self.start(Hsmjwtd(build_dir, token, self.work, w, state_dir=state_dir, tag=f"curve-{w}"))
            self.prepare(daemon, routes={"issue-ES256", "verify"})
            issue = self.wrk(daemon, "issue-ES256", self.args.connections, self.args.duration)
            verify = self.wrk(daemon, "verify", self.args.connections, self.args.duration)
            points.append((w, issue, verify))
            self.stop(daemon)
        return points

    def scale(self, build_dir, token, workers):
        state = os.path.join(self.work, "scale")
        os.mkdir(state, 0o700)
        n = self.args.registry_records
        log(f"registry_bench --generate-only: {n} records")
        out = subprocess.run([self.args.registry_bench, "--generate-only", "--records", str(n), state],
                             capture_output=True, text=True, timeout=600)
        print(out.stdout, end="", flush=True)
        if not self.check(out.returncode == 0, "registry_bench --generate-only exits 0",
                          f"exit {out.returncode}: {out.stderr.strip()}"):
            raise BenchError("cannot generate the registry")
        size = os.path.getsize(os.path.join(state, "registry.log"))
        t0 = time.monotonic()
        daemon = self.start(Hsmjwtd(build_dir, token, self.work, workers, state_dir=state, tag="scale"))
        startup = time.monotonic() - t0
        records = self.metric(daemon, "hsmjwt_registry_records")
        self.check(records is not None and records >= n,
                   f"hsmjwtd holds the {n} generated records", f"hsmjwt_registry_records {records}")
        idle = (proc_status_kb(daemon.pid, "VmRSS"), proc_status_kb(daemon.pid, "VmHWM"))
        self.prepare(daemon, routes={"issue-ES256", "verify"})
        rows = []
        for c in self.args.scale_connections:
            for key in ("issue-ES256", "verify"):
                load = self.wrk(daemon, key, c, self.args.duration)
                rss = (proc_status_kb(daemon.pid, "VmRSS"), proc_status_kb(daemon.pid, "VmHWM"))
                rows.append((c, key, load, rss))
        self.stop(daemon)
        return {"records": n, "bytes": size, "startup": startup, "idle": idle, "rows": rows,
                "registry_records": records}

    def metric(self, server, name):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
        finally:
            conn.close()
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if resp.status == 200 and m else None


# ---------------------------------------------------------------- report


def per_core(a, b):
    """The ratio of requests per CPU-second: a's efficiency over b's."""
    if a.cores <= 0 or b.cores <= 0 or b.rps <= 0:
        return "—"
    return f"{(a.rps / a.cores) / (b.rps / b.cores):.2f}x"


def median_round(loads):
    """The round whose req/s is the median (the lower one of two middles)."""
    ordered = sorted(loads, key=lambda x: x.rps)
    return ordered[(len(ordered) - 1) // 2]


def header_lines(args, workers, base, nofile, started, versions):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
        if m:
            cpu = m.group(1)
    return [
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, {'smoke run (1 s measurements: not figures)' if args.smoke else 'full run'}",
        f"- machine: nproc {os.cpu_count()} (bench uses {workers}), {cpu}, kernel {os.uname().release}, "
        f"work directory on {fs_type(base)}, RLIMIT_NOFILE {nofile}",
        f"- versions: {versions}",
        f"- hsmjwtd: workers {workers}, algorithms {' '.join(ALGS)}, rsa_bits 2048, rate_limit 0, log_level warn, "
        "fsync always (the default: every issued token is durable in the registry before it is answered; "
        "the fsync=interval row: restarted with fsync interval, durable within 1 s), "
        "max_connections 10000 (default); a fresh SoftHSM token",
        f"- peer: bench/peer/server.mjs, node:cluster with {workers} workers, jose, in-memory keys "
        "(ES256, RS256 2048, PS256 2048, EdDSA Ed25519), in-memory registry per worker",
        f"- load: wrk, {args.wrk_threads} threads, {args.connections} keep-alive connections, {args.duration} s per "
        f"measurement, {args.rounds} round{'s' if args.rounds > 1 else ''} alternating the two servers (median "
        f"round reported); verify-many: {args.verify_tokens:,} distinct ES256 tokens in turn; "
        f"sign_bench {args.sign_seconds} s per figure",
    ]


def versions_line(args):
    hsmjwtd = run_text([os.path.join(args.build_dir, "hsmjwtd"), "--version"]).replace("hsmjwtd ", "").splitlines()
    git = run_text(["git", "-C", SOURCE_DIR, "describe", "--always", "--dirty"])
    node = run_text(["node", "--version"])
    jose = "?"
    try:
        with open(os.path.join(PEER_DIR, "node_modules", "jose", "package.json")) as f:
            jose = json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        pass
    wrk = run_text(["wrk", "-v"]).splitlines()
    wrk_v = re.search(r"wrk (\S+)", wrk[0]).group(1) if wrk and re.search(r"wrk (\S+)", wrk[0]) else "?"
    return (f"hsmjwtd {hsmjwtd[0] if hsmjwtd else '?'} (git {git or '?'}), OpenSSL {dpkg_version('libssl3')}, "
            f"libevent {dpkg_version('libevent-2.1-7')}, SoftHSM2 {dpkg_version('softhsm2')}, node {node or '?'}, "
            f"jose {jose}, wrk {wrk_v}")


def report(args, header, ceiling, workers, results, curve, scale, loads_at):
    lines = [f"## hsmjwtd vs a Node.js peer ({'smoke' if args.smoke else 'bench/run.sh'})", ""]
    lines += header
    lines += ["", "### Raw signing ceiling (sign_bench: hsm_sign through Cryptoki, one session per thread)", ""]
    threads = sorted({1, workers})
    lines.append("| alg | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} signs/s" for t in threads) + " |")
    lines.append("|---|" + "---:|" * len(threads))
    for alg in ALGS:
        lines.append(f"| {alg} | " + " | ".join(fmt_rate(ceiling[(alg, t)]) if (alg, t) in ceiling else "—"
                                                for t in threads) + " |")
    lines += ["", f"### Routes ({args.connections} connections; req/s the median of {args.rounds} round"
                  f"{'s' if args.rounds > 1 else ''}, p50/p99 of that round)", ""]
    lines.append("| route | hsmjwtd req/s | p50 | p99 | cores | peer req/s | p50 | p99 | cores | ratio | per core |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    medians = {}
    for key, label in ROUTES:
        rounds = results.get(key, {})
        d, p = rounds.get("hsmjwtd", []), rounds.get("peer", [])
        if not d or not p:
            continue
        dm, pm = median_round(d), median_round(p)
        d_rps = statistics.median(x.rps for x in d)
        p_rps = statistics.median(x.rps for x in p)
        medians[key] = (d_rps, p_rps)
        ratios[key] = d_rps / p_rps if p_rps > 0 else float("inf")
        lines.append(f"| {label} | {fmt_rate(d_rps)} | {fmt_ms(dm.p50)} | {fmt_ms(dm.p99)} | {dm.cores:.2f} | "
                     f"{fmt_rate(p_rps)} | {fmt_ms(pm.p50)} | {fmt_ms(pm.p99)} | {pm.cores:.2f} | "
                     f"{ratios[key]:.2f}x | {per_core(dm, pm)} |")
    lines += ["", "Each round, req/s of hsmjwtd / the peer (the cores wrk used meanwhile):", ""]
    for key, label in ROUTES:
        rounds = results.get(key, {})
        d, p = rounds.get("hsmjwtd", []), rounds.get("peer", [])
        lines.append(f"- {label}: " + ", ".join(
            f"{fmt_rate(a.rps)} ({a.wrk_cores:.2f}) / {fmt_rate(b.rps)} ({b.wrk_cores:.2f})" for a, b in zip(d, p)))
    lines += ["", "### Goals (issue 7)", ""]

    def goal(text, ratio, target, detail):
        if ratio is None:
            lines.append(f"- {text}: not measured")
            return
        lines.append(f"- {text}: {ratio:.2f}x ({detail}) — {'met' if ratio >= target else 'MISSED'}")

    def route_goal(key, target, what):
        if key in medians:
            d_rps, p_rps = medians[key]
            goal(what, ratios[key], target, f"hsmjwtd {fmt_rate(d_rps)}/s, peer {fmt_rate(p_rps)}/s")
        else:
            goal(what, None, target, "")

    route_goal("issue-ES256", 1.0, "ES256 issuance >= 1.0x the peer")
    route_goal(INTERVAL_ROUTE, 1.0, "ES256 issuance >= 1.0x the peer, hsmjwtd with fsync=interval "
                                    "(durable within 1 s; the peer's registry is never durable)")
    c = ceiling.get(("RS256", workers))
    if "issue-RS256" in medians and c:
        d_rps = medians["issue-RS256"][0]
        goal(f"RS256 issuance >= 0.9x the raw {workers}-thread Cryptoki ceiling", d_rps / c, 0.9,
             f"hsmjwtd {fmt_rate(d_rps)}/s, sign_bench RS256 threads={workers} {fmt_rate(c)}/s")
    else:
        goal(f"RS256 issuance >= 0.9x the raw {workers}-thread Cryptoki ceiling", None, 0.9, "")
    route_goal("verify", 2.0, "verification >= 2x the peer (one token, again and again)")
    route_goal("verify-many", 2.0, f"verification >= 2x the peer ({args.verify_tokens:,} distinct tokens in turn)")
    route_goal("jwks", 5.0, "JWKS >= 5x the peer")

    lines += ["", f"### Workers curve (hsmjwtd, {args.connections} connections, one {args.duration} s run per point)",
              ""]
    lines.append("| workers | POST /token ES256 req/s | p99 | POST /token/verify req/s | p99 |")
    lines.append("|---:|---:|---:|---:|---:|")
    for w, issue, verify in curve:
        cells = []
        for load in (issue, verify):
            cells += [fmt_rate(load.rps), fmt_ms(load.p99)] if load else ["—", "—"]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")

    if scale:
        lines += ["", f"### Scale (hsmjwtd, workers {workers}, a registry of {scale['records']:,} records, "
                      f"{scale['bytes'] / 1e6:.1f} MB, generated by registry_bench --generate-only)", ""]
        lines.append(f"Start-up to healthy {scale['startup']:.1f} s (key discovery included); "
                     f"hsmjwt_registry_records {scale['registry_records']:,.0f}; idle RSS "
                     f"{mb(scale['idle'][0])}, peak {mb(scale['idle'][1])}.")
        lines.append("")
        lines.append("| connections | route | req/s | p50 | p99 | VmRSS after | VmHWM after |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|")
        for c, key, load, rss in scale["rows"]:
            if load is None:
                lines.append(f"| {c} | {ROUTE_LABEL[key]} | — | — | — | {mb(rss[0])} | {mb(rss[1])} |")
            else:
                lines.append(f"| {c} | {ROUTE_LABEL[key]} | {fmt_rate(load.rps)} | {fmt_ms(load.p50)} | "
                             f"{fmt_ms(load.p99)} | {mb(rss[0])} | {mb(rss[1])} |")
    lines += ["", f"- load average {loads_at[0]} at the start, {loads_at[1]} at the end"]
    return lines


def check_report(bench, path, workers, smoke_conns):
    """Reads the written report back: every row the bench promises is there
    with a figure in it."""
    with open(path) as f:
        text = f.read()
    for _, label in ROUTES:
        m = re.search(rf"^\| {re.escape(label)} \| ([0-9,]+) \| [^|]+ \| [^|]+ \| [0-9.]+ \| ([0-9,]+) \| .* \| "
                      rf"([0-9.]+)x \| [^|]+ \|$", text, re.M)
        bench.check(m and int(m.group(1).replace(",", "")) > 0 and int(m.group(2).replace(",", "")) > 0,
                    f"the report has a row for {label} with both servers' req/s")
    for alg in ALGS:
        bench.check(re.search(rf"^\| {alg} \| [0-9,]+ \|", text, re.M), f"the report has the {alg} signing ceiling")
    for w in range(1, workers + 1):
        bench.check(re.search(rf"^\| {w} \| [0-9,]+ \| .* \| [0-9,]+ \|", text, re.M),
                    f"the report has the curve point for {w} worker{'s' if w > 1 else ''}")
    for c in smoke_conns:
        for key in ("issue-ES256", "verify"):
            bench.check(re.search(rf"^\| {c} \| {re.escape(ROUTE_LABEL[key])} \| [0-9,]+ \|", text, re.M),
                        f"the report has the scale row {ROUTE_LABEL[key]} with {c} connections")
    bench.check(len(re.findall(r"— (met|MISSED)$", text, re.M)) == 6,
                "the report judges the four goals (ES256 issuance twice: fsync always, interval; "
                "verification twice: one token, distinct tokens)")


# ---------------------------------------------------------------- main


def missing_tools():
    missing = [t for t in ("wrk", "node") if shutil.which(t) is None]
    if not os.path.exists(os.path.join(PEER_DIR, "node_modules", "jose", "package.json")):
        missing.append("jose in bench/peer/node_modules (npm ci in bench/peer)")
    return missing


def parse_args():
    ap = argparse.ArgumentParser(description="hsmjwtd against a Node.js peer (issue 7); bench/README.md")
    ap.add_argument("--build-dir", required=True, help="the build holding hsmjwtd, hsmjwtctl, bench/sign_bench "
                                                       "and bench/registry_bench")
    ap.add_argument("--smoke", action="store_true", help="1 round, 1 s per measurement, 10,000 records, "
                                                         "10 and 50 connections: checks, not figures")
    ap.add_argument("--module", default="/usr/lib/softhsm/libsofthsm2.so", help="the PKCS#11 module (SoftHSM2)")
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT") or os.path.join(BENCH_DIR, "results-latest.md"),
                    help="where the Markdown report goes (BENCH_OUT; default bench/results-latest.md)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="hsmjwtd's workers and the peer's (default: nproc)")
    ap.add_argument("--rounds", type=int, help="rounds per route (default 3)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 5)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--wrk-threads", type=int, default=2, choices=(1, 2), help="wrk threads (default 2)")
    ap.add_argument("--sign-seconds", type=int, help="sign_bench seconds per figure (default 3)")
    ap.add_argument("--registry-records", type=int, help="records of the scale registry (default 1000000)")
    ap.add_argument("--scale-connections", help="comma-separated (default 10,1000)")
    ap.add_argument("--verify-tokens", type=int, help="distinct tokens of verify-many (default 60000)")
    ap.add_argument("--skip-missing", action="store_true",
                    help="exit 77 when wrk, node or jose is missing (ctest), unless TEST_REQUIRE_ALL=1")
    args = ap.parse_args()
    defaults = {"rounds": (1, 3), "duration": (1, 5), "sign_seconds": (1, 3), "registry_records": (10000, 1000000),
                "scale_connections": ("10,50", "10,1000"),
                "verify_tokens": (200, 60000)}
    for name, (smoke, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    args.scale_connections = [int(c) for c in str(args.scale_connections).split(",")]
    args.build_dir = os.path.abspath(args.build_dir)
    args.sign_bench = os.path.join(args.build_dir, "bench", "sign_bench")
    args.registry_bench = os.path.join(args.build_dir, "bench", "registry_bench")
    for name in ("rounds", "duration", "connections", "sign_seconds", "registry_records", "workers", "verify_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers > 64:
        ap.error("--workers must be at most 64")
    return args


def main():
    args = parse_args()
    missing = missing_tools()
    if missing:
        text = f"missing: {', '.join(missing)} (tools/setup-debian.sh test installs them)"
        if args.skip_missing and os.environ.get("TEST_REQUIRE_ALL") != "1":
            print(f"bench: SKIPPED: {text}")
            return SKIP
        print(f"bench: FAILED: {text}")
        return 1
    for path in (os.path.join(args.build_dir, "hsmjwtd"), os.path.join(args.build_dir, "hsmjwtctl"),
                 args.sign_bench, args.registry_bench):
        if not os.access(path, os.X_OK):
            print(f"bench: FAILED: {path} is not built")
            return 1

    def interrupted(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    nofile = raise_file_limit()
    if nofile < 2 * max(args.scale_connections) + 256:
        print(f"bench: FAILED: RLIMIT_NOFILE is {nofile}, too few for {max(args.scale_connections)} connections")
        return 1
    workers = args.workers
    started = datetime.datetime.now(datetime.timezone.utc)
    base = work_base(args.build_dir)
    bench = Bench(args)
    bench.work = tempfile.mkdtemp(prefix="hsmjwt-bench.", dir=base)
    loadavg = [os.getloadavg()[0], None]
    ceiling, results, curve, scale = {}, {}, [], None
    header = []
    ok = False
    try:
        header = header_lines(args, workers, base, nofile, started, versions_line(args))
        print("\n".join(header), flush=True)
        token_dir = os.path.join(bench.work, "token")
        token = harness.Token(SOURCE_DIR, token_dir, "bench")

        log("hsmjwtd: first start, to generate its keys in the token")
        daemon = bench.start(Hsmjwtd(args.build_dir, token, bench.work, workers, tag="keygen"))
        bench.stop(daemon)
        ceiling = bench.sign_ceiling(token, workers)

        log(f"hsmjwtd (workers {workers}) and the peer (workers {workers})")
        daemon = bench.start(Hsmjwtd(args.build_dir, token, bench.work, workers))
        peer = bench.start(Peer(bench.work, workers))
        for server in (daemon, peer):
            bench.preflight(server)
            bench.prepare(server)
        results = bench.compare(daemon, peer, [k for k, _ in ROUTES if k != INTERVAL_ROUTE])
        bench.stop(daemon)

        log(f"hsmjwtd (workers {workers}, fsync = interval) and the same peer")
        daemon = bench.start(Hsmjwtd(args.build_dir, token, bench.work, workers, tag="hsmjwtd-interval",
                                     fsync="interval"))
        bench.preflight(daemon)
        bench.prepare(daemon, routes={INTERVAL_ROUTE})
        results.update(bench.compare(daemon, peer, [INTERVAL_ROUTE]))
        bench.stop(peer)
        bench.stop(daemon)

        log(f"the curve: hsmjwtd with 1..{workers} workers")
        curve = bench.curve(args.build_dir, token, None, workers)
        log(f"scale: {args.registry_records} records, connections {args.scale_connections}")
        scale = bench.scale(args.build_dir, token, workers)
        ok = True
    except BenchError as e:
        bench.check(False, "the bench ran to its end", str(e))
        for server in bench.servers:
            print(f"-- {server.name} (pid {server.pid}) log:\n{server.log_tail()}")
    except Interrupted as e:
        bench.check(False, "the bench ran to its end", f"interrupted by {e}")
    finally:
        bench.stop_all()
        shutil.rmtree(bench.work, ignore_errors=True)
    loadavg[1] = os.getloadavg()[0]

    lines = report(args, header, ceiling, workers, results, curve, scale,
                   [f"{x:.2f}" for x in loadavg])
    text = "\n".join(lines) + "\n"
    print()
    print(text, end="")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"\nbench: report written to {args.out}")
    if ok:
        check_report(bench, args.out, workers, args.scale_connections)
    if bench.failures:
        print(f"bench: FAILED: {len(bench.failures)} of {bench.checks} checks")
        for what in bench.failures:
            print(f"  failed: {what}")
        return 1
    print(f"bench: every check passed ({bench.checks}): every response counted was served (a 200, saying the token "
          "is good on verify and introspect), no socket errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
