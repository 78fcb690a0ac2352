#!/usr/bin/python3
"""lint.secret_compare: no secret is compared with memcmp/strcmp (issue 8).

A comparison that stops at the first differing byte tells a caller who can
time it how much of a guess was right.  Every comparison of a PIN, an HMAC,
a PKCE verifier or challenge, an authorization code, a digest or hash of
one, must be CRYPTO_memcmp.  This finds the calls to memcmp, bcmp, strcmp,
strncmp, strcasecmp and strncasecmp in src/ and tools/ whose arguments name
such a thing, and fails on any; a comparison that only looks like one (a
public constant, say) says why on its line with `ct-ok: <reason>'.

It is a name-based guard, not a proof: the review of every comparison site
(README, threat model) is the proof; this keeps a new one from slipping in
under an obvious name.  --self-test checks that it flags what it must.

Usage: secret_compare.py SOURCE_DIR | --self-test     (exit 0 clean, 1 found)
"""

import os
import re
import sys

CALLS = re.compile(r"\b(memcmp|bcmp|strcmp|strncmp|strcasecmp|strncasecmp)\s*\(")
SECRET = re.compile(r"(pin|secret|verifier|challenge|mac|hmac|digest|hash|password|passphrase|code|nonce|key_bytes)",
                    re.I)
# Words that contain a secret-looking part but name no secret.
BENIGN = re.compile(r"(opcode|encode|decode|machine|status_code|errcode|_members)", re.I)


def call_arguments(text, start):
    """The text between the call's parentheses (start: index of '(')."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return text[start + 1:]


def strip_comments_and_strings(text):
    """Comments and string literals blanked (lengths kept, so offsets and
    line numbers stay), so that neither a comment nor a message counts."""
    out = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text[i] in "\"'":
            q = text[i]
            j = i + 1
            while j < n and text[j] != q:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(q + " " * (j - i - 2) + q if j - i >= 2 else text[i:j])
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def findings(name, text):
    found = []
    lines = text.split("\n")
    code = strip_comments_and_strings(text)
    for m in CALLS.finditer(code):
        args = call_arguments(code, m.end() - 1)
        words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", args)
        secret = [w for w in words if SECRET.search(w) and not BENIGN.search(w)]
        if not secret:
            continue
        line_no = code.count("\n", 0, m.start()) + 1
        if "ct-ok:" in lines[line_no - 1]:
            continue
        found.append(f"{name}:{line_no}: {m.group(1)}() on {', '.join(sorted(set(secret)))}: "
                     f"use CRYPTO_memcmp (or say `ct-ok: why' on the line)")
    return found


def self_test():
    bad = {
        "pin": 'if (memcmp(pin, stored_pin, len) == 0)',
        "mac": 'ok = memcmp(mac, sig, mac_len) == 0;',
        "verifier": 'if (strcmp(code_verifier, expected) == 0)',
        "split call": 'if (strncmp(a->challenge,\n\t\t    b, 43) == 0)',
    }
    good = {
        "constant-time": 'ok = CRYPTO_memcmp(mac, sig, mac_len) == 0;',
        "public": 'if (strcmp(type, "refresh_token") == 0)',
        "in a string": 'log_error("memcmp(pin) is wrong");',
        "in a comment": '/* never memcmp(pin, x, n) */ x = 1;',
        "waived": 'if (memcmp(buf, MAGIC_HASH, 4) == 0) /* ct-ok: a public file magic */',
        "encode": 'if (strcmp(encode_name, "x") == 0)',
    }
    failures = []
    for what, text in bad.items():
        if not findings("bad.c", text):
            failures.append(f"not flagged: {what}")
    for what, text in good.items():
        if findings("good.c", text):
            failures.append(f"flagged: {what}")
    for f in failures:
        print(f"secret_compare self-test: {f}")
    print(f"secret_compare self-test: {len(bad) + len(good) - len(failures)} of {len(bad) + len(good)} right")
    return not failures


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--self-test":
        sys.exit(0 if self_test() else 1)
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    root = sys.argv[1]
    found, files = [], 0
    for sub in ("src", "tools"):
        for dirpath, _, names in os.walk(os.path.join(root, sub)):
            for n in sorted(names):
                if n.endswith((".c", ".h")):
                    path = os.path.join(dirpath, n)
                    with open(path, errors="replace") as f:
                        found += findings(os.path.relpath(path, root), f.read())
                    files += 1
    for line in found:
        print(line)
    print(f"secret_compare: {files} files, {len(found)} non-constant-time comparisons of secrets")
    sys.exit(1 if found or files == 0 else 0)


if __name__ == "__main__":
    main()
