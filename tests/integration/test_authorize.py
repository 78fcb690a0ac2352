#!/usr/bin/python3
"""End-to-end test of POST /authorize (issue 5): the decision a proxy asks
for before it lets a request through.

Part 1 calls the daemon directly, in the shapes proxies use: nginx's
auth_request subrequest (a fixed URI, any method) and Envoy's ext_authz HTTP
service (the original method and path appended to /authorize, no body).  It
checks the exact x-auth-* headers of a 200, the 401s (with or without an
error code in the challenge, as RFC 6750 §3.1 says), the 403 of a wrong
audience, and that a token anywhere but the Authorization header counts for
nothing.

Part 2 puts a real nginx (Debian's, with auth_request) in front of a demo
backend (a Python http.server in a thread that answers every request with
the headers it got, and counts them): a valid token reaches the backend with
the verified identity, whatever the client forged; a missing, malformed,
badly signed, expired, revoked or suspended token is refused by nginx and
the backend never sees the request.

Usage: test_authorize.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Response, Skip, Token, Workdir, free_port, guarded, jwt_parts,  # noqa: E402
                            main_with_dirs, require_tools, run_daemon_test)

ALGORITHMS = ["ES256"]
TTL = 3600
AUDIENCE = "api"            # the daemon's default_audience (the built-in default)
OTHER_AUDIENCE = "billing"
CHALLENGE = 'Bearer realm="hsmjwt"'
CHALLENGE_INVALID = 'Bearer realm="hsmjwt", error="invalid_token"'
CHALLENGE_SCOPE = 'Bearer realm="hsmjwt", error="insufficient_scope"'
X_AUTH = ("x-auth-subject", "x-auth-org", "x-auth-scope", "x-auth-jti")
NGINX_START_ATTEMPTS = 5


def raw_request(port, method, path, header_list, body=None, timeout=30):
    """One request with headers given as a list of (name, value) pairs, so
    that a header may come twice."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in header_list:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def header_values(r, name):
    return [v for k, v in r.headers if k.lower() == name.lower()]


def flip_signature(token):
    """The token with one character of its signature changed: still
    canonical base64url (a middle character, not the last one and its spare
    bits), so only the signature check can refuse it."""
    h, p, s = token.split(".")
    i = len(s) // 2
    return f"{h}.{p}.{s[:i]}{'A' if s[i] != 'A' else 'B'}{s[i + 1:]}"


class Api:
    """The daemon and the calls the sections share."""

    def __init__(self, c, daemon):
        self.c = c
        self.d = daemon
        self.secrets = []        # every token seen: never in an answer or the log
        self.answers = []        # /authorize's answers and nginx's refusals: no token in any
        self.admin = None

    def call(self, method, path, bearer=None, body=None, headers=None):
        h = dict(headers or {})
        if bearer is not None:
            h["Authorization"] = f"Bearer {bearer}"
        return self.d.request(method, path, body, h)

    def issue(self, what, **fields):
        """POST /token as admin → (token, claims), or (None, doc) when the
        daemon refused (the caller decides whether that is a failure)."""
        body = {"expires_in": TTL, **fields}
        r = self.call("POST", "/token", self.admin, body)
        doc = r.json() or {}
        token = doc.get("access_token") or doc.get("refresh_token") or doc.get("id_token")
        if r.status != 200 or not isinstance(token, str):
            return None, (r.status, doc)
        self.secrets.append(token)
        return token, jwt_parts(token)[1]

    def must_issue(self, what, **fields):
        token, claims = self.issue(what, **fields)
        if not self.c.check(token is not None, f"POST /token {what} answers 200 with a token", repr(claims)):
            raise RuntimeError(f"cannot issue {what}")
        return token, claims

    def authorize(self, bearer=None, method="POST", path="/authorize", headers=None, body=None):
        r = self.call(method, path, bearer, body, headers)
        self.answers.append(r)
        return r

    def revoke(self, jti):
        r = self.call("POST", "/token/revoke", self.admin, {"jti": jti})
        self.c.equal(r.status, 200, "POST /token/revoke by jti answers 200")

    def set_status(self, jti, status):
        r = self.call("PATCH", f"/tokens/{jti}", self.admin, {"status": status})
        self.c.equal((r.status, (r.json() or {}).get("status")), (200, status), f"PATCH /tokens/{{jti}} to {status}")


