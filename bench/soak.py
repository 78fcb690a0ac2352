#!/usr/bin/python3
"""The soak of issue 8: hsmjwtd under a mixed load for a long time (10
minutes by default), in segments; after each, the errors, the daemon's RSS,
its registry's size and the segment's p50/p99 latency.  Not a CI test (it
takes its time); `bench/soak.sh' builds Release and runs it, and ctest's
bench.soak_smoke runs it for a few seconds so that it cannot rot.

The load is one schedule that every wrk connection walks (bench/count.lua's
BENCH_REQUESTS_FILE), mixing what a login service sees:

    35%  POST /token            ES256 and RS256, a new subject each time
    25%  POST /token/verify     a pool of earlier tokens (some revoked)
    10%  POST /token/introspect the same pool
    10%  GET  /.well-known/jwks.json
     5%  POST /token/revoke     a pool token by jti (again and again: 200)
     5%  GET  /tokens/{jti}     a pool record
     5%  GET  /health
     5%  GET  /token-status-list or the status list of the pool's tokens

Half way, POST /admin/rotate-keys makes a next key of each algorithm (RSA
generation under load).  Every response must be a 200 and no socket may
fail: anything else is printed and the exit status is 1.

Usage: soak.py --build-dir DIR [--minutes 10] [--segment 30] [--connections 32]
"""

import argparse
import base64
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import bench  # noqa: E402 — bench.py: the daemon wrapper, /proc readers, wrk's script
from bench import BenchError, Hsmjwtd, harness  # noqa: E402

SOAK_ALGS = ["ES256", "RS256"]
POOL = 2000
SCHEDULE = 20000
SEED = 8


