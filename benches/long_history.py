#!/usr/bin/env python3
"""Request latency against history length, through HTTP
(`benches/results/long_history.md`).

Starts `genrec serve --model LONG` (a model with `max_history_items` 1000,
e.g. `genrec train --max-history 1000`) and sends requests one at a time with
histories of 20, 200 and 1,000 items (drawn, seeded, from the interactions'
items; k 10, the server's default beam). In the same run, the baseline model
(`--baseline`, 20 items) answers 20-item histories, so that ratios are within
one run (this machine drifts 10-30% within minutes). Reports p50/p99 per
length and the server's peak RSS; one JSON object on the last line.

    benches/long_history.py --model work/long/model --baseline work/beauty/serve-2ep \\
        --data ../shared/data/amazon-beauty/Beauty.inter.json [--requests 100]
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from httpserver import ROOT, post, rss_kb, serving  # noqa: E402


def serve(binary, model, lengths, items, requests, seed):
    with serving(binary, ["--model", model, "--intent-model", "none"]) as (proc, base, command):
        out = {"command": command}
        rng = random.Random(seed)
        for n in lengths:
            times = []
            for i in range(requests + 5):
                body = {"history": rng.sample(items, n), "k": 10, "timeout_ms": 60000}
                t0 = time.perf_counter()
                v = post(base + "/v1/recommend", body)
                ms = (time.perf_counter() - t0) * 1e3
                if len(v.get("items", [])) != 10 or v.get("fallback"):
                    raise SystemExit(f"history {n}: not a full generated answer: {v}")
                if i >= 5:  # warm-up
                    times.append(ms)
            times.sort()
            out[str(n)] = {"p50_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))], "requests": len(times)}
            print(json.dumps({model: {n: out[str(n)]}}), file=sys.stderr)
        out["peak_rss_mb"] = rss_kb(proc.pid, "VmHWM") / 1024
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model reading up to 1,000 history items")
    ap.add_argument("--baseline", required=True, help="model reading 20 (the default), same catalog")
    ap.add_argument("--data", required=True, help="NAME.inter.json (item ids to draw histories from)")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/genrec"))
    a = ap.parse_args()
    inter = json.load(open(a.data))
    items = sorted({str(i) for seq in inter.values() for i in seq}, key=int)
    result = {
        "baseline": serve(a.bin, a.baseline, [20], items, a.requests, a.seed),
        "long": serve(a.bin, a.model, [20, 200, 1000], items, a.requests, a.seed),
    }
    base = result["baseline"]["20"]["p50_ms"]
    result["p50_over_baseline"] = {n: result["long"][n]["p50_ms"] / base for n in ["20", "200", "1000"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