# ---------------------------------------------------------------------------
# Part 1: direct calls


def check_granted(c, r, what, claims, body=True):
    """A 200 whose x-auth-* headers are exactly the token's claims, each
    once, and absent for a claim the token does not have."""
    ok = c.equal(r.status, 200, f"{what}: 200")
    for header, claim in zip(X_AUTH, ("sub", "org", "scope", "jti")):
        want = [claims[claim]] if claim in claims else []
        got = [v.encode("latin-1").decode("utf-8") for v in header_values(r, header)]
        ok &= c.equal(got, want, f"{what}: {header} " + (f"is {claims[claim]!r}" if want else "is absent"))
    if body:
        ok &= c.equal(r.json(), {}, f"{what}: the body is {{}}")
    return ok


def check_refused(c, r, what, status=401, challenge=CHALLENGE_INVALID, reason=None):
    """A 401 (or 403) in the SPEC §4 error form with the challenge given,
    and no x-auth-* header."""
    doc = r.json() or {}
    code = "insufficient_scope" if status == 403 else "invalid_token"
    ok = c.equal((r.status, doc.get("error")), (status, code), f"{what}: {status} {code}")
    ok &= c.equal(header_values(r, "WWW-Authenticate"), [challenge], f"{what}: WWW-Authenticate is {challenge}")
    ok &= c.equal([h for h in X_AUTH if r.header(h) is not None], [], f"{what}: no x-auth-* header")
    if reason is not None:
        ok &= c.check(reason in (doc.get("error_description") or ""), f"{what}: the description says {reason}",
                      repr(doc))
    return ok


def direct_valid(c, api):
    c.section("direct: valid tokens")
    full, full_claims = api.must_issue("with org and scope", subject="alice", org="acme",
                                       scope="orders:read orders:write")
    r = api.authorize(full)
    check_granted(c, r, "POST /authorize, token with org and scope", full_claims)
    c.equal(r.header("Cache-Control"), "no-store", "POST /authorize: Cache-Control no-store")

    bare, bare_claims = api.must_issue("without org and scope", subject="bob")
    c.check("org" not in bare_claims and "scope" not in bare_claims, "the bare token has neither org nor scope",
            repr(bare_claims))
    check_granted(c, api.authorize(bare), "POST /authorize, token without org and scope", bare_claims)

    # The scheme name is case-insensitive (RFC 9110 §11.1), spaces after it
    # are allowed (1*SP).
    check_granted(c, api.authorize(headers={"Authorization": f"bearer   {full}"}),
                  "POST /authorize, 'bearer' in lower case and three spaces", full_claims)

    utf8, utf8_claims = api.must_issue("with a UTF-8 subject", subject="zoë", org="ça")
    check_granted(c, api.authorize(utf8), "POST /authorize, UTF-8 subject and org pass byte for byte", utf8_claims)
    return full, full_claims, bare, bare_claims


