#!/usr/bin/env python3
"""The diversity cap through HTTP (`benches/results/search.md`): for test users
of the leave-one-out protocol (last item the target, the last 20 before it the
history), `{"history": H, "k": 10, "diversity": {"max_per_intent": C}}` for each
cap C ("none" sends no cap). Reports NDCG@10 and Recall@10 of the target and
the mean number of distinct first-level semantic-ID codes in the top 10, one
server, one JSON object on the last line.

    benches/diversity_eval.py --model work/beauty/serve-2ep \\
        --data ../shared/data/amazon-beauty/Beauty.inter.json [--users 1000] [--caps none,5,3,2]
"""
import argparse
import json
import math
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from httpserver import ROOT, post, serving  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--caps", default="none,5,3,2")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/genrec"))
    a = ap.parse_args()
    inter = json.load(open(a.data))
    users = sorted(inter, key=int)
    users = random.Random(a.seed).sample(users, min(a.users, len(users)))
    out = {"users": len(users), "caps": {}}
    with serving(a.bin, ["--model", a.model, "--intent-model", "none"]) as (_, base, command):
        out["command"] = command
        for cap in a.caps.split(","):
            rec = ndcg = 0.0
            distinct, times, short = [], [], 0
            for u in users:
                seq = [str(i) for i in inter[u]]
                body = {"history": seq[:-1][-20:], "k": 10, "timeout_ms": 30000}
                if cap != "none":
                    body["diversity"] = {"max_per_intent": int(cap)}
                t0 = time.perf_counter()
                v = post(base + "/v1/recommend", body)
                times.append((time.perf_counter() - t0) * 1e3)
                items = v["items"]
                short += len(items) < 10
                ids = [it["item_id"] for it in items]
                if seq[-1] in ids:
                    rec += 1
                    ndcg += 1 / math.log2(ids.index(seq[-1]) + 2)
                distinct.append(len({it["semantic_id"][0] for it in items}))
            n = len(users)
            out["caps"][cap] = {"ndcg@10": ndcg / n, "recall@10": rec / n, "distinct_first_codes": statistics.mean(distinct),
                                "short_answers": short, "p50_ms": statistics.median(times)}
            print(json.dumps({cap: out["caps"][cap]}), file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
