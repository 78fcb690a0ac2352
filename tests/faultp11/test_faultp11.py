#!/usr/bin/python3
"""integration.faultp11: libfaultp11.so (tests/faultp11/faultp11.c) against a
throwaway SoftHSM token, without the daemon.

Across processes, with OpenSC's pkcs11-tool as the host: forwarding (a key
generated and an ECDSA signature that openssl verifies with the public key
read back), `error CKR_DEVICE_ERROR' (the tool fails naming the code),
clearing, a command the module does not understand (logged, forwards),
`login-error CKR_PIN_LOCKED' (the tool's one login refused with that code, the
stats file written by its process counting it), and `hang' / `hang-sign' (a
signing tool started in the background is held inside the module until the
file is cleared, then finishes with a valid signature).
In process, faultp11_check loads the module as hsmjwtd does (p11-kit,
unmanaged) and checks every command, the real module's answers after
close-sessions and logout included.

Usage: test_faultp11.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import hashlib
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from hsmjwt_harness import (Checker, Token, Workdir, clean_env, faultp11_command, faultp11_stat,  # noqa: E402
                            main_with_dirs, require_tools)

TOKEN_LABEL = "faultp11"
KEY_LABEL = "faultp11-ec"
TOOL_TIMEOUT = 120     # one pkcs11-tool run that is not held on purpose
HELD_TIMEOUT = 60      # for the module to report the call it holds
HELD_FOR = 3.0         # the held tool must still be running after this long
RELEASE_TIMEOUT = 90   # for the held tool to finish once the file is cleared


class Fault:
    """The module's control and stats files, and pkcs11-tool through it."""

    def __init__(self, build_dir, work, token):
        self.module = os.path.join(build_dir, "tests", "faultp11", "libfaultp11.so")
        self.check_bin = os.path.join(build_dir, "tests", "faultp11", "faultp11_check")
        self.control = os.path.join(work, "control")
        self.stats = os.path.join(work, "stats")
        self.work = work
        self.token = token
        self.env = clean_env()
        self.env.update({
            "SOFTHSM2_CONF": token.conf,
            "FAULTP11_CONTROL": self.control,
            "FAULTP11_STATS": self.stats,
            # pkcs11-tool reads `--pin env:NAME': the PIN stays out of argv.
            "FAULTP11_TEST_PIN": token.pin,
        })

    def command(self, text):
        faultp11_command(self.control, text)

    def stat(self, name):
        return faultp11_stat(self.stats, name)

    def tool_args(self, *args, login=True):
        argv = ["pkcs11-tool", "--module", self.module, "--token-label", TOKEN_LABEL]
        if login:
            argv += ["--login", "--pin", "env:FAULTP11_TEST_PIN"]
        return argv + list(args)

    def tool(self, *args, login=True):
        return subprocess.run(self.tool_args(*args, login=login), env=self.env, capture_output=True,
                              text=True, timeout=TOOL_TIMEOUT)

    def sign_args(self, name):
        return self.tool_args("--sign", "-m", "ECDSA", "--label", KEY_LABEL, "--signature-format", "openssl",
                              "-i", os.path.join(self.work, "digest"), "-o", os.path.join(self.work, name))

    def verify(self, name):
        """openssl's verdict on signature file name over the digest."""
        out = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER",
                              "-inkey", os.path.join(self.work, "pub.der"),
                              "-in", os.path.join(self.work, "digest"),
                              "-sigfile", os.path.join(self.work, name)],
                             capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        return out.returncode == 0 and "Signature Verified Successfully" in out.stdout


def check_forwarding(c, f):
    c.section("forwarding (pkcs11-tool through the module)")
    f.command("")
    out = f.tool("--list-slots", login=False)
    c.check(out.returncode == 0 and re.search(rf"token label\s*:\s*{TOKEN_LABEL}\b", out.stdout),
            "pkcs11-tool --list-slots shows the token", out.stderr.strip())
    c.check("faultp11: forwarding to" in out.stderr, "the module says what it forwards to", out.stderr.strip())
    out = f.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", KEY_LABEL, "--id", "01")
    c.check(out.returncode == 0, "an EC P-256 key pair generated through the module", out.stderr.strip())
    out = f.tool("--read-object", "--type", "pubkey", "--label", KEY_LABEL, "-o", os.path.join(f.work, "pub.der"))
    c.check(out.returncode == 0, "its public key read back", out.stderr.strip())
    with open(os.path.join(f.work, "digest"), "wb") as fp:
        fp.write(hashlib.sha256(b"faultp11").digest())
    out = subprocess.run(f.sign_args("sig-forward"), env=f.env, capture_output=True, text=True,
                         timeout=TOOL_TIMEOUT)
    c.check(out.returncode == 0, "pkcs11-tool --sign works", out.stderr.strip())
    c.check(f.verify("sig-forward"), "and openssl verifies the signature")