def direct_refused(c, api, full):
    c.section("direct: no usable token")
    check_refused(c, api.authorize(), "no Authorization header", challenge=CHALLENGE)
    check_refused(c, api.authorize(headers={"Authorization": "Basic YWxpY2U6cGFzcw=="}), "Basic scheme",
                  challenge=CHALLENGE)
    check_refused(c, api.authorize(headers={"Authorization": "Bearer"}), "'Bearer' without a token",
                  challenge=CHALLENGE)
    check_refused(c, api.authorize(headers={"Authorization": full}), "the token without a scheme",
                  challenge=CHALLENGE)
    check_refused(c, api.authorize("not-a-jwt"), "malformed token", reason="malformed")
    check_refused(c, api.authorize("a.b.c"), "three parts that are not a JWS", reason="malformed")
    check_refused(c, api.authorize(flip_signature(full)), "one signature character changed", reason="bad_signature")
    h, p, _ = full.split(".")
    check_refused(c, api.authorize(f"{h}.{p}."), "signature removed")
    r = raw_request(api.d.port, "POST", "/authorize",
                    [("Authorization", f"Bearer {full}"), ("Authorization", f"Bearer {full}")])
    api.answers.append(r)
    check_refused(c, r, "two Authorization headers, both valid")

    c.section("direct: a token anywhere but the Authorization header counts for nothing")
    check_refused(c, api.authorize(path=f"/authorize?access_token={full}", method="GET"),
                  "GET /authorize?access_token=TOKEN", challenge=CHALLENGE)
    check_refused(c, api.authorize(body=f"access_token={full}".encode(),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"}),
                  "POST /authorize with access_token in a form body", challenge=CHALLENGE)
    check_refused(c, api.authorize(body={"token": full, "access_token": full}),
                  "POST /authorize with the token in a JSON body", challenge=CHALLENGE)
    check_refused(c, api.authorize(headers={"X-Auth-Token": full, "Cookie": f"access_token={full}"}),
                  "token in X-Auth-Token and a cookie", challenge=CHALLENGE)


def direct_lifecycle(c, api, leeway):
    c.section("direct: expired, revoked, suspended")
    short, short_claims = api.must_issue("that expires in 1 s", subject="carol", expires_in=1)
    # Valid before exp + leeway, invalid from then on (RFC 7519 §4.1.4).
    deadline = short_claims["exp"] + leeway
    while time.time() < deadline + 1.2:
        time.sleep(0.2)
    check_refused(c, api.authorize(short), "expired token", reason="expired")

    tok, claims = api.must_issue("to revoke", subject="dave", org="acme")
    check_granted(c, api.authorize(tok), "before revocation", claims)
    api.revoke(claims["jti"])
    check_refused(c, api.authorize(tok), "revoked token", reason="revoked")

    tok, claims = api.must_issue("to suspend", subject="erin", org="acme")
    check_granted(c, api.authorize(tok), "before suspension", claims)
    api.set_status(claims["jti"], "suspended")
    check_refused(c, api.authorize(tok), "suspended token", reason="suspended")
    api.set_status(claims["jti"], "active")
    check_granted(c, api.authorize(tok), "suspended token made active again", claims)


def direct_audience(c, api, full, full_claims):
    c.section("direct: audience")
    other, _ = api.must_issue("for another audience", subject="frank", audience=OTHER_AUDIENCE)
    check_refused(c, api.authorize(other), f"token for {OTHER_AUDIENCE} at the default audience {AUDIENCE}",
                  status=403, challenge=CHALLENGE_SCOPE)
    check_granted(c, api.authorize(other, headers={"X-Auth-Audience": OTHER_AUDIENCE}),
                  f"token for {OTHER_AUDIENCE}, x-auth-audience {OTHER_AUDIENCE}", jwt_parts(other)[1])
    check_refused(c, api.authorize(full, headers={"X-Auth-Audience": OTHER_AUDIENCE}),
                  f"token for {AUDIENCE}, x-auth-audience {OTHER_AUDIENCE}", status=403, challenge=CHALLENGE_SCOPE)

    both, both_claims = api.must_issue("for two audiences", subject="grace", audience=[AUDIENCE, OTHER_AUDIENCE])
    check_granted(c, api.authorize(both), "token for both audiences at the default", both_claims)
    check_granted(c, api.authorize(both, headers={"X-Auth-Audience": OTHER_AUDIENCE}),
                  f"token for both audiences, x-auth-audience {OTHER_AUDIENCE} (its other aud)", both_claims)
    check_refused(c, api.authorize(both, headers={"X-Auth-Audience": "payroll"}),
                  "token for both audiences, x-auth-audience payroll", status=403, challenge=CHALLENGE_SCOPE)
    # Audiences compare exactly: no prefix, no case folding.
    check_refused(c, api.authorize(full, headers={"X-Auth-Audience": AUDIENCE.upper()}),
                  "x-auth-audience differing in case", status=403, challenge=CHALLENGE_SCOPE)
    # A wrong audience does not hide a dead token: 401, not 403.
    check_refused(c, api.authorize(flip_signature(other)), "badly signed token for another audience")

    # A proxy that sends a bad x-auth-audience is misconfigured: 400.
    for what, hdrs in (("empty", [("X-Auth-Audience", "")]),
                       ("repeated", [("X-Auth-Audience", AUDIENCE), ("X-Auth-Audience", OTHER_AUDIENCE)]),
                       ("1025 bytes", [("X-Auth-Audience", "a" * 1025)])):
        r = raw_request(api.d.port, "POST", "/authorize", [("Authorization", f"Bearer {full}")] + hdrs)
        api.answers.append(r)
        c.equal((r.status, (r.json() or {}).get("error")), (400, "invalid_request"),
                f"x-auth-audience {what}: 400 invalid_request")
        c.equal([h for h in X_AUTH if r.header(h) is not None], [], f"x-auth-audience {what}: no x-auth-* header")

    # hsmjwtctl's management token: aud = [issuer], in no registry.
    admin_claims = jwt_parts(api.admin)[1]
    check_refused(c, api.authorize(api.admin), "hsmjwtctl mint token (aud = issuer) at the default audience",
                  status=403, challenge=CHALLENGE_SCOPE)
    check_granted(c, api.authorize(api.admin, headers={"X-Auth-Audience": api.d.issuer}),
                  "hsmjwtctl mint token (unregistered), x-auth-audience = issuer", admin_claims)


def direct_types(c, api):
    """Only access (and child) tokens are an API's bearer tokens."""
    c.section("direct: token types")
    for what, fields in (("refresh", {"token_type": "refresh", "subject": "henry"}),
                         ("id", {"token_type": "id", "subject": "henry", "client_id": AUDIENCE})):
        token, got = api.issue(what, **fields)
        if token is None:
            print(f"  note  POST /token cannot issue a {what} token in this build {got!r}: "
                  f"the {what}-token case is not run")
            continue
        header, claims = jwt_parts(token)
        c.check(header.get("typ") != "at+jwt", f"the {what} token's typ is {header.get('typ')!r}, not at+jwt")
        check_refused(c, api.authorize(token), f"{what} token")
        check_refused(c, api.authorize(token, headers={"X-Auth-Audience": AUDIENCE}),
                      f"{what} token with x-auth-audience {AUDIENCE}")


def direct_header_safety(c, api):
    """Claims that a header would not carry unchanged are refused, never
    passed on: no header of the token's choosing, no ' admin' read as 'admin'."""
    c.section("direct: claims that cannot travel as headers")
    for what, fields in (("CR LF in sub", {"subject": "mallory\r\nX-Injected: yes"}),
                         ("CR LF and a space in sub (obs-fold)", {"subject": "mallory\r\n X-Injected: yes"}),
                         ("LF in org", {"subject": "mallory", "org": "acme\nX-Injected: yes"}),
                         ("tab in scope", {"subject": "mallory", "scope": "orders:read\torders:write"}),
                         ("NUL-free control character in sub", {"subject": "mal\x7flory"}),
                         ("leading space in sub", {"subject": " admin"}),
                         ("trailing space in org", {"subject": "mallory", "org": "acme "})):
        token, got = api.issue(what, **fields)
        if token is None:
            # Refusing to issue such a token is as good: nothing can pass.
            c.equal(got[0], 400, f"{what}: POST /token refuses it with 400 (or issues it, checked below)")
            continue
        r = api.authorize(token)
        check_refused(c, r, f"token with {what}", reason="header")
        c.check(all(k.lower() != "x-injected" for k, _ in r.headers), f"{what}: no X-Injected header")


def direct_envoy(c, api, full, full_claims, bare, bare_claims):
    """Envoy's ext_authz HTTP service: path_prefix /authorize, then the
    original method and path; no body."""
    c.section("direct: Envoy's shape (original method and path under /authorize)")
    for method, path in (("DELETE", "/authorize/api/orders/7?x=1"), ("GET", "/authorize/api/orders/7?x=1"),
                         ("PUT", "/authorize/api/orders/7"), ("PATCH", "/authorize/api/orders/7"),
                         ("POST", "/authorize/api/orders"), ("OPTIONS", "/authorize/api/orders"),
                         ("GET", "/authorize/"), ("GET", "/authorize"),
                         ("GET", "/authorize/a%2Fb/..%2F..%2Ftokens")):
        check_granted(c, api.authorize(full, method=method, path=path), f"{method} {path} with a valid token",
                      full_claims)
        check_refused(c, api.authorize(method=method, path=path), f"{method} {path} without a token",
                      challenge=CHALLENGE)
    r = api.authorize(bare, method="HEAD", path="/authorize/api/orders")
    check_granted(c, r, "HEAD /authorize/api/orders with a valid token", bare_claims, body=False)
    c.equal(r.body, b"", "HEAD: no body")
    r = api.authorize(method="HEAD", path="/authorize")
    c.equal((r.status, r.header("WWW-Authenticate"), r.body), (401, CHALLENGE, b""),
            "HEAD /authorize without a token: 401 with the challenge, no body")
    # Envoy may send a cut body (with_request_body): it is not read.
    check_granted(c, api.authorize(full, path="/authorize/upload", body=b"\x00not json at all",
                                   headers={"Content-Type": "application/octet-stream"}),
                  "POST with an arbitrary body", full_claims)

    c.section("direct: the other routes keep their methods")
    r = api.call("PUT", "/tokens", api.admin)
    c.equal((r.status, r.header("Allow")), (405, "POST, GET, HEAD"), "PUT /tokens: 405 with Allow")
    r = api.call("OPTIONS", "/token/verify")
    c.equal((r.status, r.header("Allow")), (405, "POST"), "OPTIONS /token/verify: 405 with Allow")
    c.equal(api.call("GET", "/authorizeX", full).status, 404, "GET /authorizeX: 404 (not under /authorize)")
    c.equal(api.call("GET", "/authorizex/y", full).status, 404, "GET /authorizex/y: 404")


# ---------------------------------------------------------------------------
# Part 2: nginx in front of a demo backend


class Backend:
    """A demo API: answers every request with the method, path, headers and
    body length it got, and records them."""

    def __init__(self):
        self.hits = []
        self.lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"method": self.command, "path": self.path, "headers": [[k, v] for k, v in self.headers.items()],
                        "body": body.decode("latin-1")}
                with backend.lock:
                    backend.hits.append(seen)
                out = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self):
        with self.lock:
            return len(self.hits)

    def last(self):
        with self.lock:
            return self.hits[-1]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