def b64json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def schedule_lines(pool, rng):
    """The mixed schedule: METHOD, PATH, BODY (may be empty) a line."""
    weights = [("issue", 35), ("verify", 25), ("introspect", 10), ("jwks", 10), ("revoke", 5), ("record", 5),
               ("health", 5), ("status", 5)]
    kinds = [k for k, w in weights for _ in range(w)]
    lines = []
    for n in range(SCHEDULE):
        kind = rng.choice(kinds)
        token, claims = rng.choice(pool)
        if kind == "issue":
            body = {"subject": f"soak-{n}", "alg": rng.choice(SOAK_ALGS), "expires_in": 3600}
            lines.append(("POST", "/token", json.dumps(body)))
        elif kind == "verify":
            lines.append(("POST", "/token/verify", json.dumps({"token": token})))
        elif kind == "introspect":
            lines.append(("POST", "/token/introspect", json.dumps({"token": token})))
        elif kind == "jwks":
            lines.append(("GET", "/.well-known/jwks.json", ""))
        elif kind == "revoke":
            lines.append(("POST", "/token/revoke", json.dumps({"jti": claims["jti"]})))
        elif kind == "record":
            lines.append(("GET", f"/tokens/{claims['jti']}", ""))
        elif kind == "health":
            lines.append(("GET", "/health", ""))
        else:
            uri = claims["status"]["status_list"]["uri"]
            lines.append(("GET", "/" + uri.split("/", 3)[3], ""))
    return lines


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def run_segment(args, daemon, requests_file, bearer_file, seconds):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env["BENCH_REQUESTS_FILE"] = requests_file
    env["BENCH_BEARER_FILE"] = bearer_file
    cmd = ["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{seconds}s", "--timeout", bench.WRK_TIMEOUT,
           "--latency", "-s", bench.COUNT_LUA, f"http://127.0.0.1:{daemon.port}/"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    m = re.search(r"^bench-wrk: (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise BenchError(f"wrk failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    fields = {}
    for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', m.group(1)):
        fields[k] = v.strip('"') if v.startswith('"') else float(v)
    return fields


def parse_args():
    ap = argparse.ArgumentParser(description="hsmjwtd under a mixed load for minutes (issue 8); bench/README.md")
    ap.add_argument("--build-dir", required=True, help="the build holding hsmjwtd and hsmjwtctl")
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    ap.add_argument("--segment", type=int, default=30, help="seconds per wrk run and per line (default 30)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="hsmjwtd workers")
    ap.add_argument("--skip-missing", action="store_true", help="exit 77 when wrk is missing (ctest's smoke)")
    return ap.parse_args()


def main():
    args = parse_args()
    if bench.shutil.which("wrk") is None:
        print("soak: wrk is not installed (tools/setup-debian.sh test installs it)")
        sys.exit(bench.SKIP if args.skip_missing and os.environ.get("TEST_REQUIRE_ALL") != "1" else 1)
    bench.raise_file_limit()
    work = tempfile.mkdtemp(prefix="hsmjwt-soak-", dir=bench.work_base(args.build_dir))
    rng = random.Random(SEED)
    failures = []
    daemon = None
    try:
        token = harness.Token(bench.SOURCE_DIR, os.path.join(work, "token"), "soak")
        daemon = Hsmjwtd(args.build_dir, token, work, args.workers, state_dir=os.path.join(work, "state"))
        daemon.daemon.algorithms = SOAK_ALGS
        daemon.start()
        bearer_file = os.path.join(work, "bearer")
        with open(bearer_file, "w") as f:
            f.write(daemon.admin)
        bench.log(f"issuing a pool of {POOL} tokens")
        pool = []
        for alg in SOAK_ALGS:
            for t in daemon.issue_many(alg, POOL // len(SOAK_ALGS)):
                pool.append((t, b64json(t.split(".")[1])))
        requests_file = os.path.join(work, "requests.tsv")
        with open(requests_file, "w") as f:
            for method, path, body in schedule_lines(pool, rng):
                f.write(f"{method}\t{path}\t{body}\n")

        total = max(1, int(args.minutes * 60 // args.segment))
        rows = []
        rotated = None
        started = time.monotonic()
        rss0 = bench.proc_status_kb(daemon.pid, "VmRSS")
        print(f"soak: {total} segments of {args.segment} s, {args.connections} connections, "
              f"{args.workers} workers, RSS at start {bench.mb(rss0)}")
        print(f"{'t (s)':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'RSS MB':>7} "
              f"{'records':>9} {'registry MB':>11}")
        for seg in range(total):
            if seg == total // 2 and rotated is None:
                status, doc = daemon.request("POST", "/admin/rotate-keys", {}, daemon.admin)
                rotated = status
                if status != 200:
                    failures.append(f"POST /admin/rotate-keys at segment {seg}: {status} {doc}")
            fields = run_segment(args, daemon, requests_file, bearer_file, args.segment)
            if not daemon.alive():
                failures.append(f"hsmjwtd died in segment {seg} ({daemon.exit_text()})")
                break
            errors = int(fields["non200"] + fields["connect_errors"] + fields["read_errors"] +
                         fields["write_errors"] + fields["timeouts"])
            if errors:
                failures.append(f"segment {seg}: {fields['non200']:.0f} non-200 (first: {fields['first_non200']}), "
                                f"socket errors connect {fields['connect_errors']:.0f} read "
                                f"{fields['read_errors']:.0f} write {fields['write_errors']:.0f} timeouts "
                                f"{fields['timeouts']:.0f}")
            rss = bench.proc_status_kb(daemon.pid, "VmRSS")
            status, _ = daemon.request("GET", "/health")
            text = daemon.daemon.request("GET", "/metrics", record=False).body.decode()
            records = metric(text, "hsmjwt_registry_records")
            reg = os.path.getsize(os.path.join(work, "state", "registry.log")) / 1e6
            rps = fields["requests"] / (fields["duration_us"] / 1e6)
            rows.append((time.monotonic() - started, rps, fields["p50_us"], fields["p99_us"], errors, rss, records))
            print(f"{rows[-1][0]:6.0f} {rps:8.0f} {fields['p50_us'] / 1000:7.2f} {fields['p99_us'] / 1000:7.2f} "
                  f"{errors:6d} {rss / 1024:7.1f} {records or 0:9.0f} {reg:11.1f}", flush=True)
        if rows:
            rss_max = max(r[5] for r in rows)
            p99_max = max(r[3] for r in rows)
            print(f"soak: {len(rows)} segments, {sum(r[1] * args.segment for r in rows):,.0f} requests, "
                  f"{sum(r[4] for r in rows)} errors; RSS {bench.mb(rss0)} at start, {bench.mb(rows[-1][5])} at "
                  f"the end, {bench.mb(rss_max)} at most; p99 at most {p99_max / 1000:.2f} ms; "
                  f"rotation half way: {rotated}")
            if len(rows) >= 4:
                # RSS per registry record over the second half: the index is
                # the one thing that should grow; a leak shows as more.
                a, b = rows[len(rows) // 2], rows[-1]
                if b[6] and a[6] and b[6] > a[6]:
                    print(f"soak: second half: RSS {(b[5] - a[5]) / 1024:+.1f} MB for {b[6] - a[6]:,.0f} more "
                          f"records ({(b[5] - a[5]) * 1024 / (b[6] - a[6]):.0f} bytes a record)")
        code = daemon.stop()
        if code != 0:
            failures.append(f"hsmjwtd exited {code} on SIGTERM")
    except BenchError as e:
        failures.append(str(e))
    finally:
        if daemon is not None and daemon.alive():
            daemon.daemon.kill()
    for f in failures:
        print(f"soak: FAILED: {f}")
    if not failures:
        bench.shutil.rmtree(work, ignore_errors=True)
        print("soak: no errors")
    else:
        print(f"soak: kept {work}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
