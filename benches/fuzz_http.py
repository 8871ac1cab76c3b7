#!/usr/bin/env python3
"""Sends generated and mutated bodies to a running genrec server.

    python3 benches/fuzz_http.py URL [--requests N] [--threads T] [--seed S]

Bodies: random bytes, random JSON, bodies with the request's field names and
values of any type, byte mutations and truncations of valid requests, huge
and deeply nested documents, wrong content types; sent to POST /v1/recommend
and, a share of them, to the admin routes (without a token). Counts the
answers by status; fails (exit 1) on any 5xx other than 503/504, on a
dropped connection, or when the server does not answer a valid request
afterwards. Prints one JSON line of counts.
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

VALID = [
    b'{"history": ["3", "11", "19"], "k": 10}',
    b'{"history": [3, 11], "k": 5, "strategy": "ann"}',
    b'{"history": ["7"], "k": 100, "strategy": "generative", "timeout_ms": 800}',
    b'{"profile": {"age": 30, "interests": ["tea"]}, "k": 4}',
]
FIELDS = ["history", "k", "strategy", "timeout_ms", "exclude_history", "profile", "user_id", "extra"]


def any_json(rng, depth=0):
    r = rng.random()
    if depth > 3 or r < 0.5:
        return rng.choice([None, True, False, rng.randint(-2**63, 2**63 - 1), rng.random() * 1e308,
                           "", "x" * rng.randint(0, 300), str(rng.randint(0, 700)), "\u0000\ud7ff\uffff", -0.0])
    if r < 0.75:
        return [any_json(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    return {rng.choice(FIELDS + ["a", "b"]): any_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def body(rng):
    kind = rng.random()
    if kind < 0.15:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400)))
    if kind < 0.35:
        return json.dumps(any_json(rng)).encode()
    if kind < 0.6:
        return json.dumps({f: any_json(rng) for f in rng.sample(FIELDS, rng.randint(0, len(FIELDS)))}).encode()
    if kind < 0.9:
        b = bytearray(rng.choice(VALID))
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(b))
            op = rng.random()
            if op < 0.5:
                b[i] = rng.getrandbits(8)
            elif op < 0.75:
                del b[i]
            else:
                b.insert(i, rng.getrandbits(8))
        return bytes(b[: len(b) - rng.randint(0, 4)])
    if kind < 0.95:
        n = rng.randint(1, 5000)
        return (b"[" * n) + (b"]" * rng.choice([n, 0]))
    return json.dumps({"history": [str(i) for i in range(rng.randint(1000, 60000))], "k": 10}).encode()


def worker(url, n, seed, counts, bad, lock):
    rng = random.Random(seed)
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    for _ in range(n):
        b = body(rng)
        path = "/v1/recommend" if rng.random() < 0.9 else rng.choice(["/admin/items", "/admin/models", "/v1/recommend?x=1"])
        ctype = rng.choice(["application/json"] * 8 + ["text/plain", "application/x-ndjson"])
        st = None
        for attempt in (0, 1):
            try:
                conn.request("POST", path, body=b, headers={"content-type": ctype})
                r = conn.getresponse()
                r.read()
                st = r.status
                if r.getheader("connection", "").lower() == "close" or st == 413:
                    # the server closes after refusing a body it did not read
                    conn.close()
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                break
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                # a kept-alive connection the server had closed: once more on a new one
                st = f"dropped: {type(e).__name__}"
        with lock:
            if isinstance(st, int):
                counts[str(st)] = counts.get(str(st), 0) + 1
            # a server may answer before reading a body (a large one, or one the
            # admin token check refuses) and close the
            # connection: the client then fails while still sending it
            early_close = not isinstance(st, int) and (len(b) > 65536 or path.startswith("/admin"))
            if early_close:
                counts["closed while sending a large body"] = counts.get("closed while sending a large body", 0) + 1
            elif not isinstance(st, int) or (st >= 500 and st not in (503, 504)):
                if len(bad) < 20:
                    bad.append((st, path, b[:200].decode("utf-8", "replace")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    counts, bad, lock = {}, [], threading.Lock()
    t0 = time.time()
    per = a.requests // a.threads
    ts = [threading.Thread(target=worker, args=(a.url, per, a.seed * 1000 + i, counts, bad, lock)) for i in range(a.threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    u = urllib.parse.urlparse(a.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/v1/recommend", body=VALID[0], headers={"content-type": "application/json"})
    r = conn.getresponse()
    after = r.status
    items = len(json.loads(r.read()).get("items", []))
    report = {"requests": per * a.threads, "seconds": round(time.time() - t0, 1), "by_status": dict(sorted(counts.items())),
              "valid_request_after": after, "items_after": items, "failures": bad}
    print(json.dumps(report))
    sys.exit(0 if not bad and after == 200 and items == 10 else 1)


if __name__ == "__main__":
    main()
