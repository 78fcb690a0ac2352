#!/usr/bin/python3
"""Interoperability of hsmjwt's token objects with PKCS#11 clients that share
no code with it.

1. A fresh token; the daemon generates its RS256/PS256/ES256/ES384 keys.
   p11_libp11_sign (libp11 + OpenSSL EVP) finds them by label, signs JWTs
   with them, and the running daemon's /token/verify must accept every one
   (valid, "unregistered": genuinely signed but never issued by the service).
2. The daemon stopped, p11_custody (raw Cryptoki via p11-kit) proves that
   none of those private keys can be read or wrapped out of the token.
3. The same custody check on a second fresh token where the daemon made all
   five algorithms, so that the Ed25519 key is covered too.

Usage: test_interop.py BUILD_DIR SOURCE_DIR MODULE SIGN_EXE CUSTODY_EXE
(exit 0 pass, 1 fail, 77 skip; "-" for an executable that was not built)
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from hsmjwt_harness import Checker, Daemon, Skip, Token, Workdir, jwt_parts, require_tools, run_main  # noqa: E402

# libp11 0.4.12 cannot handle Ed25519 keys: a single one on the token makes
# PKCS11_enumerate_keys fail for the whole token (NOTES-PKCS11.md).  The libp11
# part therefore runs on its own token without EdDSA; the custody part covers
# Ed25519 on a second token.
LIBP11_ALGORITHMS = ["ES256", "ES384", "RS256", "PS256"]
ALL_ALGORITHMS = ["ES256", "ES384", "RS256", "PS256", "EdDSA"]
AUDIENCE = "api-interop"


def tamper(token):
    h, p, s = token.split(".")
    i = 10
    return ".".join([h, p, s[:i] + ("B" if s[i] == "A" else "A") + s[i + 1:]])


def libp11_part(c, build_dir, source_dir, module, sign_exe, custody_exe, work):
    c.section("libp11 signs with the service's keys (token without Ed25519)")
    token = Token(source_dir, os.path.join(work, "libp11"), "hsmjwt-interop")
    daemon = Daemon(build_dir, token, LIBP11_ALGORITHMS, os.path.join(work, "hsmjwtd-libp11.log"))
    tokens = {}
    try:
        daemon.start()
        c.check(True, f"hsmjwtd is healthy on {daemon.issuer} with {' '.join(LIBP11_ALGORITHMS)}")
        jwks_kids = {k["kid"]: k.get("alg") for k in daemon.jwks()["keys"]}

        # The PIN goes through standard input: never argv.
        out = subprocess.run([sign_exe, module, token.label, "-", daemon.issuer, AUDIENCE],
                             input=token.pin + "\n", capture_output=True, text=True, timeout=120,
                             env={**daemon.env(), "SOFTHSM2_CONF": token.conf})
        print("  " + out.stderr.strip().replace("\n", "\n  "))
        c.equal(out.returncode, 0, "p11_libp11_sign exits 0")
        for line in out.stdout.splitlines():
            alg, kid, jws = line.split(" ", 2)
            tokens[alg] = (kid, jws)
        c.equal(sorted(tokens), sorted(LIBP11_ALGORITHMS), "libp11 signed with a key of every algorithm")

        for alg, (kid, jws) in sorted(tokens.items()):
            header, claims = jwt_parts(jws)
            c.check(jwks_kids.get(header.get("kid")) == alg, f"{alg}: the libp11 token's kid is the JWKS key for {alg}",
                    f"kid {header.get('kid')}")
            r = daemon.request("POST", "/token/verify",
                               {"token": jws, "audience": AUDIENCE, "issuer": daemon.issuer, "token_type": "access"})
            doc = r.json() or {}
            c.equal((r.status, doc.get("valid"), doc.get("error")), (200, True, None),
                    f"{alg}: the daemon verifies the libp11-signed token")
            c.equal(doc.get("status"), "unregistered", f"{alg}: /token/verify status")
            c.equal((doc.get("claims") or {}).get("sub"), f"libp11-{alg}", f"{alg}: /token/verify returns its claims")
            r = daemon.request("POST", "/token/verify", {"token": tamper(jws)})
            c.equal(((r.json() or {}).get("valid"), (r.json() or {}).get("error")), (False, "bad_signature"),
                    f"{alg}: the same token with a changed signature is refused")
    except RuntimeError as e:
        c.check(False, "the daemon runs", str(e))
    finally:
        if daemon.proc is not None and not c.equal(daemon.stop(), 0, "hsmjwtd exits 0 on SIGTERM"):
            print(daemon.log_excerpt())
        if os.path.exists(daemon.log_path):
            log = daemon.log_text()
            c.check(not any(jws in log for _, jws in tokens.values()), "the daemon's log holds none of the tokens")

    c.section("custody of the same token (daemon stopped)")
    run_custody(c, custody_exe, module, token, LIBP11_ALGORITHMS)


def eddsa_part(c, build_dir, source_dir, module, custody_exe, work):
    c.section("custody of a token where the daemon made all five algorithms")
    token = Token(source_dir, os.path.join(work, "all"), "hsmjwt-custody")
    daemon = Daemon(build_dir, token, ALL_ALGORITHMS, os.path.join(work, "hsmjwtd-all.log"))
    try:
        daemon.start()
        algs = sorted(k.get("alg") for k in daemon.jwks()["keys"])
        c.equal(algs, sorted(ALL_ALGORITHMS), "the daemon published a key for each of the five algorithms")
    except RuntimeError as e:
        c.check(False, "the daemon runs", str(e))
    finally:
        if daemon.proc is not None and not c.equal(daemon.stop(), 0, "hsmjwtd exits 0 on SIGTERM"):
            print(daemon.log_excerpt())
    run_custody(c, custody_exe, module, token, ALL_ALGORITHMS)


def run_custody(c, custody_exe, module, token, algorithms):
    out = subprocess.run([custody_exe, module, token.label, token.pin_file, ",".join(algorithms)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SOFTHSM2_CONF": token.conf})
    print("  " + (out.stdout.strip() + "\n" + out.stderr.strip()).strip().replace("\n", "\n  "))
    c.equal(out.returncode, 0, f"p11_custody passes on token {token.label} ({', '.join(algorithms)})")


def run(build_dir, source_dir, module, sign_exe, custody_exe):
    require_tools(["softhsm2-util"])
    if sign_exe == "-" or custody_exe == "-":
        raise Skip("the interop clients were not built (libp11-dev / libp11-kit-dev missing at configure time)")
    if not os.path.exists(module):
        raise Skip(f"PKCS#11 module {module} is missing (apt-get install softhsm2)")
    for exe in (os.path.join(build_dir, "hsmjwtd"), os.path.join(build_dir, "hsmjwtctl"), sign_exe, custody_exe):
        if not os.access(exe, os.X_OK):
            print(f"test_interop: FAILED: {exe} is not built")
            return False
    c = Checker("test_interop")
    work = Workdir("hsmjwt-interop-")
    try:
        libp11_part(c, build_dir, source_dir, module, sign_exe, custody_exe, work.path)
        eddsa_part(c, build_dir, source_dir, module, custody_exe, work.path)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        c.check(False, "the interop run completes", str(e))
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    if len(sys.argv) != 6:
        print("usage: test_interop.py BUILD_DIR SOURCE_DIR MODULE SIGN_EXE CUSTODY_EXE", file=sys.stderr)
        sys.exit(2)
    a = sys.argv
    run_main("test_interop", lambda: run(os.path.abspath(a[1]), os.path.abspath(a[2]), a[3],
                                         a[4] if a[4] == "-" else os.path.abspath(a[4]),
                                         a[5] if a[5] == "-" else os.path.abspath(a[5])))