def check_error(c, f):
    c.section("error CKR_DEVICE_ERROR, cleared, invalid")
    f.command("error CKR_DEVICE_ERROR\n")
    out = f.tool("--list-slots", login=False)
    c.check(out.returncode != 0 and "CKR_DEVICE_ERROR" in out.stdout + out.stderr,
            "pkcs11-tool --list-slots fails naming CKR_DEVICE_ERROR",
            f"exit {out.returncode}: {(out.stdout + out.stderr).strip()}")
    out = subprocess.run(f.sign_args("sig-error"), env=f.env, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    c.check(out.returncode != 0 and "CKR_DEVICE_ERROR" in out.stdout + out.stderr,
            "pkcs11-tool --sign fails naming CKR_DEVICE_ERROR",
            f"exit {out.returncode}: {(out.stdout + out.stderr).strip()}")
    c.equal(f.stat("command"), "error CKR_DEVICE_ERROR", "the stats file names the command in force")

    f.command("")
    out = subprocess.run(f.sign_args("sig-cleared"), env=f.env, capture_output=True, text=True,
                         timeout=TOOL_TIMEOUT)
    c.check(out.returncode == 0 and f.verify("sig-cleared"), "cleared: a verified signature again",
            out.stderr.strip())
    c.equal(f.stat("command"), "forward", "the stats file says forward")

    f.command("error CKR_NO_SUCH_CODE\n")
    out = f.tool("--list-slots", login=False)
    c.check(out.returncode == 0 and re.search(r"faultp11: version \d+: invalid .*forwarding everything",
                                              out.stderr),
            "a command the module does not understand is logged and forwards", out.stderr.strip())
    f.command("")


def check_login_error(c, f):
    c.section("login-error CKR_PIN_LOCKED")
    f.command("login-error CKR_PIN_LOCKED\n")
    proc = subprocess.Popen(f.tool_args("--list-objects"), env=f.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=TOOL_TIMEOUT)
    c.check(proc.returncode != 0 and "CKR_PIN_LOCKED" in stdout + stderr,
            "pkcs11-tool --login fails naming CKR_PIN_LOCKED", f"exit {proc.returncode}: {(stdout + stderr).strip()}")
    c.equal((f.stat("pid"), f.stat("logins")), (proc.pid, 1),
            "the stats file is that process's and counts its one C_Login")
    f.command("")
    out = f.tool("--list-objects")
    c.check(out.returncode == 0, "cleared: pkcs11-tool logs in", out.stderr.strip())
    c.equal(f.stat("command"), "forward", "the stats file says forward")


def check_held(c, f, command, what):
    """A signing pkcs11-tool started under command is held in the module
    until the file is cleared, then finishes with a verified signature."""
    c.section(f"{command}: {what}")
    name = f"sig-{command}"
    f.command(command + "\n")
    proc = subprocess.Popen(f.sign_args(name), env=f.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + HELD_TIMEOUT
        while f.stat("hanging") != 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        c.check(f.stat("hanging") == 1, "the module reports one call held",
                f"stats hanging={f.stat('hanging')}, tool exit {proc.poll()}")
        time.sleep(HELD_FOR)
        c.check(proc.poll() is None, f"pkcs11-tool --sign is still running {HELD_FOR:.0f} s later",
                f"exit {proc.poll()}")
        f.command("")
        try:
            stdout, stderr = proc.communicate(timeout=RELEASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            c.check(False, f"cleared: pkcs11-tool finishes within {RELEASE_TIMEOUT} s")
            return
        c.check(proc.returncode == 0, "cleared: pkcs11-tool --sign finishes with exit 0",
                f"exit {proc.returncode}: {stderr.strip()}")
        c.check(f.verify(name), "and openssl verifies its signature")
        c.equal(f.stat("hanging"), 0, "the stats file shows no call held any more")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_in_process(c, f):
    c.section("in process (faultp11_check: p11-kit, unmanaged, as hsmjwtd loads it)")
    out = subprocess.run([f.check_bin, f.module, f.control, f.stats, TOKEN_LABEL, KEY_LABEL, f.token.pin_file],
                         env=f.env, capture_output=True, text=True, timeout=300)
    print(out.stdout, end="")
    c.check(out.returncode == 0 and re.search(r"faultp11_check: \d+ passed, 0 failed", out.stdout),
            "faultp11_check: every check passed", f"exit {out.returncode}; stderr: {out.stderr.strip()[-2000:]}")


def run(build_dir, source_dir):
    require_tools(["pkcs11-tool", "softhsm2-util", "openssl"])
    c = Checker("integration.faultp11")
    work = Workdir("hsmjwt-faultp11-")
    token = Token(source_dir, os.path.join(work.path, "state"), TOKEN_LABEL)
    f = Fault(build_dir, work.path, token)
    for path in (f.module, f.check_bin):
        if not os.path.exists(path):
            raise RuntimeError(f"{path} is not built (cmake --build {build_dir} --target faultp11 faultp11_check)")
    check_forwarding(c, f)
    check_error(c, f)
    check_login_error(c, f)
    check_held(c, f, "hang", "the tool's first call is held")
    check_held(c, f, "hang-sign", "the tool logs in, then C_SignInit is held")
    check_in_process(c, f)
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    main_with_dirs("test_faultp11", run)