NGINX_CONF = """\
# Written by tests/integration/test_authorize.py.  One process, in the
# foreground, everything it writes inside {dir}.
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream backend {{ server 127.0.0.1:{backend}; }}
    upstream hsmjwt {{ server 127.0.0.1:{daemon}; }}

    server {{
        listen 127.0.0.1:{port};

        location / {{
            auth_request /_hsmjwt_auth;
            auth_request_set $auth_sub $upstream_http_x_auth_subject;
            auth_request_set $auth_org $upstream_http_x_auth_org;
            auth_request_set $auth_scope $upstream_http_x_auth_scope;
            auth_request_set $auth_jti $upstream_http_x_auth_jti;
            # Set, so a client's own X-Auth-* never reaches the backend
            # (an empty value sends no header at all).
            proxy_set_header X-Auth-Subject $auth_sub;
            proxy_set_header X-Auth-Org $auth_org;
            proxy_set_header X-Auth-Scope $auth_scope;
            proxy_set_header X-Auth-Jti $auth_jti;
            proxy_pass http://backend;
        }}

        location = /_hsmjwt_auth {{
            internal;
            proxy_pass http://hsmjwt/authorize;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            # This API's audience, whatever a client sent.
            proxy_set_header X-Auth-Audience "{audience}";
        }}
    }}
}}
"""


