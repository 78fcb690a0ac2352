#!/usr/bin/python3
"""What an operator installs: `cmake --install' into a staging prefix, then
the installed pieces checked as installed — the files and their modes, the
man pages linted by groff, the units verified by systemd-analyze (and their
exposure score held to what the README reports), the sysusers and tmpfiles
snippets applied to a scratch root — and the INSTALLED daemon started from
the INSTALLED sample configuration with nothing but a PIN credential, a
token and the overrides a test box needs: plainly, under the unit's system
call filter, MemoryDenyWriteExecute and address families (seccomp, as
systemd would load them: systemd is not PID 1 here), and through socket
activation.

Usage: test_install.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail, 77 skip)
"""

import ctypes
import errno
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import (Checker, Daemon, Skip, Token, Workdir, clean_env, free_port, guarded,  # noqa: E402
                            main_with_dirs, require_tools)

# `systemd-analyze security --offline=true hsmjwtd.service' measured 1.2 on
# systemd 252 (Debian 12); README.md's Operations section reports it.  A
# change to the unit that weakens it fails here.
MAX_EXPOSURE = 1.2
EXIT_TIMEOUT = 90.0
TOKEN_LABEL = "hsmjwt-install"

# What the staging prefix must hold, and each file's mode.
EXPECTED = {
    "sbin/hsmjwtd": 0o755,
    "bin/hsmjwtctl": 0o755,
    "etc/hsmjwt/hsmjwt.conf": 0o644,
    "lib/systemd/system/hsmjwtd.service": 0o644,
    "lib/systemd/system/hsmjwtd.socket": 0o644,
    "lib/sysusers.d/hsmjwt.conf": 0o644,
    "lib/tmpfiles.d/hsmjwt.conf": 0o644,
    "share/man/man1/hsmjwtctl.1": 0o644,
    "share/man/man5/hsmjwt.conf.5": 0o644,
    "share/man/man8/hsmjwtd.8": 0o644,
    "share/doc/hsmjwt/README.md": 0o644,
    "share/doc/hsmjwt/hsmjwt.conf.sample": 0o644,
    "include/hsmjwt/verify.h": 0o644,
    "lib/pkgconfig/hsmjwt-verify.pc": 0o644,
}
MAN_PAGES = ["share/man/man1/hsmjwtctl.1", "share/man/man5/hsmjwt.conf.5", "share/man/man8/hsmjwtd.8"]


# ---- the unit's sandbox, as systemd would load it ---------------------------
#
# `test_install.py --exec-sandboxed PROGRAM ARGS...' loads seccomp filters
# equivalent to the unit's NoNewPrivileges=, SystemCallFilter=@system-service
# ~@privileged @resources, SystemCallArchitectures=native,
# MemoryDenyWriteExecute= and RestrictAddressFamilies=AF_INET AF_INET6
# AF_UNIX, plus UMask= and LimitCORE=, shows in child processes that each
# bites, and execs PROGRAM under them.  Filters stack like systemd's: the
# strictest verdict wins.  A system call outside the allow-list kills the
# process (SIGSYS) where the unit answers EPERM (SystemCallErrorNumber=): a
# daemon that serves and stops cleanly under it never even tried one.

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
ALLOWED_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)


