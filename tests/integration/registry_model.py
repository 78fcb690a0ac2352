"""What clients were told about the registry, and a check of a daemon against
it (test_disk_faults.py, test_crash.py).

Every token the tests make is known by its jti with the set of statuses its
record may have: an acknowledged change (200) narrows it to that change's
status, a change whose answer never came or was a 503 widens it (the change
may or may not have happened).  After a restart every record must exist
with a status in its set, and GET /tokens/{jti}, the status list entry and
/token/verify must agree with each other: a change half applied (the record
says one thing, the status list or the verifier another) is a failure even
when the status itself is allowed.

Only the standard library and the harness.
"""

import concurrent.futures
import http.client
import threading
import zlib

from hsmjwt_harness import b64url_decode, jwt_parts

# GET /tokens/{jti} status -> the status list's 2-bit entry (SPEC §4.2)
LIST_VALUE = {"active": 0, "revoked": 1, "deleted": 1, "suspended": 2}
CHECK_THREADS = 4


class Model:
    """jti -> allowed statuses, the token string, its parent; thread-safe.
    Each jti is changed by one client thread at a time, so the order of its
    changes is the order of the calls."""

    def __init__(self):
        self.lock = threading.Lock()
        self.allowed = {}     # jti -> set of statuses
        self.tokens = {}      # jti -> compact JWT
        self.children = {}    # jti -> [jti of records whose parent or family it is]
        self.acked = {"issue": 0, "revoke": 0, "suspend": 0, "resume": 0, "refresh": 0, "pair": 0}
        self.unknown = 0      # changes answered 503 or cut: either outcome allowed

    def issued(self, token, parent=None, kind="issue"):
        """A token handed out (its issue acknowledged) → its jti."""
        jti = jwt_parts(token)[1]["jti"]
        with self.lock:
            self.allowed[jti] = {"active"}
            self.tokens[jti] = token
            if parent is not None:
                self.children.setdefault(parent, []).append(jti)
            self.acked[kind] += 1
        return jti

    def _reach(self, jti):
        """jti and, transitively, the records a revocation of it reaches."""
        out, todo = [], [jti]
        while todo:
            j = todo.pop()
            if j in out:
                continue
            out.append(j)
            todo += self.children.get(j, [])
        return out

    def changed(self, jti, status, acked, kind):
        """A status change of jti to status, acknowledged (acked) or not
        (503, cut by a kill).  A revocation reaches jti's dependents."""
        with self.lock:
            reach = self._reach(jti) if status == "revoked" else [jti]
            for j in reach:
                if j not in self.allowed:
                    continue
                # revoked is final: a dependent already revoked stays so.
                if acked and not (j != jti and self.allowed[j] == {"revoked"}):
                    self.allowed[j] = {status}
                else:
                    self.allowed[j] = self.allowed[j] | {status}
            if acked:
                self.acked[kind] += 1
            else:
                self.unknown += 1

    def snapshot(self):
        with self.lock:
            return {j: (set(a), self.tokens[j]) for j, a in self.allowed.items()}


def status_lists(daemon, indices):
    """{list number: decompressed entries} for the lists indices fall in,
    read from GET /statuslists/{n} (the JWT's payload; its signature is
    what test_registry.py checks)."""
    out = {}
    for n in sorted({i // 65536 for i in indices}):
        r = daemon.request("GET", f"/statuslists/{n}", record=False)
        if r.status != 200:
            out[n] = None
            continue
        claims = jwt_parts(r.body.decode("ascii", "replace").strip())[1]
        out[n] = zlib.decompress(b64url_decode(claims["status_list"]["lst"]))
    return out


def _entry(lists, idx):
    data = lists.get(idx // 65536)
    k = idx % 65536
    if data is None or k // 4 >= len(data):
        return None
    return (data[k // 4] >> (2 * (k % 4))) & 3


def _check_one(daemon, admin, lists, jti, allowed, token):
    """What is wrong with jti's record, or None."""
    headers = {"Authorization": f"Bearer {admin}"}
    try:
        r = daemon.request("GET", f"/tokens/{jti}", headers=headers, record=False)
    except (OSError, http.client.HTTPException) as e:
        return f"GET /tokens/{{jti}} failed: {e}"
    if r.status != 200:
        kind = jwt_parts(token)[1].get("token_type")
        return f"GET /tokens/{{jti}} answered {r.status} (an acknowledged {kind} token is missing)"
    status = (r.json() or {}).get("status")
    if status not in allowed:
        return f"status {status!r}, the clients were told {sorted(allowed)}"
    claims = jwt_parts(token)[1]
    idx = ((claims.get("status") or {}).get("status_list") or {}).get("idx")
    if isinstance(idx, int):
        got = _entry(lists, idx)
        if got != LIST_VALUE.get(status):
            return f"record says {status!r} but status list entry {idx} is {got!r}"
    # A child verifies only while its parent is active: its own record is
    # what is checked here, so verify only tokens without a parent.
    if claims.get("token_type") in ("child",) or claims.get("parent_jti"):
        return None
    try:
        r = daemon.request("POST", "/token/verify", {"token": token}, record=False)
    except (OSError, http.client.HTTPException) as e:
        return f"POST /token/verify failed: {e}"
    doc = r.json() or {}
    want = {"active": (True, None), "revoked": (False, "revoked"), "deleted": (False, "revoked"),
            "suspended": (False, "suspended")}[status]
    got = (doc.get("valid"), doc.get("error"))
    if r.status != 200 or got != want:
        return f"record says {status!r} but /token/verify says {r.status} {got}"
    return None


def check_model(c, daemon, admin, model, when):
    """Every token of model: present, status allowed, the three views agree.
    Returns the number of problems."""
    snap = model.snapshot()
    indices = []
    for _, token in snap.values():
        idx = ((jwt_parts(token)[1].get("status") or {}).get("status_list") or {}).get("idx")
        if isinstance(idx, int):
            indices.append(idx)
    lists = status_lists(daemon, indices)
    c.check(all(v is not None for v in lists.values()), f"{when}: every status list the tokens name answers 200",
            repr(sorted(n for n, v in lists.items() if v is None)))
    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
        results = list(pool.map(lambda kv: (kv[0], _check_one(daemon, admin, lists, kv[0], *kv[1])),
                                snap.items()))
    problems = [(j, p) for j, p in results if p is not None]
    narrowed = sum(1 for a, _ in snap.values() if len(a) == 1)
    print(f"  {when}: {len(snap)} tokens checked ({narrowed} with one allowed status), acknowledged "
          f"{model.acked}, {model.unknown} changes with unknown outcome; {len(problems)} problems")
    c.check(not problems, f"{when}: every acknowledged token exists with an allowed status, and its record, "
            "status list entry and /token/verify agree", repr(problems[:5]))
    return len(problems)