def find_nginx():
    """nginx with auth_request, or raises Skip."""
    path = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise Skip("`nginx' is not installed (tools/setup-debian.sh test installs Debian's nginx)")
    out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=30)
    if "--with-http_auth_request_module" not in out.stdout + out.stderr:
        raise Skip(f"{path} is built without --with-http_auth_request_module")
    return path


class Nginx:
    def __init__(self, exe, workdir, daemon_port, backend_port):
        self.exe = exe
        self.dir = os.path.join(workdir, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.daemon_port = daemon_port
        self.backend_port = backend_port
        self.proc = None
        self.port = None

    def start(self):
        for _ in range(NGINX_START_ATTEMPTS):
            self.port = free_port()
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(dir=self.dir, backend=self.backend_port, daemon=self.daemon_port,
                                          port=self.port, audience=AUDIENCE))
            log = open(os.path.join(self.dir, "stderr.log"), "a")
            # -e: the error log from the first line on (the compiled-in one
            # is /var/log/nginx, which may not be writable); -p: the prefix.
            self.proc = subprocess.Popen([self.exe, "-p", self.dir, "-c", conf, "-e", os.path.join(self.dir, "error.log")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
                except OSError:
                    time.sleep(0.1)
            self.stop()
            if "Address already in use" not in self.error_log():
                raise RuntimeError(f"nginx did not start; error log:\n{self.error_log()[-3000:]}")
        raise RuntimeError(f"nginx could not get a free port in {NGINX_START_ATTEMPTS} attempts")

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        """SIGQUIT (graceful) by PID, SIGKILL after 20 s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def request(self, method, path, bearer=None, headers=None, body=None):
        h = dict(headers or {})
        if bearer is not None:
            h["Authorization"] = f"Bearer {bearer}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return Response(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()


def seen_header(hit, name):
    """Every value of header name the backend received."""
    return [v for k, v in hit["headers"] if k.lower() == name.lower()]


def through_nginx(c, api, nginx, backend, leeway):
    def passes(what, token, claims, method="GET", path="/api/orders?x=1", headers=None, body=None):
        before = backend.count()
        r = nginx.request(method, path, token, headers, body)
        ok = c.equal((r.status, backend.count()), (200, before + 1),
                     f"nginx {what}: 200 from the backend, which saw the request once")
        if not ok:
            return False
        hit = backend.last()
        ok &= c.equal((hit["method"], hit["path"]), (method, path), f"nginx {what}: the backend got {method} {path}")
        for header, claim in zip(X_AUTH, ("sub", "org", "scope", "jti")):
            want = [claims[claim]] if claim in claims else []
            ok &= c.equal(seen_header(hit, header), want,
                          f"nginx {what}: the backend saw {header} " + (repr(claims[claim]) if want else "absent"))
        if body is not None:
            ok &= c.equal(hit["body"], body.decode("latin-1"), f"nginx {what}: the body reached the backend whole")
        return ok

    def refused(what, token, status=401, headers=None, method="GET"):
        before = backend.count()
        r = nginx.request(method, "/api/orders", token, headers)
        api.answers.append(r)
        ok = c.equal((r.status, backend.count()), (status, before),
                     f"nginx {what}: {status} from nginx, the backend saw nothing")
        if status == 401:
            ok &= c.check(r.header("WWW-Authenticate") is not None and
                          r.header("WWW-Authenticate").startswith(CHALLENGE),
                          f"nginx {what}: the daemon's Bearer challenge reaches the client",
                          repr(r.header("WWW-Authenticate")))
        return ok

    c.section("nginx: valid tokens pass with the verified identity")
    full, full_claims = api.must_issue("for nginx, with org and scope", subject="alice", org="acme",
                                       scope="orders:read")
    bare, bare_claims = api.must_issue("for nginx, without org and scope", subject="bob")
    passes("GET, token with org and scope", full, full_claims)
    passes("GET, token without org and scope", bare, bare_claims)
    passes("POST with a body", full, full_claims, method="POST", path="/api/orders",
           headers={"Content-Type": "application/json"}, body=b'{"item": "book", "n": 2}')
    passes("DELETE", full, full_claims, method="DELETE", path="/api/orders/7")
    passes("PUT", full, full_claims, method="PUT", path="/api/orders/7",
           headers={"Content-Type": "application/json"}, body=b'{"n": 3}')

    c.section("nginx: forged identity headers")
    forged = {"X-Auth-Subject": "admin", "X-Auth-Org": "evil", "X-Auth-Scope": "everything",
              "X-Auth-Jti": "forged"}
    passes("valid token without org, client forged X-Auth-*: the backend sees only the token's", bare, bare_claims,
           headers=forged)
    passes("valid token with org, client forged X-Auth-*: the backend sees only the token's", full, full_claims,
           headers=forged)
    refused("no token, client forged X-Auth-Subject: admin", None, headers=forged)
    other, _ = api.must_issue("for nginx, another audience", subject="frank", audience=OTHER_AUDIENCE)
    refused(f"token for {OTHER_AUDIENCE}", other, status=403)
    refused(f"token for {OTHER_AUDIENCE}, client sends X-Auth-Audience: {OTHER_AUDIENCE}", other, status=403,
            headers={"X-Auth-Audience": OTHER_AUDIENCE})

    c.section("nginx: refused tokens never reach the backend")
    refused("no Authorization header", None)
    refused("Basic scheme", None, headers={"Authorization": "Basic YWxpY2U6cGFzcw=="})
    refused("malformed token", "not-a-jwt")
    refused("one signature character changed", flip_signature(full))
    refused("no token, POST", None, method="POST")
    # The 1 s token serves only the expired case: whether it could still pass
    # would depend on how fast it got through nginx. A long-lived token of
    # the same subject passes; the daemon's own reason for the short one
    # shows that nginx refused it for its exp alone.
    short, short_claims = api.must_issue("for nginx, expiring in 1 s", subject="carol", expires_in=1)
    twin, twin_claims = api.must_issue("for nginx, as the 1 s one but long-lived", subject="carol")
    passes("long-lived token of the 1 s token's subject", twin, twin_claims)
    while time.time() < short_claims["exp"] + leeway + 1.2:
        time.sleep(0.2)
    refused("expired token", short)
    check_refused(c, api.authorize(short), "the token nginx refused as expired, asked directly", reason="expired")

    tok, claims = api.must_issue("for nginx, to revoke", subject="dave", org="acme")
    passes("token before revocation", tok, claims)
    api.revoke(claims["jti"])
    refused("the same token after revocation", tok)
    tok, claims = api.must_issue("for nginx, to suspend", subject="erin", org="acme")
    passes("token before suspension", tok, claims)
    api.set_status(claims["jti"], "suspended")
    refused("the same token, suspended", tok)

    c.section("nginx: what it logged")
    log = nginx.error_log()
    c.check("auth request unexpected status" not in log,
            "nginx's error log has no 'auth request unexpected status' (the daemon answered only 200, 401, 403)",
            log[-2000:])


def run(build_dir, source_dir):
    require_tools(["softhsm2-util"])
    for exe in ("hsmjwtd", "hsmjwtctl"):
        if not os.access(os.path.join(build_dir, exe), os.X_OK):
            print(f"test_authorize: FAILED: {build_dir}/{exe} is not built")
            return False
    try:
        nginx_exe, nginx_missing = find_nginx(), None
    except Skip as e:
        nginx_exe, nginx_missing = None, e

    c = Checker("test_authorize")
    work = Workdir("hsmjwt-authorize-")
    token = Token(source_dir, os.path.join(work.path, "state"), "hsmjwt-authz")
    leeway = 0   # expiry is then exact, and the expired cases wait little
    daemon = Daemon(build_dir, token, ALGORITHMS, os.path.join(work.path, "hsmjwtd.log"),
                    {"HSMJWT_LEEWAY": str(leeway), "HSMJWT_DEFAULT_AUDIENCE": AUDIENCE})
    api = Api(c, daemon)
    state = {"nginx": None, "backend": None}

    def body():
        c.section("start")
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} (pid {daemon.proc.pid})")
        api.admin = daemon.mint("admin", ttl=TTL, sub="root")
        api.secrets.append(api.admin)
        valid = guarded(c, "direct: valid tokens", direct_valid, c, api)
        if valid is not None:
            full, full_claims, bare, bare_claims = valid
            guarded(c, "direct: refused", direct_refused, c, api, full)
            guarded(c, "direct: audience", direct_audience, c, api, full, full_claims)
            guarded(c, "direct: Envoy's shape", direct_envoy, c, api, full, full_claims, bare, bare_claims)
        guarded(c, "direct: lifecycle", direct_lifecycle, c, api, leeway)
        guarded(c, "direct: token types", direct_types, c, api)
        guarded(c, "direct: header safety", direct_header_safety, c, api)

        if nginx_exe is not None:
            c.section("nginx: start")
            state["backend"] = Backend()
            state["nginx"] = Nginx(nginx_exe, work.path, daemon.port, state["backend"].port)
            try:
                state["nginx"].start()
                c.check(True, f"nginx ({nginx_exe}) listens on 127.0.0.1:{state['nginx'].port}, "
                              f"the backend on {state['backend'].port}")
                guarded(c, "nginx", through_nginx, c, api, state["nginx"], state["backend"], leeway)
            finally:
                c.section("nginx: stop")
                c.equal(state["nginx"].stop(), 0, "nginx exits 0 on SIGQUIT")
                state["backend"].stop()

        c.section("no token in any answer")
        leaked = [i for i, r in enumerate(api.answers)
                  if any(s.split(".")[2] in r.body.decode("latin-1") + repr(r.headers) for s in api.secrets)]
        c.check(not leaked and len(api.answers) > 60,
                f"none of the {len(api.answers)} answers of /authorize and refusals of nginx holds a token's "
                "signature", f"answers #{leaked[:5]}")

    def log_checks(log):
        leaked = [i for i, s in enumerate(api.secrets) if s.split(".")[2] in log]
        c.check(not leaked, f"the daemon's log contains none of the {len(api.secrets)} tokens' signatures",
                f"token #{leaked[:5]} found")
        c.check(token.pin not in log, "the log does not contain the PIN")
        # The guarded API's path may carry a capability: only /authorize/ is logged.
        c.check('method=DELETE path="/authorize/"' in log and "api/orders/7" not in log,
                "the daemon's log has the Envoy-shaped request's line (method, /authorize/ without the API's path)")
        c.check('path="/authorize" status=200' in log and 'sub="alice"' in log,
                "the daemon's log names the subject of a granted /authorize")
        if state["nginx"] is not None:
            nlog = ""
            for name in ("access.log", "error.log"):
                p = os.path.join(state["nginx"].dir, name)
                if os.path.exists(p):
                    with open(p, errors="replace") as f:
                        nlog += f.read()
            leaked = [i for i, s in enumerate(api.secrets) if s.split(".")[2] in nlog]
            c.check(not leaked, "nginx's logs contain no token", f"token #{leaked[:5]} found")

    ok = run_daemon_test(c, work, daemon, body, log_checks)
    if ok and nginx_missing is not None:
        raise nginx_missing
    return ok


if __name__ == "__main__":
    main_with_dirs("test_authorize", run)
