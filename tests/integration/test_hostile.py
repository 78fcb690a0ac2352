#!/usr/bin/python3
"""Hostile clients (issue 8) against the real daemon, every byte written on a
raw socket.

Cases: a table of malformed or hostile requests (framing garbage, HTTP/0.9
and HTTP/2 prefaces, bad Content-Length and Transfer-Encoding, bad chunks,
missing or doubled Host, huge request lines and headers, control bytes in
targets and header values, unknown and unserved methods, wrong Content-Type,
truncated, deeply nested, duplicated, non-UTF-8 and NUL-carrying JSON, bodies
over max_body, out-of-range and non-integer numbers, lifetimes under 1 or over
max_ttl, path traversal in {jti}, bearer tokens that are not Bearer, garbage,
alg none, huge, with a NUL or invalid UTF-8), each on its own connection with
its status asserted exactly.  Where the daemon answers, the body is SPEC §4's
{"error", "error_description"} with the code asserted; where evhttp answers by
itself (framing it cannot parse) its status is asserted and the connection
must be closed after it.  Requests whose framing evhttp 2.1 accepts but RFC
9112 refuses (no Host, two Hosts, Content-Length not digits or disagreeing,
whitespace before a colon, control bytes) are refused 400 and their
connection closed: where their body ends is in doubt.  Any Transfer-Encoding
(chunked too, with sizes like 0xc or " c " that evhttp reads and RFC 9112
refuses, in HTTP/1.0 too) is refused 411, the description asking for a
Content-Length, and the connection closed; a chunk extension evhttp itself
refuses gets its 413 and the close.  The only 5xx allowed is evhttp's 501 to a method nobody defined
(RFC 9110 §9.1); TRACE and CONNECT, which HTTP defines, get 405.  Every few
cases GET /health answers 200.  No answer contains a token the test sent,
nor does the daemon's log.  A few requests RFC 9112 says a server must (or
may) accept are asserted served: absolute-form targets, bare LF line ends,
obsolete line folding, HTTP/1.0 without Host.

Pipelining: requests written at once on one connection are answered in
order; a request refused at the JSON level keeps the connection, and the
ones after it are answered; a request whose framing is refused is answered
and closes the connection, the ones before it answered in order.

Slowloris (max_connections = 64, workers = 2): 70 connections from
127.0.0.1 each send a request one byte per second.  The daemon closes the
connections past 127.0.0.1's share (max_connections_per_address unset: all
but a sixteenth of max_connections, 60) at once, without an answer; while
127.0.0.1 holds its 60, a client from 127.0.0.2 gets its 200, and a new
connection from 127.0.0.1 is closed unanswered.  Two idle connections from
127.0.0.3 that send nothing are closed by the daemon (evhttp's idle timeout), and every byte-at-a-time connection is
closed unanswered before its request is complete (HTTP_REQUEST_SECONDS: the
request is long enough to need far longer at one byte a second).  Waits are
generous bounds, never the verdict: the one thing assumed is that checking
the 60 held connections, and one /health, take less than the 30 s deadline.
Restarted with max_connections_per_address = 0 (behind a proxy), 62
connections from 127.0.0.1 are all held and the last one is answered.

RSS: 30,000 bad requests (the malformed cases' mix: pipelined on keep-alive
connections, and on new connections for those that close) — the daemon's
VmRSS after the whole run may exceed its VmRSS after the first 5,000 by at
most 16 MiB (32 MiB under ASan, whose allocator caches freed memory; its
quarantine is set to 16 MiB for this daemon).  A leak of a few hundred bytes
per request would be over 5 MiB; 16 MiB leaves room for the allocator's
per-thread arenas settling and the log's buffers.

Usage: test_hostile.py BUILD_DIR SOURCE_DIR   (exit 0 pass, 1 fail, 77 skip)
"""

import json
import os
import re
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Token, Workdir, b64url_encode, guarded, main_with_dirs,  # noqa: E402
                            parse_response_head, require_tools, run_daemon_test)

