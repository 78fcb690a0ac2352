#!/usr/bin/python3
"""libhsmjwt-verify against the real daemon (SPEC §6, issue 5).

verify_probe (tests/integration/verify_probe.c) links the shared library and
nothing else of hsmjwt; it verifies the tokens this test gives it and
reports the library's counters.  Between it and the daemon sits a recording
proxy, so that every JWKS request the library makes is counted from the
outside, with the If-None-Match it sent and the Cache-Control it got.

  rotation    a token of key A: one fetch, whose lifetime is the max-age the
              daemon served; POST /admin/rotate-keys immediate → key B signs;
              once the refetch interval has passed (the probe's clock moved
              on through the library's test seam), a B token: unknown kid →
              exactly one request (with A's ETag) → valid; a second B token:
              none; a made-up kid: unknown_kid and no request (refused by the
              rate limit), the daemon saying unknown_kid too; A still valid;
              at the set's expiry (not a second before) one conditional
              request, answered 304.
  http        what the proxy can do wrong: status 500, a 2 MiB body (sized
              and chunked), no answer at all (the library hangs up at its
              timeout), a 304 to an unconditional request, a body that is
              no JWKS — each is a
              failed fetch with its reason, retried no sooner than the
              interval; no-store, no-cache, max-age with Age, no
              Cache-Control, a huge max-age (a lifetime under the refetch
              interval stretched to it: made-up kids cost no request); a
              failed refetch keeps the stale set.
  https       a private CA: accepted with ca_file; refused against the
              system store, and for a certificate naming another host.
  hsmjwtctl   `hsmjwtctl verify` with the daemon's configuration but a token
              it cannot open (so it never does): valid → exit 0 and the
              claims; tampered → exit 1 `invalid: bad_signature`, as the
              daemon says; wrong audience and type; --jwks FILE; the token
              on stdin; usage errors → exit 2; the cache file (0600 in a 0700
              directory, named after the URL's SHA-256) reused with the
              daemon stopped, an expired copy used with a warning, a copy
              others may write refused.

Usage: test_verify_lib.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Skip, Token, Workdir, b64url_encode, jwt_parts,  # noqa: E402
                            main_with_dirs, require_tools, run_daemon_test)

ALGORITHMS = ["ES256"]
# No rotation by time; max-age capped at 600 s (KEYSTATE_JWKS_MAX_AGE).
ENV = {"HSMJWT_ROTATION_PERIOD": "0", "HSMJWT_PUBLISH_AHEAD": "600"}
AUDIENCE = "api-verify"
INTERVAL = 30           # the probe's refetch interval (the library's default)
DEADLINE = 30.0         # how long a wait for a condition may take
EIO = -5
MAX_BYTES = 1024 * 1024
SILENT_LIMIT = 120.0    # how long the silent mode holds a connection the client never closes


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def max_age_of(cache_control):
    m = re.search(r"(?:^|,)\s*max-age=(\d+)\s*(?:,|$)", cache_control or "")
    return int(m.group(1)) if m else None


class Probe:
    """verify_probe as a subprocess: one command, one JSON line."""

    def __init__(self, path, log_path, *args):
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen([path, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"verify_probe exited ({self.proc.wait()}) at `{line[:40]}'")
        return json.loads(out)

    def verify(self, token, audience=None):
        return self.ask(f"verify {token}" + (f" {audience}" if audience else ""))

    def advance(self, seconds):
        return self.ask(f"advance {seconds}")["now"]

    def stats(self):
        return self.ask("stats")

    def close(self):
        """The exit status: 0 unless a sanitizer found something."""
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self.log.close()
        return code


class Recorder(http.server.ThreadingHTTPServer):
    """A JWKS endpoint on loopback that forwards to the daemon ("pass") or
    misbehaves on purpose, recording every request."""
    daemon_threads = True

    def __init__(self, daemon):
        super().__init__(("127.0.0.1", 0), RecorderHandler)
        self.daemon = daemon
        self.mode = "pass"
        self.static_body = b""
        self.static_headers = {}
        self.not_modified_headers = {}
        self.log = []
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/.well-known/jwks.json"

    def requests(self):
        with self.lock:
            return list(self.log)


class RecorderHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body=b"", headers=None, chunked=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if chunked:
                for i in range(0, len(body), 65536):
                    part = body[i:i + 65536]
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif status != 304:
                self.wfile.write(body)
        except OSError:
            pass   # the client hung up: what a size limit does
        return headers or {}

    def do_GET(self):
        srv = self.server
        inm = self.headers.get("If-None-Match")
        mode = srv.mode
        entry = {"mode": mode, "if_none_match": inm, "user_agent": self.headers.get("User-Agent"),
                 "host": self.headers.get("Host")}
        with srv.lock:
            srv.log.append(entry)
        if mode == "pass":
            conn = http.client.HTTPConnection("127.0.0.1", srv.daemon.port, timeout=10)
            conn.request("GET", "/.well-known/jwks.json", headers={"If-None-Match": inm} if inm else {})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            headers = {k: resp.getheader(k) for k in ("Cache-Control", "ETag", "Content-Type") if resp.getheader(k)}
            entry.update(status=resp.status, cache_control=headers.get("Cache-Control"), etag=headers.get("ETag"))
            self.reply(resp.status, body, headers)
        elif mode == "status500":
            entry.update(status=500)
            self.reply(500, b'{"error":"server_error"}', {"Content-Type": "application/json"})
        elif mode in ("big", "big-chunked"):
            entry.update(status=200)
            body = b'{"keys":[' + b" " * (2 * MAX_BYTES) + b"]}"
            self.reply(200, body, {"Content-Type": "application/json"}, chunked=mode == "big-chunked")
        elif mode == "endless-chunk":
            # A chunk-size line that never ends: hex digits, no CRLF, until
            # the client hangs up (or 20 s, 1 GiB: the test's own bound).
            entry.update(status=200)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            digits = b"f" * 65536
            end = time.monotonic() + 20
            try:
                for _ in range(16384):
                    if time.monotonic() > end:
                        break
                    self.wfile.write(digits)
            except OSError:
                pass
            self.close_connection = True
        elif mode == "silent":
            # Never answers: only the client's timeout can end the request.
            # Who ended it is recorded; the server gives up only after
            # SILENT_LIMIT, on a client that never hangs up.
            entry.update(status=None)
            self.connection.settimeout(SILENT_LIMIT)
            try:
                ended = "client" if self.connection.recv(1) == b"" else "client sent more"
            except socket.timeout:
                ended = "server"
            except OSError:
                ended = "client"   # a reset is a hang-up too
            entry.update(ended_by=ended)
            self.close_connection = True
        elif mode == "304":
            entry.update(status=304)
            self.reply(304, b"", {"ETag": '"x"'})
        elif mode == "static-etag":
            if inm == '"v1"':
                entry.update(status=304, cache_control=srv.not_modified_headers.get("Cache-Control"))
                self.reply(304, b"", {"ETag": '"v1"', **srv.not_modified_headers})
            else:
                entry.update(status=200, cache_control=srv.static_headers.get("Cache-Control"))
                self.reply(200, srv.static_body, {"Content-Type": "application/json", "ETag": '"v1"',
                                                  **srv.static_headers})
        elif mode == "static":
            entry.update(status=200, cache_control=srv.static_headers.get("Cache-Control"))
            self.reply(200, srv.static_body, {"Content-Type": "application/json", **srv.static_headers})
        else:
            entry.update(status=404)
            self.reply(404)


def make_certificates(d):
    """A private CA (ca.pem) and two server certificates it signs: ip.pem for
    the address 127.0.0.1, dns.pem for the name localhost only; P-256 keys
    in ip.key and dns.key.  With python3-cryptography (jwcrypto's own
    dependency), so that no openssl command is needed."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(path, data):
        with open(os.path.join(d, path), "wb") as f:
            f.write(data)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("hsmjwt test CA")).issuer_name(name("hsmjwt test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for stem, san in (("ip", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))), ("dns", x509.DNSName("localhost"))):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write(f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
        write(f"{stem}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))


def serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait_for(what, fn, deadline=DEADLINE, pause=0.2):
    """fn() until it returns something true, at least once, at most deadline
    seconds; RuntimeError naming what otherwise."""
    end = time.monotonic() + deadline
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise RuntimeError(f"{what}: not within {deadline:.0f} s")
        time.sleep(pause)


def made_up_token():
    """Well-formed, a kid nobody has, any signature."""
    header = {"alg": "ES256", "kid": b64url_encode(secrets.token_bytes(32)), "typ": "at+jwt"}
    claims = {"sub": "mallory", "exp": int(time.time()) + 600}
    return ".".join([b64url_encode(json.dumps(header).encode()), b64url_encode(json.dumps(claims).encode()),
                     b64url_encode(secrets.token_bytes(64))])


def tamper_signature(token):
    # Near the start of the signature: a high byte of r, so r stays < n and
    # the reason is the signature, not its range.
    h, p, s = token.split(".")
    return ".".join([h, p, s[:10] + ("B" if s[10] == "A" else "A") + s[11:]])


class Scenario:
    def __init__(self, c, work, daemon, probe_path):
        self.c = c
        self.work = work
        self.d = daemon
        self.probe_path = probe_path
        self.probes = []
        self.admin = None
        self.proxy = None

    def probe(self, *args):
        p = Probe(self.probe_path, os.path.join(self.work.path, "probe.log"), *args)
        self.probes.append(p)
        return p

    def issue(self):
        r = self.d.request("POST", "/token", {"subject": "alice", "audience": AUDIENCE, "expires_in": 3600},
                           bearer(self.admin))
        if r.status != 200:
            raise RuntimeError(f"POST /token answered {r.status}: {r.body[:200]!r}")
        return r.json()["access_token"]

    def daemon_verdict(self, token):
        r = self.d.request("POST", "/token/verify", {"token": token, "audience": AUDIENCE})
        j = r.json() or {}
        return "valid" if j.get("valid") else j.get("error")

    @staticmethod
    def verdict(answer):
        if answer.get("r") != 0:
            return answer.get("r")
        return "valid" if answer.get("valid") else answer.get("error")

    # ---- rotation ----------------------------------------------------------

    def rotation(self):
        c = self.c
        c.section("rotation: unknown kid → one refetch, then accept")
        proxy = self.proxy
        p = self.probe("--jwks", proxy.url)
        ta = self.issue()
        kid_a = jwt_parts(ta)[0]["kid"]
        a = p.verify(ta, AUDIENCE)
        c.equal(self.verdict(a), "valid", "a token of key A is valid")
        c.equal((a["stats"]["fetches"], len(proxy.requests())), (1, 1), "after one fetch (one request seen)")
        first = proxy.requests()[0]
        c.equal(first.get("if_none_match"), None, "the first request is unconditional")
        c.check((first.get("user_agent") or "").startswith("hsmjwt-verify/"), "it names itself",
                repr(first.get("user_agent")))
        served = max_age_of(first.get("cache_control"))
        lifetime = a["stats"]["expires_at"] - a["stats"]["fetched_at"]
        print(f"  the daemon served Cache-Control `{first.get('cache_control')}'; the probe keeps the set {lifetime} s")
        c.check(served is not None and 0 < served <= 600, "the daemon served a max-age of at most 600 s", repr(served))
        c.equal(lifetime, served, "the set's lifetime is the max-age the daemon served")
        c.equal(self.daemon_verdict(ta), "valid", "the daemon agrees")

        r = self.d.request("POST", "/admin/rotate-keys", {"alg": "ES256", "immediate": True}, bearer(self.admin),
                           timeout=120)
        rotated = (r.json() or {}).get("rotated") or [{}]
        kid_b = rotated[0].get("kid")
        c.equal(r.status, 200, "POST /admin/rotate-keys {immediate: true} answers 200")
        c.check(kid_b and kid_b != kid_a, "a new key B", repr(rotated))
        tb = wait_for("a token signed by B", lambda: (lambda t: t if jwt_parts(t)[0]["kid"] == kid_b else None)(
            self.issue()))
        c.check(True, "the daemon signs with B")
        # A refetch made while B's activation is a second away would be
        # cached for that second only; the counts below want a long one.
        wait_for("a JWKS max-age of a minute or more", lambda: (max_age_of(
            self.d.request("GET", "/.well-known/jwks.json", record=False).header("Cache-Control")) or 0) >= 60)
        p.advance(INTERVAL)
        b = p.verify(tb, AUDIENCE)
        reqs = proxy.requests()
        c.equal(self.verdict(b), "valid", "a token of key B is valid")
        c.equal((b["stats"]["fetches"], b["stats"]["kid_refetches"], len(reqs)), (2, 1, 2),
                "after exactly one refetch, caused by the unknown kid (one more request seen)")
        c.equal(reqs[1].get("if_none_match"), first.get("etag"), "the refetch carries A's ETag")
        c.equal(reqs[1].get("status"), 200, "and gets the new set")
        published = [k["kid"] for k in self.d.jwks()["keys"]]
        c.check(kid_a in published and kid_b in published, "the daemon publishes A (retired) and B", repr(published))
        c.equal(b["stats"]["keys"], len(published), "the probe holds every published key")
        served = max_age_of(reqs[1].get("cache_control"))
        lifetime = b["stats"]["expires_at"] - b["stats"]["fetched_at"]
        print(f"  the refetch got Cache-Control `{reqs[1].get('cache_control')}'; kept {lifetime} s")
        c.equal(lifetime, served, "the new set's lifetime is the max-age served with it")

        b2 = p.verify(self.issue(), AUDIENCE)
        c.equal(self.verdict(b2), "valid", "a second B token is valid")
        c.equal((b2["stats"]["fetches"], len(proxy.requests())), (2, 2), "without a fetch")

        x = made_up_token()
        u = p.verify(x, AUDIENCE)
        c.equal(self.verdict(u), "unknown_kid", "a made-up kid is unknown_kid")
        c.equal((u["stats"]["fetches"], u["stats"]["kid_refetches_refused"], len(proxy.requests())), (2, 1, 2),
                "without a fetch inside the refetch interval (refused once)")
        c.equal(self.daemon_verdict(x), "unknown_kid", "the daemon says unknown_kid too")
        c.equal(self.verdict(p.verify(ta, AUDIENCE)), "valid", "the old A token is still valid (retired keys stay published)")
        c.equal(len(proxy.requests()), 2, "without a fetch")

        c.section("rotation: the set's lifetime ends at its max-age")
        # Stopped, so that no second can pass between the steps below.
        p.ask("freeze")
        st = p.stats()
        left = st["stats"]["expires_at"] - st["now"]
        p.advance(left - 1)
        e1 = p.verify(ta, AUDIENCE)
        c.equal((self.verdict(e1), len(proxy.requests())), ("valid", 2), "a second before the end: no fetch")
        p.advance(1)
        e2 = p.verify(ta, AUDIENCE)
        reqs = proxy.requests()
        c.equal(self.verdict(e2), "valid", "at the end: valid")
        c.equal((len(reqs), e2["stats"]["fetches"], e2["stats"]["kid_refetches"]), (3, 3, 1),
                "after one request, caused by the expiry")
        c.equal((reqs[2].get("if_none_match"), reqs[2].get("status")), (reqs[1].get("etag"), 304),
                "conditional (B's ETag), answered 304")
        c.equal(e2["stats"]["not_modified"], 1, "counted as not modified")
        c.equal(e2["stats"]["expires_at"] - e2["stats"]["fetched_at"], max_age_of(reqs[2].get("cache_control")),
                "the 304's max-age renews the set")
        c.equal(p.close(), 0, "verify_probe exits 0")
        return ta, tb

    # ---- http failure modes ----------------------------------------------------

    def http_modes(self, ta):
        c = self.c
        proxy = self.proxy
        jwks = self.d.request("GET", "/.well-known/jwks.json").body
        proxy.static_body = jwks

        def fresh(mode, **headers):
            proxy.mode = mode
            proxy.static_headers = headers
            return self.probe("--jwks", proxy.url, "--timeout-ms", "1000")

        c.section("http: failures are failed fetches, retried no sooner than the interval")
        for mode, reason in (("status500", "HTTP status 500"), ("big", f"over {MAX_BYTES} bytes"),
                             ("big-chunked", f"over {MAX_BYTES} bytes"), ("silent", "no answer"),
                             ("304", "304 without If-None-Match")):
            p = fresh(mode)
            # Stopped, so that "asked again at once" holds however long the
            # steps between take (the fetch's own timeout is in real ms).
            p.ask("freeze")
            before = len(proxy.requests())
            a = p.verify(ta, AUDIENCE)
            c.equal(a.get("r"), EIO, f"{mode}: no verdict (-EIO)")
            c.check(reason in a["stats"]["last_error"], f"{mode}: the reason says `{reason}'",
                    repr(a["stats"]["last_error"]))
            c.equal(len(proxy.requests()) - before, 1, f"{mode}: one request")
            if mode == "silent":
                # The server never answers nor closes: only the library's
                # timeout can have ended the fetch, by hanging up.
                last = proxy.requests()[-1]
                ended = wait_for("silent: the server sees the request end", lambda: last.get("ended_by"))
                c.equal(ended, "client", "silent: the library hung up on the server that never answered")
            a = p.verify(ta, AUDIENCE)
            c.equal((a.get("r"), len(proxy.requests()) - before, a["stats"]["fetches"]), (EIO, 1, 1),
                    f"{mode}: asked again at once: no request")
            c.equal(p.close(), 0, f"{mode}: verify_probe exits 0")

        c.section("http: a chunk-size line that never ends is refused, its buffer bounded")

        def peak_kib(proc):
            with open(f"/proc/{proc.pid}/status") as f:
                return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1))

        proxy.mode = "endless-chunk"
        # A long timeout, so that only the bound can end the fetch early.
        p = self.probe("--jwks", proxy.url, "--timeout-ms", "8000")
        before = len(proxy.requests())
        p.stats()
        peak_before = peak_kib(p.proc)
        a = p.verify(ta, AUDIENCE)
        peak_after = peak_kib(p.proc)
        print(f"  verify_probe's peak RSS {peak_before} kB before the fetch, {peak_after} kB after")
        c.equal((a.get("r"), len(proxy.requests()) - before), (EIO, 1), "endless-chunk: one request, no verdict (-EIO)")
        c.check("unparsed" in a["stats"]["last_error"], "endless-chunk: failed for the unparsed bytes, not the timeout",
                repr(a["stats"]["last_error"]))
        # The bound is max_jwks_bytes plus headers and slack; sanitizers
        # double what is allocated at most.
        c.check(peak_after - peak_before < 3 * MAX_BYTES // 1024 + 4096, "endless-chunk: the probe's RSS grew by a few MiB at most",
                f"{peak_after - peak_before} kB")
        c.equal(p.close(), 0, "endless-chunk: verify_probe exits 0")

        p = fresh("static")
        proxy.static_body = b"<html>not a jwks</html>"
        a = p.verify(ta, AUDIENCE)
        c.equal((a.get("r"), a["stats"]["last_error"]), (EIO, "not a JWKS document"), "a body that is no JWKS")
        c.equal(p.close(), 0, "verify_probe exits 0")
        proxy.static_body = jwks

        c.section("http: Cache-Control and Age; a lifetime under the refetch interval is stretched to it")
        for headers, want in (({"Cache-Control": "no-store"}, INTERVAL), ({"Cache-Control": "no-cache"}, INTERVAL),
                              ({"Cache-Control": "max-age=300", "Age": "400"}, INTERVAL),
                              ({"Cache-Control": "public, max-age=100", "Age": "40"}, 60),
                              ({}, 3600), ({"Cache-Control": "max-age=99999999999"}, 3600),
                              ({"Cache-Control": "max-age=oops"}, INTERVAL)):
            p = fresh("static", **headers)
            p.ask("freeze")
            before = len(proxy.requests())
            a = p.verify(ta, AUDIENCE)
            c.equal((self.verdict(a), a["stats"]["expires_at"] - a["stats"]["fetched_at"]), ("valid", want),
                    f"{headers or 'no Cache-Control'}: valid, kept {want} s")
            for _ in range(5):
                a = p.verify(made_up_token(), AUDIENCE)
            a = p.verify(ta, AUDIENCE)
            c.equal((self.verdict(a), a.get("stale"), len(proxy.requests()) - before), ("valid", False, 1),
                    f"{headers or 'no Cache-Control'}: the next verifications (5 made-up kids among them) "
                    "fetch nothing, the set fresh")
            p.advance(want)
            a = p.verify(ta, AUDIENCE)
            c.equal((self.verdict(a), len(proxy.requests()) - before), ("valid", 2),
                    f"{headers or 'no Cache-Control'}: {want} s on, one refetch")
            c.equal(p.close(), 0, "verify_probe exits 0")

        c.section("http: a 304 without Cache-Control leaves the held one in force")
        proxy.mode = "static-etag"
        proxy.static_headers = {"Cache-Control": "max-age=60"}
        proxy.not_modified_headers = {}
        cache = os.path.join(self.work.path, "probe-cache.json")
        p = self.probe("--jwks", proxy.url, "--cache", cache)
        p.ask("freeze")
        a = p.verify(ta, AUDIENCE)
        c.equal((self.verdict(a), a["stats"]["expires_at"] - a["stats"]["fetched_at"]), ("valid", 60), "kept 60 s")
        with open(cache) as f:
            c.equal(json.load(f).get("cache_control"), "max-age=60", "the cache file keeps the Cache-Control")
        before = len(proxy.requests())
        p.advance(60)
        a = p.verify(ta, AUDIENCE)
        reqs = proxy.requests()
        c.equal((len(reqs) - before, reqs[-1].get("if_none_match"), reqs[-1].get("status")), (1, '"v1"', 304),
                "at its end: one conditional request, 304 without Cache-Control")
        c.equal((self.verdict(a), a["stats"]["expires_at"] - a["stats"]["fetched_at"], a["stats"]["not_modified"]),
                ("valid", 60, 1), "renewed for the held max-age=60, not the default lifetime")
        proxy.not_modified_headers = {"Cache-Control": "max-age=40"}
        p.advance(60)
        a = p.verify(ta, AUDIENCE)
        c.equal((self.verdict(a), a["stats"]["expires_at"] - a["stats"]["fetched_at"]), ("valid", 40),
                "a 304 with its own max-age=40: kept 40 s")
        c.equal(p.close(), 0, "verify_probe exits 0")

        c.section("http: a failed refetch keeps the stale set")
        p = fresh("static", **{"Cache-Control": "max-age=45"})
        p.ask("freeze")
        c.equal(self.verdict(p.verify(ta, AUDIENCE)), "valid", "valid with a 45 s copy")
        proxy.mode = "status500"
        p.advance(45)
        a = p.verify(ta, AUDIENCE)
        c.equal((self.verdict(a), a.get("stale"), a["stats"]["fetch_failures"]), ("valid", True, 1),
                "the refetch fails: still valid, marked stale")
        c.equal(p.close(), 0, "verify_probe exits 0")
        proxy.mode = "pass"

    # ---- https -----------------------------------------------------------------

    def https(self, ta):
        c = self.c
        c.section("https: the peer is always verified")
        d = os.path.join(self.work.path, "tls")
        os.makedirs(d)
        make_certificates(d)
        jwks = self.d.request("GET", "/.well-known/jwks.json").body
        for name, want, ca, what in (("ip", "valid", True, "a certificate for 127.0.0.1 from the given CA"),
                                     ("ip", "certificate", False, "the same against the system trust store"),
                                     ("dns", "certificate", True, "a certificate naming localhost only")):
            srv = Recorder(self.d)
            srv.mode = "static"
            srv.static_body = jwks
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key"))
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
            serve(srv)
            url = f"https://127.0.0.1:{srv.server_address[1]}/jwks.json"
            args = ["--jwks", url] + (["--ca-file", os.path.join(d, "ca.pem")] if ca else [])
            p = self.probe(*args)
            a = p.verify(ta, AUDIENCE)
            if want == "valid":
                c.equal(self.verdict(a), "valid", f"https: {what}: valid")
            else:
                c.check(a.get("r") == EIO and "certificate" in a["stats"]["last_error"],
                        f"https: {what}: refused", repr(a))
            c.equal(p.close(), 0, "verify_probe exits 0")
            srv.shutdown()
            srv.server_close()

    # ---- hsmjwtctl verify ----------------------------------------------------------

    def ctl(self, ta, tb):
        c = self.c
        c.section("hsmjwtctl verify")
        xdg = os.path.join(self.work.path, "xdg-cache")
        env = dict(self.d.env())
        # The daemon's configuration, but a token nobody can open: verify
        # never opens it.
        env.update({"XDG_CACHE_HOME": xdg, "HSMJWT_TOKEN": "no-such-token",
                    "HSMJWT_PIN_FILE": os.path.join(self.work.path, "no-pin")})
        ctl = os.path.join(self.d.build_dir, "hsmjwtctl")

        def run(*args, stdin=None):
            return subprocess.run([ctl, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)

        out = run("mint", "--roles", "admin")
        c.check(out.returncode != 0, "(with this configuration hsmjwtctl mint cannot open the token)",
                f"exit {out.returncode}")
        url = f"{self.d.issuer}/.well-known/jwks.json"
        out = run("verify", tb, "--audience", AUDIENCE, "--issuer", self.d.issuer, "--token-type", "access")
        c.equal(out.returncode, 0, "a valid token: exit 0")
        try:
            claims = json.loads(out.stdout)
        except ValueError:
            claims = {}
        c.equal((claims.get("sub"), claims.get("aud")), ("alice", AUDIENCE), "the claims on stdout")
        c.equal(out.stderr, "", "nothing on stderr")
        cache = os.path.join(xdg, "hsmjwt", f"jwks-{hashlib.sha256(url.encode()).hexdigest()[:16]}.json")
        c.check(os.path.isfile(cache), "the JWKS is cached under $XDG_CACHE_HOME/hsmjwt, named after the URL", cache)
        if os.path.isfile(cache):
            c.equal(stat.S_IMODE(os.stat(cache).st_mode), 0o600, "the cache file is 0600")
            c.equal(stat.S_IMODE(os.stat(os.path.dirname(cache)).st_mode), 0o700, "in a 0700 directory")
            with open(cache) as f:
                c.equal(json.load(f).get("source"), url, "a copy of the issuer's JWKS")

        bad = tamper_signature(tb)
        out = run("verify", bad)
        c.equal((out.returncode, out.stderr.strip()), (1, "invalid: bad_signature"), "a tampered token: exit 1, bad_signature")
        c.equal(self.daemon_verdict(bad), "bad_signature", "as the daemon says")
        out = run("verify", tb, "--audience", "someone-else")
        c.equal((out.returncode, out.stderr.strip()), (1, "invalid: wrong_audience"), "another audience: wrong_audience")
        out = run("verify", tb, "--token-type", "refresh")
        c.equal((out.returncode, out.stderr.strip()), (1, "invalid: wrong_type"), "an access token as refresh: wrong_type")
        out = run("verify", "-", "--audience", AUDIENCE, stdin=ta + "\n")
        c.equal(out.returncode, 0, "the token on stdin (-): exit 0")

        jwks_file = os.path.join(self.work.path, "jwks.json")
        with open(jwks_file, "wb") as f:
            f.write(self.d.request("GET", "/.well-known/jwks.json").body)
        cached = sorted(os.listdir(os.path.join(xdg, "hsmjwt")))
        out = run("verify", ta, "--jwks", jwks_file)
        c.equal(out.returncode, 0, "--jwks FILE: exit 0")
        c.equal(sorted(os.listdir(os.path.join(xdg, "hsmjwt"))), cached, "a local file is not cached")
        out = run("verify", made_up_token(), "--jwks", jwks_file)
        c.equal((out.returncode, out.stderr.strip()), (1, "invalid: unknown_kid"), "--jwks FILE: a made-up kid")
        for args, what in (((), "no token"), ((tb, "--token-type", "bogus"), "a bad --token-type"),
                           ((tb, "--bogus", "x"), "an unknown option"), ((tb, "--jwks", "ftp://x/"), "an ftp URL")):
            out = run("verify", *args)
            c.equal(out.returncode, 2, f"usage: {what}: exit 2")

        c.section("hsmjwtctl verify with the daemon stopped")
        pid = self.d.proc.pid
        c.equal(self.d.stop(), 0, f"hsmjwtd (pid {pid}) exits 0 on SIGTERM (sanitizers find nothing)")
        out = run("verify", tb, "--audience", AUDIENCE)
        c.equal((out.returncode, out.stderr), (0, ""), "verified from the cached copy while its max-age lasts")
        with open(cache) as f:
            doc = json.load(f)
        doc["expires_at"] = doc["fetched_at"]
        tmp = cache + ".edit"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(doc, f)
        os.replace(tmp, cache)
        out = run("verify", tb, "--audience", AUDIENCE)
        c.equal(out.returncode, 0, "an expired copy, the refetch failing: still exit 0")
        c.check("expired copy" in out.stderr, "with a warning that says so", repr(out.stderr))
        os.chmod(cache, 0o664)
        out = run("verify", tb, "--audience", AUDIENCE)
        c.check(out.returncode == 2 and "no JWKS" in out.stderr, "a copy others may write is not used: exit 2",
                f"exit {out.returncode}: {out.stderr.strip()!r}")

    def run(self):
        c = self.c
        c.section("start")
        self.d.start()
        c.check(True, f"hsmjwtd is healthy on {self.d.issuer}")
        self.admin = self.d.mint("tokens:issue,keys:admin", ttl=3600)
        self.proxy = serve(Recorder(self.d))
        try:
            ta, tb = self.rotation()
            self.http_modes(ta)
            self.https(ta)
            self.ctl(ta, tb)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            c.check(False, "the scenario could go on", repr(e))
        finally:
            self.proxy.shutdown()
            self.proxy.server_close()
            for p in self.probes:
                if p.proc.poll() is None:
                    p.close()


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    try:
        import cryptography  # noqa: F401  (python3-jwcrypto's dependency)
    except ImportError:
        raise Skip("python3-cryptography is not installed")
    probe = os.path.join(build_dir, "tests", "integration", "verify_probe")
    for exe in ("hsmjwtd", "hsmjwtctl", probe):
        path = exe if os.path.isabs(exe) else os.path.join(build_dir, exe)
        if not os.access(path, os.X_OK):
            print(f"test_verify_lib: FAILED: {path} is not built")
            return False
    c = Checker("test_verify_lib")
    work = Workdir("hsmjwt-verify-lib-")
    token = Token(source_dir, os.path.join(work.path, "token"), "hsmjwt-verify")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"), ENV)
    scenario = Scenario(c, work, daemon, probe)

    def log_checks(log):
        probe_log = os.path.join(work.path, "probe.log")
        text = open(probe_log, errors="replace").read() if os.path.exists(probe_log) else ""
        c.check("ERROR: AddressSanitizer" not in text and "runtime error" not in text,
                "verify_probe's stderr holds no sanitizer report", text[-2000:])
        if c.failed and text:
            print("-- verify_probe stderr (tail)")
            print(text[-3000:])

    return run_daemon_test(c, work, daemon, scenario.run, log_checks)


if __name__ == "__main__":
    main_with_dirs("test_verify_lib", run)
