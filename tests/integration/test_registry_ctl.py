#!/usr/bin/python3
"""`hsmjwtctl registry check [--repair]` and `registry compact` (SPEC §7) on
registry files built here byte by byte, with a CRC32C written here: an
independent reading of the record format of include/hsmjwt/registry_codec.h.
Clean, torn and corrupt files get the right exit code and the offset, a
repair keeps exactly the good frames, and nothing runs while the state_dir
lock is held.  No token: these commands never read the PIN.

Usage: test_registry_ctl.py BUILD_DIR SOURCE_DIR     (exit 0 pass, 1 fail)
"""

import fcntl
import os
import re
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hsmjwt_harness import Checker, Workdir, clean_env, run_main  # noqa: E402

MAGIC = b"HSMJWTR1"
KIND_TOKEN, KIND_STATUS, KIND_META = 1, 2, 3
ACTIVE, SUSPENDED, REVOKED = 0, 1, 2
TYPE_ACCESS, TYPE_REFRESH = 0, 1
NO_INDEX = 0xFFFFFFFF


def crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ CRC_TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def mask(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def string(text):
    data = text.encode()
    return struct.pack("<H", len(data)) + data


def frame(body):
    return struct.pack("<II", len(body), mask(crc32c(body))) + body


def token(seq, jti, exp, status=ACTIVE, kind_type=TYPE_ACCESS, iat=None, org="acme", subject="alice", idx=NO_INDEX):
    iat = exp - 600 if iat is None else iat
    body = struct.pack("<QB", seq, KIND_TOKEN) + string(jti) + struct.pack("<BqB", status, iat, kind_type)
    for text in (org, subject, "laptop", "a token for tests", "client-1", "kid-1", "", ""):
        body += string(text)
    return frame(body + struct.pack("<qI", exp, idx))


def status_change(seq, jti, status, at, reason=""):
    return frame(struct.pack("<QB", seq, KIND_STATUS) + string(jti) + struct.pack("<Bq", status, at) + string(reason))


def meta(seq, next_idx):
    return frame(struct.pack("<QBI", seq, KIND_META, next_idx))


def image(frames):
    """(file bytes, offset of every frame, end of every frame)."""
    data, offsets, ends = bytearray(MAGIC), [], []
    for f in frames:
        offsets.append(len(data))
        data += f
        ends.append(len(data))
    return bytes(data), offsets, ends


def read_frames(data):
    """Splits a file this test trusts (checksums verified) into (kind, seq, body)."""
    assert data[:8] == MAGIC, "bad magic"
    out, off = [], 8
    while off < len(data):
        length, crc = struct.unpack_from("<II", data, off)
        body = data[off + 8:off + 8 + length]
        assert len(body) == length and mask(crc32c(body)) == crc, f"bad frame at {off}"
        seq, kind = struct.unpack_from("<QB", body)
        out.append((kind, seq, body))
        off += 8 + length
    return out


def token_jti(body):
    n = struct.unpack_from("<H", body, 9)[0]
    return body[11:11 + n]


def token_status(body):
    return body[11 + len(token_jti(body))]


class Ctl:
    def __init__(self, build_dir, state_dir):
        self.exe = os.path.join(build_dir, "hsmjwtctl")
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "registry.log")

    def run(self, *args):
        env = clean_env()
        env.update({"HSMJWT_STATE_DIR": self.state_dir, "HSMJWT_LOG_LEVEL": "info"})
        return subprocess.run([self.exe, "registry", *args], env=env, capture_output=True, text=True, timeout=120)

    def write(self, data):
        with open(self.path, "wb") as f:
            f.write(data)

    def read(self):
        with open(self.path, "rb") as f:
            return f.read()


def field(out, name):
    m = re.search(rf"^{name}:\s+(\d+)", out.stdout, re.M)
    return int(m.group(1)) if m else None


def sample(now):
    """Seven frames: META, tokens and status changes, seqs with gaps."""
    return [
        meta(1, 40),
        token(2, "jti-a", now + 3600, idx=7),
        token(3, "jti-b", now + 3600, kind_type=TYPE_REFRESH),
        status_change(5, "jti-a", SUSPENDED, now, "lost laptop"),
        token(6, "jti-c", now + 7200),
        status_change(9, "jti-b", REVOKED, now),
        token(10, "jti-d", now + 60),
    ]


def self_checks(c):
    c.section("the test's own CRC32C")
    c.equal(crc32c(b"123456789"), 0xE3069283, "CRC32C(\"123456789\")")
    c.equal(crc32c(bytes(32)), 0x8A9136AA, "CRC32C of 32 zero bytes (RFC 3720 B.4)")
    c.equal(crc32c(bytes(range(32))), 0x46DD794E, "CRC32C of 0..31 (RFC 3720 B.4)")