ALGORITHMS = ["ES256"]
MAX_BODY = 65536
MAX_TTL = 2592000
MAX_CONNECTIONS = 64
PER_ADDRESS = MAX_CONNECTIONS - MAX_CONNECTIONS // 16   # max_connections_per_address unset: config_per_address
UNCAPPED = MAX_CONNECTIONS - 2   # from one address with max_connections_per_address = 0: past PER_ADDRESS
ANSWER_TIMEOUT = 30.0    # a request that must be answered (ASan, 2 shared cores)
CLOSE_TIMEOUT = 30.0     # a connection the daemon must close after its answer
SLOW_CONNECTIONS = 70    # from 127.0.0.1, past its share of PER_ADDRESS
# From 127.0.0.3, sending nothing: with 127.0.0.1's share, the client from
# 127.0.0.2 and the extra one from 127.0.0.1, still under max_connections,
# so that only the share can be what lets 127.0.0.2 in.
IDLE_CONNECTIONS = 2
SLOW_GONE_WITHIN = 150.0 # generous bound on HTTP_REQUEST_SECONDS (30) and the idle timeout (10)
HEALTH_EVERY = 5
RSS_TOTAL = 30000
RSS_WARMUP = 5000
PIPELINE = 50            # requests written at once on a keep-alive connection
CLOSING_PER_BATCH = 10   # then as many requests, each on a new connection the daemon closes
RSS_BOUND_MIB = 16
RSS_BOUND_ASAN_MIB = 32


def rand_b64(n):
    return b64url_encode(os.urandom(n))


