#!/usr/bin/env python3
"""Latency and memory of cold-start intent inference, through HTTP.

Starts `genrec serve` on the MovieLens-100K model, once per configuration, and
sends profile-only requests one at a time, each profile new to the server (so
never cached): the latency a new user waits for. Every answer must carry
`intent_method == "llm"` and no `intent_note` (the LLM answered, not the
encoder standing in), else the run fails. Memory: the server's peak RSS
(VmHWM) with the LLM minus the same server with `--intent-model none`.

    benches/intent_latency.py [--model work/ml/model-first] [--users 60]

Configurations, in one run (the machine drifts, so ratios are within a run):
  none          --intent-model none (encoder intents; the memory baseline)
  all-labels    --intent-model smollm2: the LLM scores all 32 labels (--intent-shortlist 0)
  default       --intent-model smollm2: the LLM scores the encoder's shortlist (the default, 8)
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from httpserver import ROOT, post, rss_kb, serving  # noqa: E402


def profiles(path, n, skip):
    users = json.load(open(path))
    out = []
    for uid in sorted(users, key=int)[skip : skip + n]:
        u = users[uid]
        g = {"M": "male", "F": "female"}.get(u.get("gender"), u.get("gender"))
        out.append({"age": u["age"], "gender": g, "occupation": u["occupation"]})
    return out


def run(binary, model, extra, profs, expect_llm):
    with serving(binary, ["--model", model, "--prompt", "prompts/movies.prompt"] + extra) as (proc, base, command):
        idle = rss_kb(proc.pid, "VmRSS")
        times = []
        for p in profs:
            t0 = time.perf_counter()
            v = post(base + "/v1/recommend", {"profile": p, "k": 10, "timeout_ms": 30000})
            times.append((time.perf_counter() - t0) * 1e3)
            if len(v.get("items", [])) != 10:
                raise SystemExit(f"short answer: {v}")
            if expect_llm and (v.get("intent_method") != "llm" or v.get("intent_note")):
                raise SystemExit(f"the LLM did not answer: {v}")
        peak = rss_kb(proc.pid, "VmHWM")
        return {"command": command, "p50_ms": statistics.median(times), "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
                "idle_rss_mb": idle / 1024, "peak_rss_mb": peak / 1024, "requests": len(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="work/ml/model-first")
    ap.add_argument("--users", type=int, default=60, help="distinct profiles per configuration")
    ap.add_argument("--data", default="../shared/data/ml-100k/ML100K.user.json")
    ap.add_argument("--binary", default="target/release/genrec")
    ap.add_argument("--also-shortlist", type=int, nargs="*", default=[], help="also run these --intent-shortlist values")
    a = ap.parse_args()
    llm = ["--intent-model", "smollm2"]
    configs = [("none", ["--intent-model", "none"], False), ("all-labels", llm + ["--intent-shortlist", "0"], True), ("default", llm, True)]
    configs += [(f"shortlist-{n}", llm + ["--intent-shortlist", str(n)], True) for n in a.also_shortlist]
    results = {}
    for i, (name, extra, llm) in enumerate(configs):
        # each configuration gets profiles of its own users, never seen before
        profs = profiles(os.path.join(ROOT, a.data) if not os.path.isabs(a.data) else a.data, a.users, i * a.users)
        results[name] = run(a.binary, a.model, extra, profs, llm)
        r = results[name]
        print(f"{name:<11} p50 {r['p50_ms']:8.1f} ms  p90 {r['p90_ms']:8.1f} ms  peak RSS {r['peak_rss_mb']:7.1f} MB  ({r['command']})", file=sys.stderr)
    base = results["none"]["peak_rss_mb"]
    for name in [c[0] for c in configs if c[2]]:
        results[name]["llm_rss_mb"] = results[name]["peak_rss_mb"] - base
    results["default"]["speedup_vs_all_labels"] = results["all-labels"]["p50_ms"] / results["default"]["p50_ms"]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