def scmp_act_errno(code):
    return 0x00050000 | (code & 0xFFFF)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def syscall_groups():
    """`systemd-analyze syscall-filter' as {"@group": [names and @groups]}."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, timeout=60)
    groups, current = {}, None
    for line in out.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return groups


def expand(groups, items, seen=None):
    seen = set() if seen is None else seen
    names = set()
    for item in items:
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                names |= expand(groups, groups[item], seen)
        else:
            names.add(item)
    return names


class Seccomp:
    def __init__(self, default_action):
        self.lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                    ctypes.POINTER(ScmpArgCmp)]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.seccomp_init(default_action)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action, name, *cmps):
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return False   # not a system call of this architecture
        arr = (ScmpArgCmp * max(len(cmps), 1))(*[ScmpArgCmp(*c) for c in cmps])
        r = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), arr)
        if r < 0:
            raise OSError(-r, f"seccomp_rule_add {name}")
        return True

    def load(self):
        r = self.lib.seccomp_load(self.ctx)
        if r < 0:
            raise OSError(-r, "seccomp_load")


def killed_by_sigsys(status):
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def mmap_anonymous(libc):
    """A private read-write page, by libc (Python's mmap hides the address)."""
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return libc.mmap(None, 4096, 0x1 | 0x2, 0x02 | 0x20, -1, 0)   # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS


def mprotect_exec_refused(libc):
    page = mmap_anonymous(libc)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.mprotect(page, 4096, 0x1 | PROT_EXEC) != 0 and ctypes.get_errno() == errno.EPERM


def exec_sandboxed(argv):
    import mmap
    import resource

    groups = syscall_groups()
    allowed = expand(groups, ["@default", "@system-service"]) - expand(groups, ["@privileged", "@resources"])
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:   # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")

    calls = Seccomp(SCMP_ACT_KILL_PROCESS)
    for name in sorted(allowed):
        calls.rule(SCMP_ACT_ALLOW, name)
    mdwe = Seccomp(SCMP_ACT_ALLOW)
    mdwe.rule(scmp_act_errno(errno.EPERM), "mmap", (2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
    for name in ("mprotect", "pkey_mprotect"):
        mdwe.rule(scmp_act_errno(errno.EPERM), name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    mdwe.rule(scmp_act_errno(errno.EPERM), "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    families = Seccomp(SCMP_ACT_ALLOW)
    for family in range(0, 46):
        if family not in ALLOWED_FAMILIES:
            families.rule(scmp_act_errno(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, family))
    # The allow-list last: seccomp() itself is not in it.
    filters = (mdwe, families, calls)

    # Each filter must bite, or the daemon running under them proves
    # nothing: a child loads them and tries what they forbid.
    def refused(fn, code):
        try:
            fn()
        except OSError as e:
            return e.errno == code
        return False

    def in_child(probe):
        pid = os.fork()
        if pid == 0:
            try:
                for f in filters:
                    f.load()
                os._exit(probe())
            except BaseException:   # noqa: BLE001 — the child reports by its status only
                os._exit(99)
        return os.waitpid(pid, 0)[1]

    bites = {
        "W+X memory": in_child(lambda: 0 if refused(
            lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC), errno.EPERM) else 1) == 0,
        "mprotect(PROT_EXEC)": in_child(lambda: 0 if mprotect_exec_refused(libc) else 1) == 0,
        "an AF_NETLINK socket": in_child(lambda: 0 if refused(
            lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW), errno.EAFNOSUPPORT) else 1) == 0,
        "sched_setaffinity (@resources)": killed_by_sigsys(in_child(lambda: os.sched_setaffinity(0, {0}) or 1)),
        "chroot (@privileged)": killed_by_sigsys(in_child(lambda: os.chroot("/") or 1)),
    }
    for what, ok in bites.items():
        if not ok:
            print(f"exec-sandboxed: the filters do not refuse {what}", file=sys.stderr)
            sys.exit(3)
    for f in filters:
        f.load()
    print("exec-sandboxed: filters loaded, each refusing: " + ", ".join(bites), file=sys.stderr, flush=True)
    os.execv(argv[0], argv)


# ---- helpers -----------------------------------------------------------------

def cmake_command(build_dir):
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            m = re.search(r"^CMAKE_COMMAND:INTERNAL=(.+)$", f.read(), re.M)
        if m and os.access(m.group(1), os.X_OK):
            return m.group(1)
    except OSError:
        pass
    return shutil.which("cmake") or "cmake"


def config_keys(source_dir):
    """The key names of src/config.c's table, read from the source."""
    with open(os.path.join(source_dir, "src", "config.c")) as f:
        text = f.read()
    table = text[text.index("config_keys[] = {"):]
    table = table[:table.index("};")]
    return [a or b for a, b in re.findall(r'KEY_(?:STR|INT|FN)\((\w+)|\{ "(\w+)"', table)]


def wait_exit(proc, timeout=EXIT_TIMEOUT):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def serve(c, d, label, body):
    """Runs body() against d, then stops d by PID: a non-zero exit on
    SIGTERM is what a sanitizer report looks like.  The log's excerpt is
    printed when anything failed."""
    failed_before = len(c.failed)
    try:
        body()
    except (RuntimeError, OSError) as e:
        c.check(False, f"{label}: the daemon runs", str(e))
    finally:
        if d.proc is not None:
            pid = d.proc.pid
            c.equal(d.stop(), 0, f"{label}: hsmjwtd (pid {pid}) exits 0 on SIGTERM")
        if len(c.failed) > failed_before and os.path.exists(d.log_path):
            print(f"-- {label}: daemon log (sanitizer report or tail)")
            print(d.log_excerpt())


def unit_value(text, key):
    return re.findall(rf"^{key}=(.*)$", text, re.M)


class InstalledDaemon(Daemon):
    """The staged hsmjwtd with the staged configuration: only the PIN
    credential, SoftHSM's file and the overrides a test box must change."""

    def __init__(self, stage, token, work, log_name, cred_dir, wrapper=(), extra_env=None):
        super().__init__(os.path.join(stage, "sbin"), token, [], os.path.join(work, log_name),
                         extra_env=extra_env, state_dir=os.path.join(work, "state"))
        self.stage = stage
        self.cred_dir = cred_dir
        self.wrapper = list(wrapper)
        self.config = os.path.join(stage, "etc", "hsmjwt", "hsmjwt.conf")

    def env(self):
        env = clean_env()
        env.update({
            "SOFTHSM2_CONF": self.token.conf,
            "CREDENTIALS_DIRECTORY": self.cred_dir,
            "HSMJWT_STATE_DIR": self.state_dir,
            "HSMJWT_TOKEN": self.token.label,
        })
        if self.port is not None:
            env["HSMJWT_LISTEN"] = f"127.0.0.1:{self.port}"
        env.update(self.extra_env)
        return env

    def ctl(self, *args, timeout=120):
        return subprocess.run([os.path.join(self.stage, "bin", "hsmjwtctl"), "--config", self.config, *args],
                              env=self.env(), capture_output=True, text=True, timeout=timeout)

    def start(self, keep_port=False):
        for attempt in range(1, 6):
            self.port = free_port()
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen([*self.wrapper, os.path.join(self.stage, "sbin", "hsmjwtd"),
                                              "--config", self.config], env=self.env(), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT)
            state = self._wait_healthy()
            if state == "up":
                return
            if state == "exited" and "cannot listen" in self.log_text() and attempt < 5:
                continue
            tail = self.log_text()[-3000:]
            self.kill()
            raise RuntimeError(f"the installed hsmjwtd did not become healthy ({state}); log tail:\n{tail}")
        raise RuntimeError("no free port in 5 attempts")


# ---- sections ------------------------------------------------------------------

def install_checks(c, build_dir, source_dir, work):
    c.section("cmake --install --prefix STAGE")
    cmake = cmake_command(build_dir)
    stage = os.path.join(work, "stage")
    out = subprocess.run([cmake, "--install", build_dir, "--prefix", stage], capture_output=True, text=True,
                         timeout=300)
    if not c.equal(out.returncode, 0, "cmake --install --prefix succeeds"):
        print(out.stdout[-3000:], out.stderr[-3000:])
        return None
    for rel, mode in EXPECTED.items():
        path = os.path.join(stage, rel)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            c.check(False, f"{rel} is installed")
            continue
        c.equal(stat.S_IMODE(st.st_mode), mode, f"{rel} is installed, mode {mode:o}")
    lib = os.path.join(stage, "lib", "libhsmjwt-verify.so.0")
    c.check(os.path.exists(lib), "lib/libhsmjwt-verify.so.0 is installed")
    for doc in sorted(f for f in os.listdir(os.path.join(source_dir, "hsm")) if f.endswith(".md")):
        c.check(os.path.isfile(os.path.join(stage, "share", "doc", "hsmjwt", "hsm", doc)),
                f"hsm/{doc} is installed under share/doc/hsmjwt/hsm")
    version = subprocess.run([os.path.join(stage, "sbin", "hsmjwtd"), "--version"], capture_output=True, text=True,
                             timeout=30)
    c.check(version.returncode == 0 and version.stdout.startswith("hsmjwtd "), "the installed hsmjwtd runs",
            version.stdout + version.stderr)

    with open(os.path.join(stage, "lib", "systemd", "system", "hsmjwtd.service")) as f:
        unit = f.read()
    conf = os.path.join(stage, "etc", "hsmjwt", "hsmjwt.conf")
    c.equal(unit_value(unit, "ExecStart"), [f"{stage}/sbin/hsmjwtd --config {conf}"],
            "ExecStart= names the hsmjwtd and the configuration of this prefix")
    c.equal(unit_value(unit, "ExecStartPre"), [f"{stage}/sbin/hsmjwtd --config {conf} --check-config"],
            "ExecStartPre= checks that configuration")
    c.equal(unit_value(unit, "LoadCredential"), [f"pin:{stage}/etc/hsmjwt/pin"], "the PIN credential's source")
    c.check("@" not in re.sub(r"^#.*$|SystemCallFilter=.*$", "", unit, flags=re.M),
            "no @VARIABLE@ is left in the unit")

    c.section("a reinstall keeps the operator's configuration")
    with open(conf, "a") as f:
        f.write("# edited by the operator\n")
    out = subprocess.run([cmake, "--install", build_dir, "--prefix", stage], capture_output=True, text=True,
                         timeout=300)
    c.equal(out.returncode, 0, "the second install succeeds")
    with open(conf) as f:
        c.check(f.read().endswith("# edited by the operator\n"), "hsmjwt.conf is not overwritten")
    c.check("Keeping:" in out.stdout, "and the install says so", out.stdout[-500:])
    with open(conf, "w") as f, open(os.path.join(source_dir, "etc", "hsmjwt.conf.sample")) as sample:
        f.write(sample.read())

    c.section("DESTDIR with the prefix /usr: a package's layout")
    destdir = os.path.join(work, "destdir")
    out = subprocess.run([cmake, "--install", build_dir, "--prefix", "/usr"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "DESTDIR": destdir})
    c.equal(out.returncode, 0, "DESTDIR=... cmake --install --prefix /usr succeeds")
    for rel in ("usr/sbin/hsmjwtd", "usr/bin/hsmjwtctl", "etc/hsmjwt/hsmjwt.conf", "usr/lib/systemd/system/hsmjwtd.service",
                "usr/lib/sysusers.d/hsmjwt.conf", "usr/share/man/man8/hsmjwtd.8"):
        c.check(os.path.isfile(os.path.join(destdir, rel)), f"{rel} is staged under DESTDIR")
    try:
        with open(os.path.join(destdir, "usr/lib/systemd/system/hsmjwtd.service")) as f:
            packaged = f.read()
        c.equal(unit_value(packaged, "ExecStart"), ["/usr/sbin/hsmjwtd --config /etc/hsmjwt/hsmjwt.conf"],
                "its unit names /usr/sbin/hsmjwtd and /etc/hsmjwt (not DESTDIR, not /usr/etc)")
        c.equal(unit_value(packaged, "LoadCredential"), ["pin:/etc/hsmjwt/pin"], "and the credential /etc/hsmjwt/pin")
    except FileNotFoundError:
        c.check(False, "the DESTDIR unit exists")
    return stage


def content_checks(c, source_dir, stage, work):
    c.section("the sample configuration and the man pages cover every key and command")
    keys = config_keys(source_dir)
    c.check(len(keys) >= 29, f"src/config.c's table read ({len(keys)} keys)")
    conf = os.path.join(stage, "etc", "hsmjwt", "hsmjwt.conf")
    with open(conf) as f:
        sample = f.read()
    with open(os.path.join(stage, "share/man/man5/hsmjwt.conf.5")) as f:
        man5 = f.read()
    for key in keys:
        c.check(re.search(rf"^#?{key} =", sample, re.M), f"the sample shows {key}")
        c.check(re.search(rf"^\.It Cm (\w+ , )*{key}\b", man5, re.M), f"hsmjwt.conf(5) describes {key}")
    c.check(re.search(r"^state_dir = /var/lib/hsmjwt$", sample, re.M), "the sample sets state_dir /var/lib/hsmjwt")
    c.check(re.search(r"^#pin_file =", sample, re.M) and not re.search(r"^pin_file", sample, re.M),
            "pin_file is commented: the unit hands the PIN over as a credential")

    # The defaults the sample shows, uncommented, are what the daemon takes.
    shown = [line[1:] for line in sample.splitlines()
             if re.match(r"#\w+ = \S", line) and "<" not in line and not line.startswith("#pin_file")]
    path = os.path.join(work, "shown-defaults.conf")
    with open(path, "w") as f:
        f.write("\n".join(shown) + "\n")
    out = subprocess.run([os.path.join(stage, "sbin", "hsmjwtd"), "--config", path, "--check-config"],
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    c.check(out.returncode == 0 and len(shown) >= 20,
            f"the {len(shown)} commented defaults, uncommented, pass --check-config", out.stderr.strip())

    help_text = subprocess.run([os.path.join(stage, "bin", "hsmjwtctl"), "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    commands = re.findall(r"^  ((?:keys|registry) \w+|[a-z]+)\b", help_text, re.M)
    c.check(len(commands) >= 12, f"hsmjwtctl --help lists its commands ({len(commands)})")
    with open(os.path.join(stage, "share/man/man1/hsmjwtctl.1")) as f:
        man1 = f.read()
    for command in commands:
        c.check(re.search(rf"^\.It Cm {command}\b", man1, re.M), f"hsmjwtctl(1) describes `{command}'")
    with open(os.path.join(stage, "share/man/man8/hsmjwtd.8")) as f:
        man8 = f.read()
    for sig in ("SIGHUP", "SIGTERM", "SIGUSR1"):
        c.check(re.search(rf"^\.It Dv {sig}\b", man8, re.M), f"hsmjwtd(8) describes {sig}")
    for section in ("SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS"):
        c.check(re.search(rf"^\.Sh {section}$", man8, re.M), f"hsmjwtd(8) has {section}")


def man_checks(c, stage):
    c.section("man pages: groff -mdoc -ww, man -l")
    for rel in MAN_PAGES:
        path = os.path.join(stage, rel)
        out = subprocess.run(["groff", "-mdoc", "-ww", "-z", "-Tutf8", path], capture_output=True, text=True,
                             timeout=60)
        c.check(out.returncode == 0 and out.stdout == "" and out.stderr == "", f"{rel}: groff prints no warning",
                out.stderr.strip()[:800])
        env = {**clean_env(), "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}
        out = subprocess.run(["man", "-l", path], capture_output=True, text=True, timeout=60, env=env)
        name = os.path.basename(rel).rsplit(".", 1)[0]
        c.check(out.returncode == 0 and re.search(rf"^NAME\n +{re.escape(name)} (—|-) \S", out.stdout, re.M),
                f"{rel}: man -l renders it", (out.stderr or out.stdout[:300]).strip())


def systemd_checks(c, stage, work):
    c.section("systemd-analyze verify and security")
    units = [os.path.join(stage, "lib/systemd/system", u) for u in ("hsmjwtd.service", "hsmjwtd.socket")]
    # Documentation=man:... is looked up with man(1): the staged pages.
    env = {**clean_env(), "MANPATH": os.path.join(stage, "share", "man") + ":", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
    out = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120, env=env)
    c.equal(out.returncode, 0, "systemd-analyze verify exits 0")
    c.equal(out.stderr.strip(), "", "and prints nothing on stderr")
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", units[0]], capture_output=True, text=True,
                         timeout=120, env=env)
    m = re.search(r"Overall exposure level for hsmjwtd\.service: (\d+\.\d+)", out.stdout)
    c.check(m is not None, "systemd-analyze security --offline=true gives an exposure level", out.stderr.strip()[:500])
    if m:
        score = float(m.group(1))
        print(f"  exposure level: {score}")
        c.check(score <= MAX_EXPOSURE, f"the exposure level {score} is at most {MAX_EXPOSURE} (README)")

    c.section("sysusers.d and tmpfiles.d, applied to a scratch root")
    root = os.path.join(work, "sysroot")
    for sub, name in (("usr/lib/sysusers.d", "lib/sysusers.d/hsmjwt.conf"), ("usr/lib/tmpfiles.d", "lib/tmpfiles.d/hsmjwt.conf")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        shutil.copy(os.path.join(stage, name), os.path.join(root, sub, "hsmjwt.conf"))
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    out = subprocess.run(["systemd-sysusers", f"--root={root}"], capture_output=True, text=True, timeout=60)
    c.equal(out.returncode, 0, "systemd-sysusers --root applies the snippet")
    try:
        with open(os.path.join(root, "etc/passwd")) as f:
            passwd = f.read()
        with open(os.path.join(root, "etc/group")) as f:
            group = f.read()
    except FileNotFoundError:
        passwd = group = ""
    m = re.search(r"^hsmjwt:x:(\d+):(\d+):[^:]*:/var/lib/hsmjwt:(\S+)$", passwd, re.M)
    c.check(m is not None, "user hsmjwt, home /var/lib/hsmjwt", passwd)
    c.check(m is not None and int(m.group(1)) < 1000 and "nologin" in m.group(3), "a system user without a shell")
    c.check(re.search(r"^softhsm:x:\d+:(.*,)?hsmjwt(,.*)?$", group, re.M), "in the group softhsm", group)
    out = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create"], capture_output=True, text=True, timeout=60)
    c.equal(out.returncode, 0, "systemd-tmpfiles --root --create applies the snippet")
    try:
        st = os.stat(os.path.join(root, "var/lib/hsmjwt"))
        c.check(stat.S_IMODE(st.st_mode) == 0o700 and m is not None and st.st_uid == int(m.group(1)),
                "/var/lib/hsmjwt: 0700, owned by hsmjwt", f"mode {stat.S_IMODE(st.st_mode):o} uid {st.st_uid}")
    except FileNotFoundError:
        c.check(False, "/var/lib/hsmjwt is created")


def served_checks(c, d, label):
    """/health, then an admin token from the installed hsmjwtctl and a POST
    /token with it, and the token verified by the daemon."""
    r = d.request("GET", "/health")
    c.check(r.status == 200 and (r.json() or {}).get("hsm") == "ok", f"{label}: /health 200, hsm ok", r.body[:200])
    admin = d.ctl("mint", "--roles", "admin", "--ttl", "600")
    c.equal(admin.returncode, 0, f"{label}: the installed hsmjwtctl mints an admin token with the credential")
    if admin.returncode != 0:
        print(admin.stderr[-1000:])
        return
    bearer = {"Authorization": f"Bearer {admin.stdout.strip()}"}
    r = d.request("POST", "/token", {"subject": "alice"}, headers=bearer)
    token = (r.json() or {}).get("access_token")
    c.check(r.status == 200 and token, f"{label}: POST /token issues a token", r.body[:300])
    if token:
        r = d.request("POST", "/token/verify", {"token": token})
        c.check(r.status == 200 and (r.json() or {}).get("valid") is True and
                r.json()["claims"].get("sub") == "alice", f"{label}: it verifies, sub alice", r.body[:300])


def daemon_checks(c, source_dir, stage, work, token, cred_dir):
    c.section("the installed daemon from the installed configuration, with a PIN credential")
    d = InstalledDaemon(stage, token, work, "installed.log", cred_dir)
    out = subprocess.run([os.path.join(stage, "sbin", "hsmjwtd"), "--config", d.config, "--check-config"],
                         env=d.env(), capture_output=True, text=True, timeout=60)
    c.equal(out.returncode, 0, "ExecStartPre's --check-config passes")
    serve(c, d, "installed", lambda: (d.start(), served_checks(c, d, "installed")))
    log = d.log_text()
    c.check(token.pin not in log, "the PIN is not in its log")
    c.check("development-only pin" not in log, "no development-PIN warning: the credential was used")
    c.check(re.search(r'msg="listening" address=127\.0\.0\.1 port=\d+', log), "it listened on the address given")
    st = os.stat(os.path.join(d.state_dir, "registry.log"))
    c.check(stat.S_IMODE(st.st_mode) & 0o077 == 0, "the registry is private to its user",
            f"{stat.S_IMODE(st.st_mode):o}")


def sandbox_checks(c, stage, work, token, cred_dir):
    c.section("under the unit's seccomp sandbox (system calls, W^X, address families)")
    env_extra = {}
    # LeakSanitizer stops the world with ptrace, which @system-service
    # refuses (as it would under systemd): leaks are checked by the other
    # runs.  A no-op in a build without sanitizers.
    if "ASAN_OPTIONS" in os.environ:
        env_extra["ASAN_OPTIONS"] = os.environ["ASAN_OPTIONS"] + ":detect_leaks=0"
    d = InstalledDaemon(stage, token, work, "sandboxed.log", cred_dir,
                        wrapper=[sys.executable, os.path.abspath(__file__), "--exec-sandboxed"], extra_env=env_extra)
    def body():
        d.start()
        with open(f"/proc/{d.proc.pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        c.check(status.get("Seccomp", "").strip() == "2" and int(status.get("Seccomp_filters", "0")) >= 3 and
                status.get("NoNewPrivs", "").strip() == "1",
                "the daemon runs under the filters (Seccomp 2, 3 filters, NoNewPrivs)",
                f"{status.get('Seccomp')} {status.get('Seccomp_filters')} {status.get('NoNewPrivs')}")
        served_checks(c, d, "sandboxed")
    serve(c, d, "sandboxed", body)
    log = d.log_text()
    c.check("exec-sandboxed: filters loaded, each refusing" in log, "the filters were loaded, and refuse what they must",
            log[:500])


def socket_checks(c, stage, work, token, cred_dir):
    c.section("socket activation: listen = systemd")
    d = InstalledDaemon(stage, token, work, "activated.log", cred_dir, extra_env={"HSMJWT_LISTEN": "systemd"})
    d.port = None
    env = d.env()
    env["HSMJWT_LISTEN"] = "systemd"
    out = subprocess.run([os.path.join(stage, "sbin", "hsmjwtd"), "--config", d.config, "--check-config"], env=env,
                         capture_output=True, text=True, timeout=60)
    c.equal(out.returncode, 0, "listen = systemd is a valid configuration")

    with open(os.path.join(work, "no-sockets.log"), "w") as log:
        proc = subprocess.Popen([os.path.join(stage, "sbin", "hsmjwtd"), "--config", d.config], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    code = wait_exit(proc)
    with open(os.path.join(work, "no-sockets.log")) as f:
        text = f.read()
    c.equal(code, 1, "without LISTEN_FDS it refuses to start (exit 1)")
    c.check("listen = systemd, but no socket was passed" in text, "and says so", text[-500:])

    passed = [f"-E{k}" for k in env if k.startswith("HSMJWT_") or k in ("SOFTHSM2_CONF", "CREDENTIALS_DIRECTORY")]
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        if k in env:
            passed.append(f"-E{k}")
    proc = None
    for attempt in range(5):
        d.port = free_port()
        with open(d.log_path, "w") as log:
            proc = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{d.port}", *passed,
                                     os.path.join(stage, "sbin", "hsmjwtd"), "--config", d.config],
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        # It binds before anything else; a taken port ends it at once.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and "Listening on" not in d.log_text():
            time.sleep(0.05)
        if proc.poll() is None and "Listening on" in d.log_text():
            break
        wait_exit(proc)
        proc = None
    if not c.check(proc is not None, "systemd-socket-activate holds a free port"):
        return
    d.proc = proc

    def body():
        # The first connection makes it exec hsmjwtd, which then takes the
        # socket; the request waits in the backlog meanwhile.
        r = d.request("GET", "/health", timeout=120)
        c.check(r.status == 200, "/health answers through the passed socket", r.body[:200])
        served_checks(c, d, "activated")
        log = d.log_text()
        c.check(re.search(rf'msg="listening" address=127\.0\.0\.1 port={d.port} workers=\d+ from=systemd', log),
                "the daemon took the passed socket (from=systemd), in the activator's PID", log[-800:])
    serve(c, d, "activated", body)

    c.section("a passed socket that is not a listening TCP socket")
    port = free_port()
    log_path = os.path.join(work, "datagram.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["systemd-socket-activate", "--datagram", "-l", f"127.0.0.1:{port}", *passed,
                                 os.path.join(stage, "sbin", "hsmjwtd"), "--config", d.config],
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    with open(log_path) as f:
        while time.monotonic() < deadline and proc.poll() is None and "Listening on" not in f.read():
            f.seek(0)
            time.sleep(0.05)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("127.0.0.1", port))
    code = wait_exit(proc)
    with open(log_path) as f:
        text = f.read()
    c.equal(code, 1, "a UDP socket is refused (exit 1)")
    c.check("a passed socket is not a listening TCP socket" in text, "and the log says why", text[-500:])


def run(build_dir, source_dir):
    require_tools(["softhsm2-util", "systemd-analyze", "systemd-socket-activate", "systemd-sysusers",
                   "systemd-tmpfiles", "groff", "man"])
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError as e:
        raise Skip(f"libseccomp.so.2 is missing ({e}); apt-get install libseccomp2")
    c = Checker("install")
    work = Workdir("hsmjwt-install-")
    stage = guarded(c, "install", install_checks, c, build_dir, source_dir, work.path)
    if stage is None:
        ok = c.summary()
        work.finish(ok)
        return ok
    guarded(c, "content", content_checks, c, source_dir, stage, work.path)
    guarded(c, "man", man_checks, c, stage)
    guarded(c, "systemd", systemd_checks, c, stage, work.path)

    token = Token(source_dir, os.path.join(work.path, "token"), TOKEN_LABEL)
    # What LoadCredential= makes: a directory holding the file `pin'.
    cred_dir = os.path.join(work.path, "credentials")
    os.makedirs(cred_dir, mode=0o700)
    shutil.copy(token.pin_file, os.path.join(cred_dir, "pin"))
    os.chmod(os.path.join(cred_dir, "pin"), 0o400)
    guarded(c, "daemon", daemon_checks, c, source_dir, stage, work.path, token, cred_dir)
    guarded(c, "sandbox", sandbox_checks, c, stage, work.path, token, cred_dir)
    guarded(c, "socket", socket_checks, c, stage, work.path, token, cred_dir)
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--exec-sandboxed":
        exec_sandboxed(sys.argv[2:])
    main_with_dirs("test_install", run)