class Conn:
    """One raw connection: bytes written as given, answers read one by one
    (by Content-Length, or to the close when there is none)."""

    def __init__(self, port, source=None, timeout=ANSWER_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def answer(self, timeout=ANSWER_TIMEOUT):
        """(status, headers lower-cased, body, raw bytes), or None when the
        daemon closed the connection first."""
        while (parsed := parse_response_head(self.buf)) is None:
            if self.eof or not self._fill(timeout):
                return None
        status, headers, rest = parsed
        head = self.buf[:len(self.buf) - len(rest)]
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(rest) < length:
                if self.eof or not self._fill(timeout):
                    break
                rest = self.buf[len(head):]
            body, self.buf = rest[:length], rest[length:]
        else:
            while not self.eof and self._fill(timeout):
                pass
            body, self.buf = self.buf[len(head):], b""
        return status, headers, body, head + body

    def closed_by_peer(self, timeout=CLOSE_TIMEOUT):
        """Whether the daemon closes the connection (FIN or reset) within
        timeout, nothing more arriving before."""
        if self.buf:
            return False
        try:
            self.sock.settimeout(timeout)
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def req(method, path, body=None, ctype="application/json", auth=None, extra=b"", host=b"Host: 127.0.0.1\r\n",
        version=b"HTTP/1.1"):
    head = method.encode() + b" " + (path if isinstance(path, bytes) else path.encode()) + b" " + version + b"\r\n"
    head += host
    if ctype is not None and body is not None:
        head += b"Content-Type: " + ctype.encode() + b"\r\n"
    if auth is not None:
        head += b"Authorization: " + (auth if isinstance(auth, bytes) else auth.encode()) + b"\r\n"
    head += extra
    if body is not None:
        head += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return head + b"\r\n" + (body or b"")


def nested(levels):
    return b"[" * levels + b"]" * levels


class Case:
    """name, the bytes, the status, SPEC §4's error code (None: evhttp's
    own answer, after which it closes), close: the daemon must close the
    connection after answering; says: words the error_description holds."""

    def __init__(self, name, data, status, error, close=False, says=None):
        self.name, self.data, self.status, self.error = name, data, status, error
        self.close = close or error is None
        self.says = says


def make_cases(admin, sent):
    """The table; sent collects every token the cases carry."""
    A = "Bearer " + admin
    garbage = "hx" + rand_b64(24) + "garbage"
    none_token = (b64url_encode(json.dumps({"alg": "none", "typ": "at+jwt"}).encode()) + "." +
                  b64url_encode(json.dumps({"sub": "hostile", "jti": rand_b64(16), "roles": ["admin"],
                                            "exp": int(time.time()) + 600}).encode()) + ".")
    huge = rand_b64(15000)
    nul_token = "hx" + rand_b64(20)
    utf8_token = "hx" + rand_b64(20)
    verify_token = "hx" + rand_b64(30) + "." + rand_b64(30) + "." + rand_b64(30)
    sent += [admin, garbage, none_token, huge, nul_token, utf8_token, verify_token]
    vt = json.dumps({"token": verify_token}).encode()
    post_verify = lambda body, **kw: req("POST", "/token/verify", body, **kw)  # noqa: E731
    issue = lambda expires: req("POST", "/token", b'{"subject":"hostile","expires_in":' + expires + b"}",  # noqa: E731
                                auth=A)
    tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32).replace(b"\n", b"x") + b"\r\n\r\n"
    bad_chunk = lambda size: (b"POST /token/verify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"  # noqa: E731
                              b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + vt + b"\r\n0\r\n\r\n")
    # a chunk of the 12 bytes {"token":""} whose size line is size
    chunked = lambda size, version=b"HTTP/1.1", extra=b"": (  # noqa: E731
        b"POST /token/verify " + version + b"\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + extra +
        b"Transfer-Encoding: chunked\r\n\r\n" + size + b'\r\n{"token":""}\r\n0\r\n\r\n')
    length_required = "Content-Length"
    C = Case
    return [
        # framing evhttp cannot parse: its own 4xx, then the close
        C("not HTTP at all", b"hello there\r\n\r\n", 400, None),
        C("binary bytes", bytes(range(1, 10)) + b"\xff\xfe\x80\r\n\r\n", 400, None),
        C("a TLS ClientHello", tls_hello, 400, None),
        C("HTTP/0.9 request line", b"GET /health\r\n\r\n", 400, None),
        C("HTTP/2 connection preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, None),
        C("HTTP version 9.9", req("GET", "/health", version=b"HTTP/9.9"), 400, None),
        C("lower-case protocol name", req("GET", "/health", version=b"http/1.1"), 400, None),
        C("header line without a colon", req("GET", "/health", extra=b"nocolon\r\n"), 400, None),
        C("Content-Length -1", req("POST", "/token/verify", extra=b"Content-Length: -1\r\n"), 400, None),
        C("Content-Length 10^23", req("POST", "/token/verify", extra=b"Content-Length: 99999999999999999999999\r\n"),
          413, None),
        C("Content-Length over twice max_body", req("POST", "/token/verify", extra=b"Content-Length: 200000\r\n"),
          413, None),
        C("Content-Length in hex", req("POST", "/token/verify", extra=b"Content-Length: 0x0d\r\n") + vt, 400, None),
        C("Content-Length list 13, 14", req("POST", "/token/verify", extra=b"Content-Length: 13, 14\r\n") + vt,
          400, None),
        C("Content-Length and Transfer-Encoding",
          req("POST", "/token/verify", vt, extra=b"Transfer-Encoding: chunked\r\n"), 400, None),
        # evhttp 2.1 reports a chunk size it cannot parse as a body too long
        C("chunk size not hex", bad_chunk(b"zz"), 413, None),
        C("chunk size negative", bad_chunk(b"-5"), 413, None),
        C("chunk size past 2^64", bad_chunk(b"ffffffffffffffffff"), 413, None),
        C("request line of 70,000 bytes", req("GET", "/" + "a" * 70000), 400, None),
        C("header of 70,000 bytes", req("GET", "/health", extra=b"X-Big: " + b"a" * 70000 + b"\r\n"), 400, None),
        C("6,000 header lines", req("GET", "/health", extra=b"X-A: b\r\n" * 6000), 400, None),
        C("a method nobody defined", req("BREW", "/health"), 501, None),
        # framing evhttp 2.1 accepts and RFC 9112 refuses: 400 and the close
        C("HTTP/1.1 without Host", req("GET", "/health", host=b""), 400, "invalid_request", True),
        C("two Host headers", req("GET", "/health", host=b"Host: a\r\nHost: b\r\n"), 400, "invalid_request", True),
        C("Host with a slash and space", req("GET", "/health", host=b"Host: evil/ x\r\n"), 400, "invalid_request",
          True),
        C("Content-Length 5 then 6", req("GET", "/health", extra=b"Content-Length: 5\r\nContent-Length: 6\r\n")
          + b"hello!", 400, "invalid_request", True),
        C("Content-Length +13", req("POST", "/token/verify", extra=b"Content-Type: application/json\r\n"
                                    b"Content-Length: +" + str(len(vt)).encode() + b"\r\n") + vt,
          400, "invalid_request", True),
        # any Transfer-Encoding: 411 and the close (evhttp reads chunk
        # sizes RFC 9112 §7.1 refuses, so a proxy may end the body elsewhere)
        C("Transfer-Encoding gzip", req("POST", "/token/verify", extra=b"Content-Type: application/json\r\n"
                                        b"Transfer-Encoding: gzip\r\n") + vt, 411, "invalid_request", True,
          length_required),
        C("chunked body", chunked(b"c"), 411, "invalid_request", True, length_required),
        C("chunk size 0xc", chunked(b"0xc"), 411, "invalid_request", True, length_required),
        C("chunk size ' c '", chunked(b" c "), 411, "invalid_request", True, length_required),
        C("HTTP/1.0 chunked, keep-alive asked", chunked(b"c", b"HTTP/1.0", b"Connection: keep-alive\r\n"), 411,
          "invalid_request", True, length_required),
        C("GET with Transfer-Encoding chunked", req("GET", "/health", extra=b"Transfer-Encoding: chunked\r\n")
          + b"0\r\n\r\n", 411, "invalid_request", True, length_required),
        # a legal chunk extension evhttp 2.1 refuses while reading the
        # body, before any handler: its own 413, and the close
        C("chunk extension c;x=y", chunked(b"c;x=y"), 413, None),
        C("Transfer-Encoding twice", req("POST", "/token/verify", extra=b"Content-Type: application/json\r\n"
                                         b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")
          + b"0\r\n\r\n", 400, None),
        C("space before a header's colon",
          req("POST", "/token/verify", extra=b"Content-Type: application/json\r\nContent-Length : 5\r\n") + vt,
          400, "invalid_request", True),
        C("control byte in a header value", req("GET", "/health", extra=b"X-A: a\x01b\r\n"), 400, "invalid_request",
          True),
        C("space in the request target", b"GET /hea lth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400,
          "invalid_request", True),
        C("control byte in the request target", req("GET", b"/hea\x01lth"), 400, "invalid_request", True),
        C("request target of 20,000 bytes", req("GET", "/" + "a" * 20000), 414, "invalid_request", True),
        # methods HTTP defines that nothing here serves
        C("TRACE", req("TRACE", "/health"), 405, "method_not_allowed"),
        C("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", 405, "method_not_allowed",
          True),
        C("PUT on /health", req("PUT", "/health", b""), 405, "method_not_allowed"),
        C("DELETE on /token", req("DELETE", "/token"), 405, "method_not_allowed"),
        # bodies of JSON endpoints
        C("no Content-Type", post_verify(vt, ctype=None), 415, "unsupported_media_type"),
        C("Content-Type text/plain", post_verify(vt, ctype="text/plain"), 415, "unsupported_media_type"),
        C("Content-Type application/jsonx", post_verify(vt, ctype="application/jsonx"), 415,
          "unsupported_media_type"),
        C("form body on a JSON-only endpoint", post_verify(b"token=x", ctype="application/x-www-form-urlencoded"),
          415, "unsupported_media_type"),
        C("truncated JSON", post_verify(vt[:-3]), 400, "invalid_request"),
        C("JSON nested 17 deep", post_verify(b'{"token":"x","a":' + nested(16) + b"}"), 400, "invalid_request"),
        C("JSON nested 30,000 deep", post_verify(nested(30000)), 400, "invalid_request"),
        C("JSON opened 100,000 deep (over max_body)", post_verify(b"[" * 100000), 413, "request_too_large"),
        C("duplicate member names", post_verify(b'{"token":"a","token":"b"}'), 400, "invalid_request"),
        C("invalid UTF-8 in a string", post_verify(b'{"token":"\xff\xfe\xc3"}'), 400, "invalid_request"),
        C("overlong UTF-8 encoding of /", post_verify(b'{"token":"\xc0\xaf"}'), 400, "invalid_request"),
        C("raw NUL in a string", post_verify(b'{"token":"a\x00b"}'), 400, "invalid_request"),
        C("escaped NUL in a string", post_verify(b'{"token":"a\\u0000b"}'), 400, "invalid_request"),
        C("lone surrogate escape", post_verify(b'{"token":"\\ud800"}'), 400, "invalid_request"),
        C("body over max_body", post_verify(b'{"token":"' + b"a" * (MAX_BODY + 10) + b'"}'), 413,
          "request_too_large"),
        C("empty body", post_verify(b""), 400, "invalid_request"),
        C("garbage after the JSON", post_verify(vt + b" x"), 400, "invalid_request"),
        C("a JSON array, not an object", post_verify(b'["token"]'), 400, "invalid_request"),
        C("token is a number", post_verify(b'{"token":12}'), 400, "invalid_request"),
        # numbers and lifetimes
        C("expires_in -1", issue(b"-1"), 400, "invalid_request"),
        C("expires_in 0", issue(b"0"), 400, "invalid_request"),
        C("expires_in max_ttl + 1", issue(str(MAX_TTL + 1).encode()), 400, "invalid_request"),
        C("expires_in 1e400", issue(b"1e400"), 400, "invalid_request"),
        C("expires_in 2^63", issue(b"9223372036854775808"), 400, "invalid_request"),
        C("expires_in -2^63 - 1", issue(b"-9223372036854775809"), 400, "invalid_request"),
        C("expires_in 60.5", issue(b"60.5"), 400, "invalid_request"),
        C("expires_in 6e1 (a float)", issue(b"6e1"), 400, "invalid_request"),
        C("expires_in as a string", issue(b'"60"'), 400, "invalid_request"),
        C("limit -1", req("GET", "/tokens?limit=-1", auth=A), 400, "invalid_request"),
        C("limit 2^64", req("GET", "/tokens?limit=18446744073709551616", auth=A), 400, "invalid_request"),
        # path traversal in {jti}
        C("GET /tokens/../../etc/passwd", req("GET", "/tokens/../../etc/passwd", auth=A), 404, "not_found"),
        C("GET /tokens/%2e%2e%2f...", req("GET", "/tokens/%2e%2e%2f%2e%2e%2fetc%2fpasswd", auth=A), 404,
          "not_found"),
        C("DELETE /tokens/..%2f..%2fetc%2fpasswd", req("DELETE", "/tokens/..%2f..%2fetc%2fpasswd", auth=A), 404,
          "not_found"),
        C("PATCH /tokens/..%2f..", req("PATCH", "/tokens/..%2f..", b'{"status":"revoked"}', auth=A), 404,
          "not_found"),
        C("jti with %00", req("GET", "/tokens/abc%00def", auth=A), 404, "not_found"),
        C("jti of 2,000 bytes", req("GET", "/tokens/" + "a" * 2000, auth=A), 404, "not_found"),
        C("DELETE /users/%2e%2e/tokens without a bearer", req("DELETE", "/users/%2e%2e/tokens"), 401,
          "invalid_token"),
        # credentials
        C("Authorization Basic", req("GET", "/tokens", auth="Basic YWRtaW46YWRtaW4="), 401, "invalid_token"),
        C("Bearer with nothing after it", req("GET", "/tokens", auth="Bearer "), 401, "invalid_token"),
        C("bearer token garbage", req("GET", "/tokens", auth="Bearer " + garbage), 401, "invalid_token"),
        C("bearer token alg none", req("GET", "/tokens", auth="Bearer " + none_token), 401, "invalid_token"),
        C("bearer token of 15,000 bytes", req("GET", "/tokens", auth="Bearer " + huge), 401, "invalid_token"),
        C("NUL in the bearer token", req("GET", "/tokens", auth=b"Bearer " + nul_token.encode() + b"\x00x"), 401,
          "invalid_token"),
        C("invalid UTF-8 in the bearer token", req("GET", "/tokens", auth=b"Bearer " + utf8_token.encode()
                                                   + b"\xff\xfe"), 401, "invalid_token"),
        C("alg none at /authorize", req("POST", "/authorize", auth="Bearer " + none_token), 401, "invalid_token"),
    ]


def check_case(c, port, case, sent, statuses):
    conn = Conn(port)
    try:
        try:
            conn.send(case.data)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the daemon answered and closed before the rest was sent
        a = conn.answer()
        if not c.check(a is not None, f"{case.name}: answered", "the connection closed without an answer"):
            return
        status, headers, body, raw = a
        statuses.append((case.name, status))
        ok = c.equal(status, case.status, f"{case.name}: {case.status}")
        if case.error is not None:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            ok &= c.check(isinstance(doc, dict) and set(doc) == {"error", "error_description"} and
                          doc["error"] == case.error and isinstance(doc["error_description"], str),
                          f"{case.name}: SPEC §4 body with error {case.error}", repr(body[:200]))
            if case.says is not None and isinstance(doc, dict):
                c.check(case.says in str(doc.get("error_description")),
                        f"{case.name}: the description names {case.says}", repr(body[:200]))
        echoed = [t for t in sent if len(t) >= 16 and t.encode() in raw]
        c.check(not echoed, f"{case.name}: no token sent is echoed")
        if case.close:
            c.check(conn.closed_by_peer(), f"{case.name}: the daemon closes the connection after the answer")
    finally:
        conn.close()


def health(c, port, what):
    conn = Conn(port)
    try:
        conn.send(req("GET", "/health"))
        a = conn.answer()
        return c.equal(a[0] if a else None, 200, what)
    finally:
        conn.close()


def case_checks(c, d, cases, sent, statuses):
    c.section(f"{len(cases)} hostile requests, one connection each")
    c.check(len(cases) >= 40, f"at least 40 cases ({len(cases)})")
    c.check(len([k for k in cases if 400 <= k.status < 500]) >= 40, "at least 40 of them expect a 4xx")
    for i, case in enumerate(cases):
        guarded(c, case.name, check_case, c, d.port, case, sent, statuses)
        if i % HEALTH_EVERY == HEALTH_EVERY - 1:
            health(c, d.port, f"after case {i + 1}: GET /health 200")
    health(c, d.port, "after every case: GET /health 200")


def traversal_checks(c, top):
    """The {jti} cases named ../../etc/passwd: a jti is a registry key,
    never a path — nothing of that name was made anywhere the daemon
    writes (its state_dir is under top)."""
    made = [os.path.join(root, n) for root, dirs, files in os.walk(top) for n in dirs + files
            if "passwd" in n or n.startswith("..")]
    c.equal(made, [], "no file or directory named after a traversal jti was made")


def accepted_checks(c, d, statuses):
    c.section("requests RFC 9112 lets a server accept: served")
    accepted = [
        ("absolute-form target", b"GET http://127.0.0.1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 200),
        ("absolute-form, another path", b"GET http://127.0.0.1/.well-known/jwks.json HTTP/1.1\r\n"
                                        b"Host: 127.0.0.1\r\n\r\n", 200),
        ("bare LF line ends", b"GET /health HTTP/1.1\nHost: 127.0.0.1\n\n", 200),
        ("obsolete line folding", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n c\r\n\r\n", 200),
        ("HTTP/1.0 without Host", b"GET /health HTTP/1.0\r\n\r\n", 200),
        ("Content-Length twice, the same", req("POST", "/token/verify", extra=b"Content-Type: application/json\r\n"
                                                b"Content-Length: 12\r\nContent-Length: 12\r\n")
         + b'{"token":""}', 200),
    ]
    for name, data, want in accepted:
        conn = Conn(d.port)
        try:
            conn.send(data)
            a = conn.answer()
            statuses.append((name, a[0] if a else None))
            c.equal(a[0] if a else None, want, f"{name}: {want}")
        finally:
            conn.close()


def pipeline_checks(c, d, statuses):
    c.section("pipelining")
    good = req("GET", "/health")
    jwks = req("GET", "/.well-known/jwks.json")
    bad_json = req("POST", "/token/verify", b'{"token":')
    conn = Conn(d.port)
    try:
        conn.send(good + jwks + bad_json + good + req("GET", "/nowhere") + good)
        got = []
        for _ in range(6):
            a = conn.answer()
            got.append(a[0] if a else None)
        statuses += [("pipelined", s) for s in got if s is not None]
        c.equal(got, [200, 200, 400, 200, 404, 200],
                "six pipelined requests, a bad body and an unknown path among them: answered in order")
    finally:
        conn.close()
    for name, bad in (("Content-Length +5", req("GET", "/health", extra=b"Content-Length: +5\r\n") + b"hello"),
                      ("garbage line", b"hello there\r\n\r\n")):
        conn = Conn(d.port)
        try:
            conn.send(good + jwks + bad + good + good)
            got = []
            for _ in range(5):
                a = conn.answer()
                got.append(a[0] if a else None)
            statuses += [("pipelined", s) for s in got if s is not None]
            c.equal(got, [200, 200, 400, None, None],
                    f"pipelined: two good, a refused framing ({name}), two more: the first two answered in "
                    f"order, the bad one 400, and the connection closed")
        finally:
            conn.close()


def is_open(sock):
    """Whether the daemon has not closed sock (nothing readable, or bytes
    that would be an answer: reported as answered)."""
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return "open"
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except (ConnectionResetError, OSError):
        return "closed"
    return "closed" if data == b"" else "answered"


class Dripper:
    """Sends each connection its request one byte a second from a thread,
    until the daemon closes it or the request is whole."""

    def __init__(self, conns, request):
        self.conns = conns
        self.request = request
        self.sent = [1] * len(conns)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(1.0):
            for i, conn in enumerate(self.conns):
                if conn is None or self.sent[i] >= len(self.request):
                    continue
                try:
                    conn.sock.send(self.request[self.sent[i]:self.sent[i] + 1])
                    self.sent[i] += 1
                except OSError:
                    self.conns[i] = None


def slowloris_checks(c, d):
    c.section(f"slowloris: {SLOW_CONNECTIONS} byte-a-second connections from 127.0.0.1, share {PER_ADDRESS} "
              f"of max_connections = {MAX_CONNECTIONS}")
    # Long enough that one byte a second never completes it before the
    # deadline (HTTP_REQUEST_SECONDS = 30).
    request = req("GET", "/health", extra=b"X-Pad: " + b"p" * 120 + b"\r\n")
    slow = []
    for _ in range(SLOW_CONNECTIONS):
        conn = Conn(d.port, source="127.0.0.1")
        conn.send(request[:1])
        slow.append(conn)
    idle = [Conn(d.port, source="127.0.0.3") for _ in range(IDLE_CONNECTIONS)]
    drip = Dripper([conn for conn in slow], request)
    drip.thread.start()
    try:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        states = []
        while time.monotonic() < deadline:
            states = [is_open(conn.sock) for conn in slow]
            if states.count("closed") >= SLOW_CONNECTIONS - PER_ADDRESS:
                break
            time.sleep(0.1)
        c.equal(states.count("closed"), SLOW_CONNECTIONS - PER_ADDRESS,
                f"the {SLOW_CONNECTIONS - PER_ADDRESS} connections past 127.0.0.1's share are closed at once")
        c.equal(states.count("answered"), 0, "none of them got an answer")
        held = [conn for conn, s in zip(slow, states) if s == "open"]
        c.equal(len(held), PER_ADDRESS, f"127.0.0.1 holds its share, {PER_ADDRESS}")

        real = Conn(d.port, source="127.0.0.2")
        try:
            real.send(req("GET", "/health"))
            a = real.answer()
            c.equal(a[0] if a else None, 200, "a client from 127.0.0.2 gets its 200 meanwhile")
        finally:
            real.close()
        c.equal([is_open(conn.sock) for conn in held].count("open"), PER_ADDRESS,
                f"and 127.0.0.1 still held its {PER_ADDRESS} when it was answered")
        extra = Conn(d.port, source="127.0.0.1")
        try:
            extra.send(req("GET", "/health"))
            a = extra.answer()
            c.check(a is None, "a new connection from 127.0.0.1 is closed without an answer",
                    f"answered {a[0] if a else None}")
        finally:
            extra.close()

        c.section("the slow and idle connections are cut by the daemon")
        deadline = time.monotonic() + SLOW_GONE_WITHIN
        while time.monotonic() < deadline:
            if all(is_open(conn.sock) != "open" for conn in slow + idle):
                break
            time.sleep(0.5)
        c.equal([is_open(conn.sock) for conn in held].count("closed"), PER_ADDRESS,
                f"the {PER_ADDRESS} byte-a-second connections are closed by the daemon, unanswered")
        c.check(all(n < len(request) for n in drip.sent),
                "none had sent its whole request when it was cut")
        c.equal([is_open(conn.sock) for conn in idle].count("closed"), IDLE_CONNECTIONS,
                f"the {IDLE_CONNECTIONS} idle connections from 127.0.0.3 are closed by the daemon")
    finally:
        drip.stop.set()
        drip.thread.join()
        for conn in slow + idle:
            conn.close()
    health(c, d.port, "GET /health 200 after the slowloris")


def uncapped_checks(c, d):
    """The daemon restarted with max_connections_per_address = 0 (a
    deployment behind a proxy): one address holds more than the default
    share, none of its connections closed at once."""
    c.section(f"max_connections_per_address = 0: {UNCAPPED} connections from 127.0.0.1 (the default share: "
              f"{PER_ADDRESS})")
    d.stop()
    d.extra_env["HSMJWT_MAX_CONNECTIONS_PER_ADDRESS"] = "0"
    d.start(keep_port=True)
    request = req("GET", "/health")
    conns = []
    try:
        for _ in range(UNCAPPED):
            conn = Conn(d.port, source="127.0.0.1")
            conn.send(request[:1])
            conns.append(conn)
        # the share's refusals are at adoption, well within this
        time.sleep(2.0)
        states = [is_open(conn.sock) for conn in conns]
        c.equal(states.count("open"), UNCAPPED, f"all {UNCAPPED} are held, none closed at once")
        conns[-1].send(request[1:])
        a = conns[-1].answer()
        c.equal(a[0] if a else None, 200, f"the last of the {UNCAPPED} gets its 200")
    finally:
        for conn in conns:
            conn.close()
        d.extra_env.pop("HSMJWT_MAX_CONNECTIONS_PER_ADDRESS", None)


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1))


def rss_checks(c, d, cases, asan):
    c.section(f"RSS over {RSS_TOTAL} bad requests")
    keep = [k.data for k in cases if not k.close and k.status in (400, 401, 404, 405, 415) and len(k.data) < 4096]
    closing = [k.data for k in cases if k.close and len(k.data) < 4096]
    c.check(len(keep) >= 10 and len(closing) >= 10, f"a mix: {len(keep)} keep-alive kinds, {len(closing)} closing")
    sent = 0
    bad = 0
    rss = {}
    i = 0
    while sent < RSS_TOTAL:
        # a keep-alive connection's pipelined batch, then closing kinds
        # each on a connection of its own
        batch = [keep[(i + j) % len(keep)] for j in range(PIPELINE)]
        conn = Conn(d.port)
        try:
            conn.send(b"".join(batch))
            for _ in batch:
                a = conn.answer()
                bad += a is None or not 400 <= a[0] < 500
        finally:
            conn.close()
        sent += len(batch)
        for j in range(CLOSING_PER_BATCH):
            conn = Conn(d.port)
            try:
                try:
                    conn.send(closing[(i + j) % len(closing)])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                a = conn.answer()
                bad += a is None or not (400 <= a[0] < 500 or a[0] == 501)
            finally:
                conn.close()
            sent += 1
        i += 1
        if RSS_WARMUP not in rss and sent >= RSS_WARMUP:
            rss[RSS_WARMUP] = vm_rss_kib(d.proc.pid)
    rss[RSS_TOTAL] = vm_rss_kib(d.proc.pid)
    c.equal(bad, 0, f"each of the {sent} requests got a 4xx (or 501 for the undefined method)")
    bound = (RSS_BOUND_ASAN_MIB if asan else RSS_BOUND_MIB) * 1024
    growth = rss[RSS_TOTAL] - rss[RSS_WARMUP]
    print(f"  VmRSS after {RSS_WARMUP}: {rss[RSS_WARMUP]} KiB, after {RSS_TOTAL}: {rss[RSS_TOTAL]} KiB")
    c.check(growth <= bound, f"VmRSS grew by at most {bound // 1024} MiB from request {RSS_WARMUP} to {RSS_TOTAL}",
            f"{growth} KiB")
    health(c, d.port, "GET /health 200 after the RSS run")


def built_with_asan(path):
    with open(path, "rb") as f:
        return b"__asan_init" in f.read()


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_hostile: FAILED: {build_dir}/{exe} is not built")
            return False
    asan = built_with_asan(os.path.join(build_dir, "hsmjwtd"))
    c = Checker("test_hostile")
    work = Workdir("hsmjwt-hostile-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-hostile")
    env = {"HSMJWT_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "HSMJWT_MAX_BODY": str(MAX_BODY),
           "HSMJWT_MAX_TTL": str(MAX_TTL)}
    if asan:
        # Freed memory waits in ASan's quarantine (256 MiB by default):
        # bounded low, so that RSS shows what the daemon keeps.
        env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=16").lstrip(":")
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"), env)
    sent = [token.pin]
    statuses = []

    def body():
        c.section("start")
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} (pid {daemon.proc.pid}, asan={asan})")
        admin = daemon.mint("admin", ttl=3600, sub="hostile-admin")
        cases = make_cases(admin, sent)
        guarded(c, "cases", case_checks, c, daemon, cases, sent, statuses)
        guarded(c, "traversal", traversal_checks, c, work.path)
        guarded(c, "accepted", accepted_checks, c, daemon, statuses)
        guarded(c, "pipelining", pipeline_checks, c, daemon, statuses)
        guarded(c, "slowloris", slowloris_checks, c, daemon)
        guarded(c, "RSS", rss_checks, c, daemon, cases, asan)
        guarded(c, "uncapped", uncapped_checks, c, daemon)
        c.section("no server error")
        fives = [(n, s) for n, s in statuses if s is not None and s >= 500 and
                 not (s == 501 and n == "a method nobody defined")]
        c.equal(fives, [], "no 5xx answered (but 501 to the undefined method)")

    def log_checks(log):
        leaked = [t[:12] + "..." for t in sent if len(t) >= 6 and t in log]
        c.equal(leaked, [], "the daemon's log holds no token the test sent (nor the PIN)")
        c.check("connection closed: its address holds its share of max_connections" in log,
                "the log says when an address's share refused a connection")
        c.check("connection closed: no whole request within the deadline" in log,
                "the log says when a connection's request took too long")

    return run_daemon_test(c, work, daemon, body, log_checks)


if __name__ == "__main__":
    main_with_dirs("test_hostile", run)