def check_cases(c, ctl, now):
    data, offsets, ends = image(sample(now))
    last = len(offsets) - 1

    c.section("registry check")
    out = ctl.run("check")
    c.equal(out.returncode, 0, "no registry.log: exit 0")
    c.check("no registry yet" in out.stdout, "says there is no registry yet", out.stdout + out.stderr)

    ctl.write(data)
    out = ctl.run("check")
    c.equal(out.returncode, 0, "a clean file: exit 0")
    c.check("clean" in out.stdout, "the verdict is clean", out.stdout)
    c.equal(field(out, "frames"), len(offsets), "every frame is counted")
    c.equal(field(out, "last seq"), 10, "the last seq")
    c.equal(field(out, "bytes"), len(data), "the file size")

    ctl.write(MAGIC)
    out = ctl.run("check")
    c.equal((out.returncode, field(out, "frames")), (0, 0), "the magic alone is a clean, empty registry")

    cut = ends[last] - 5
    ctl.write(data[:cut])
    out = ctl.run("check")
    c.equal(out.returncode, 1, "a torn tail: exit 1")
    c.check(f"torn tail at offset {offsets[last]}" in out.stdout, "names the offset of the torn frame", out.stdout)
    c.check("--repair" in out.stdout, "says --repair truncates it now", out.stdout)
    c.equal(field(out, "frames"), last, "the frames before the tear")

    for k in (1, 3):
        bad = bytearray(data)
        bad[offsets[k] + 12] ^= 0x04
        ctl.write(bytes(bad))
        out = ctl.run("check")
        c.equal(out.returncode, 1, f"a flipped bit in frame {k}: exit 1")
        c.check(f"corrupt at offset {offsets[k]}" in out.stdout, f"names frame {k}'s offset {offsets[k]}",
                out.stdout)
        c.check("registry check --repair" in out.stdout, "prints the repair command", out.stdout)

    bad = bytearray(data)
    bad[offsets[4] + 8:offsets[4] + 16] = struct.pack("<Q", 3)   # seq 3 again, checksum redone
    body = bytes(bad[offsets[4] + 8:ends[4]])
    bad[offsets[4] + 4:offsets[4] + 8] = struct.pack("<I", mask(crc32c(body)))
    ctl.write(bytes(bad))
    out = ctl.run("check")
    c.check(out.returncode == 1 and f"corrupt at offset {offsets[4]}" in out.stdout,
            "a repeated seq in the middle is corruption at that frame", out.stdout)

    ctl.write(b"HSMJWTR2" + data[8:])
    out = ctl.run("check")
    c.check(out.returncode == 1 and "corrupt at offset 0" in out.stdout, "a bad magic is corrupt at offset 0",
            out.stdout)

    out = ctl.run("check", "--bogus")
    c.equal(out.returncode, 2, "an unknown option is a usage error")


def repair_cases(c, ctl, now):
    frames = sample(now)
    data, offsets, ends = image(frames)

    c.section("registry check --repair")
    bad = bytearray(data)
    bad[offsets[2] + 20] ^= 0x80
    ctl.write(bytes(bad))
    out = ctl.run("check", "--repair")
    c.check(out.returncode == 0, "repairing a corrupt middle: exit 0", out.stdout + out.stderr)
    c.check(f"kept {len(frames) - 1} frames" in out.stdout, "reports the frames kept", out.stdout)
    c.check(f"dropped {ends[2] - offsets[2]} bytes" in out.stdout, "reports the bytes dropped", out.stdout)
    want, _, _ = image(frames[:2] + frames[3:])
    c.check(ctl.read() == want, "the file is every good frame, byte for byte")
    c.check(not os.path.exists(ctl.path + ".new"), "no registry.log.new is left behind")
    out = ctl.run("check")
    c.check(out.returncode == 0 and "clean" in out.stdout, "the repaired file passes check", out.stdout)

    ctl.write(data[:ends[4] + 3])
    out = ctl.run("check", "--repair")
    c.equal(out.returncode, 0, "repairing a torn tail: exit 0")
    c.check(ctl.read() == data[:ends[4]], "the tail is cut at the last good frame")
    c.check("dropped 3 bytes" in out.stdout, "3 bytes dropped", out.stdout)

    ctl.write(b"HSMJ")
    out = ctl.run("check")
    c.check(out.returncode == 1 and "torn tail at offset 0" in out.stdout,
            "a file cut inside its magic is a torn tail at 0", out.stdout)
    out = ctl.run("check", "--repair")
    c.check(out.returncode == 0 and ctl.read() == MAGIC, "its repair is an empty registry", out.stdout)

    ctl.write(data)
    out = ctl.run("check", "--repair")
    c.check(out.returncode == 0 and ctl.read() == data, "--repair leaves a clean file alone", out.stdout)


def lock_cases(c, ctl, now):
    data, offsets, _ = image(sample(now))

    c.section("the state_dir lock")
    bad = bytearray(data)
    bad[offsets[1] + 9] ^= 0x01
    ctl.write(bytes(bad))
    with open(os.path.join(ctl.state_dir, "hsmjwtd.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for args in (("check",), ("check", "--repair"), ("compact",)):
            out = ctl.run(*args)
            c.equal(out.returncode, 1, f"registry {' '.join(args)} refuses while the lock is held")
            c.check("a daemon runs on this state_dir" in out.stderr and "stop it first" in out.stderr,
                    "and says a daemon runs on the state_dir", out.stderr)
        c.check(ctl.read() == bytes(bad), "the file is untouched")
    out = ctl.run("check")
    c.check(out.returncode == 1 and f"corrupt at offset {offsets[1]}" in out.stdout,
            "once the lock is free, check runs", out.stdout + out.stderr)


def compact_cases(c, ctl, now):
    c.section("registry compact")
    os.unlink(ctl.path)
    out = ctl.run("compact")
    c.check(out.returncode == 0 and "no registry yet" in out.stdout, "no registry.log: nothing to compact",
            out.stdout + out.stderr)
    c.check(not os.path.exists(ctl.path), "and none is created")

    frames = [
        token(1, "live", now + 3600, idx=3),
        token(2, "expired-long-ago", now - 30 * 86400, idx=4),
        status_change(3, "live", SUSPENDED, now, "on hold"),
        status_change(4, "live", ACTIVE, now),
        status_change(5, "live", SUSPENDED, now, "again"),
    ]
    data, _, _ = image(frames)
    ctl.write(data)
    out = ctl.run("compact")
    c.check(out.returncode == 0, "compact: exit 0", out.stdout + out.stderr)
    m = re.search(r"^records:\s+(\d+) before, (\d+) after", out.stdout, re.M)
    c.check(m and m.group(1) == "2" and m.group(2) == "1", "2 records before, 1 after (the expired one is dropped)",
            out.stdout)
    m = re.search(r"^file bytes:\s+(\d+) before, (\d+) after", out.stdout, re.M)
    c.check(m and int(m.group(1)) == len(data) and int(m.group(2)) == os.path.getsize(ctl.path),
            "file bytes before and after", out.stdout)
    try:
        after = read_frames(ctl.read())
    except AssertionError as e:
        c.check(False, "the compacted file reads back with this test's decoder", str(e))
        return
    tokens = [body for kind, _, body in after if kind == KIND_TOKEN]
    metas = [body for kind, _, body in after if kind == KIND_META]
    c.equal([token_jti(body) for body in tokens], [b"live"], "one TOKEN frame is left, for `live'")
    if tokens:
        c.equal(token_status(tokens[0]), SUSPENDED, "its last status is folded into it")
    c.check(all(b"expired-long-ago" not in body for _, _, body in after), "nothing is left of the expired token")
    c.equal(len(metas), 1, "one META frame")
    if metas:
        c.check(struct.unpack_from("<I", metas[0], 9)[0] >= 5,
                "META keeps the status-list high water mark (indices 3 and 4 were handed out)")
    out = ctl.run("check")
    c.check(out.returncode == 0 and "clean" in out.stdout, "the compacted file passes check", out.stdout)

    bad, offsets, _ = image(frames)
    bad = bytearray(bad)
    bad[offsets[1] + 10] ^= 0x20
    ctl.write(bytes(bad))
    out = ctl.run("compact")
    c.equal(out.returncode, 1, "compact refuses a corrupt file")
    c.check(str(offsets[1]) in out.stderr and "--repair" in out.stderr, "naming the offset and the repair command",
            out.stderr)
    c.check(ctl.read() == bytes(bad), "and leaves it as it was")


def main(build_dir, source_dir):
    c = Checker("registry_ctl")
    work = Workdir("hsmjwt-registry-ctl-")
    state_dir = os.path.join(work.path, "state")
    os.mkdir(state_dir, 0o700)
    ctl = Ctl(build_dir, state_dir)
    now = int(time.time())
    self_checks(c)
    check_cases(c, ctl, now)
    repair_cases(c, ctl, now)
    lock_cases(c, ctl, now)
    compact_cases(c, ctl, now)
    ok = c.summary()
    work.finish(ok)
    return ok


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    run_main("registry_ctl", lambda: main(sys.argv[1], sys.argv[2]))
