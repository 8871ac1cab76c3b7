#!/usr/bin/env python3
"""Personalized search against text-only search and plain recommendation,
through HTTP (`benches/results/search.md`).

Starts `genrec serve --model MODEL` once per candidate count and, for test
users of the leave-one-out protocol (the last item is the target, the items
before it the history, the last 20 read), sends three requests per user:

  personalized  {"history": H, "query": Q, "k": 10}   the model ranks the query's matches
  text          {"query": Q, "k": 10}                 the query's text ranking alone
  recommend     {"history": H, "k": 10}               no query: the model's own next items

The pseudo-query Q of a user is built from the target item and never repeats
its whole title: two words (`--title-words 1`: one) drawn (seeded) from the title's words of three or
more letters that are not stop words or numbers (one when the title has fewer
than three such words), preceded by the leaf category when the items file has
categories (Scientific: the last entry of "categories"; Beauty has category
codes, not words, so its queries are title words only). Titles with no usable
word give no query and the user is skipped (counted).

The personalized ranking fuses text and model (`--search-model-weight`);
`--weights` and `--candidates` sweep them, one server per pair (choose on
`--split valid`, then score the choice once on test).

Scores: Recall@10 and NDCG@10 of the target, per request kind; latency p50
per kind. One JSON object on the last line.

    benches/search_eval.py --model work/beauty/serve-2ep \\
        --items ../shared/data/amazon-beauty/Beauty.item.json \\
        --data ../shared/data/amazon-beauty/Beauty.inter.json [--users 2000] [--candidates 1000]
"""
import argparse
import json
import math
import os
import random
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from httpserver import ROOT, post, serving  # noqa: E402

STOP = set("the and for with from this that your you are not all new set pack one two three of to in on by a an or".split())


def pseudo_query(item, rng, title_words=2):
    words = [w for w in re.findall(r"[a-z]+", item.get("title", "").lower()) if len(w) >= 3 and w not in STOP]
    words = list(dict.fromkeys(words))
    if not words:
        return None
    n = min(title_words, 2 if len(words) >= 3 else 1)
    picked = rng.sample(words, n)
    cats = item.get("categories")
    if isinstance(cats, str) and cats.strip():
        picked.insert(0, cats.split(",")[-1].strip().lower())
    return " ".join(picked)


def score(items, target):
    ids = [it["item_id"] for it in items[:10]]
    if target in ids:
        return 1.0, 1.0 / math.log2(ids.index(target) + 2)
    return 0.0, 0.0


def run(binary, model, candidates, weight, cases, kinds):
    args = ["--model", model, "--intent-model", "none", "--search-candidates", str(candidates), "--search-model-weight", str(weight)]
    with serving(binary, args) as (_, base, command):
        sums = {k: [0.0, 0.0] for k in kinds}
        times = {k: [] for k in kinds}
        notes = {k: 0 for k in kinds}
        for done, (history, query, target) in enumerate(cases):
            bodies = {
                "personalized": {"history": history, "query": query, "k": 10, "timeout_ms": 30000},
                "text": {"query": query, "k": 10, "timeout_ms": 30000},
                "recommend": {"history": history, "k": 10, "timeout_ms": 30000},
            }
            for k in kinds:
                body = bodies[k]
                t0 = time.perf_counter()
                v = post(base + "/v1/recommend", body)
                times[k].append((time.perf_counter() - t0) * 1e3)
                if "items" not in v:
                    raise SystemExit(f"{k}: {v}")
                if v.get("fallback"):
                    raise SystemExit(f"{k} fell back ({v['fallback']}): the figures would not be the model's")
                notes[k] += 1 if v.get("note") else 0
                r, n = score(v["items"], target)
                sums[k][0] += r
                sums[k][1] += n
            if done % 200 == 0:
                print(f"{done}/{len(cases)}", file=sys.stderr)
        n = max(len(cases), 1)
        out = {k: {"recall@10": sums[k][0] / n, "ndcg@10": sums[k][1] / n, "p50_ms": statistics.median(times[k]), "answers_with_note": notes[k]} for k in kinds}
        out["command"] = command
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="NAME.inter.json")
    ap.add_argument("--items", required=True, help="NAME.item.json")
    ap.add_argument("--users", type=int, default=2000, help="test users, drawn with --seed (0: all)")
    ap.add_argument("--candidates", default="50", help="comma-separated --search-candidates values, one server each")
    ap.add_argument("--weights", default="0.01", help="comma-separated --search-model-weight values (with each candidate count)")
    ap.add_argument("--split", choices=["test", "valid"], default="test",
                    help="test: the last item is the target; valid: the second last, the history before it")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--title-words", type=int, choices=[1, 2], default=2,
                    help="title words per pseudo-query (2: the protocol of search.md's tables; 1: queries that leave more doubt)")
    ap.add_argument("--kinds", default="personalized,text,recommend", help="comma-separated request kinds to send (sweeps may skip recommend)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/genrec"))
    a = ap.parse_args()
    inter = json.load(open(a.data))
    items = json.load(open(a.items))
    rng = random.Random(a.seed)
    users = sorted(inter, key=int)
    if a.users and a.users < len(users):
        users = rng.sample(users, a.users)
    cases, skipped = [], 0
    for u in users:
        seq = [str(i) for i in inter[u]]
        if a.split == "valid":
            seq = seq[:-1]
        q = pseudo_query(items[seq[-1]], rng, a.title_words)
        if q is None:
            skipped += 1
            continue
        cases.append((seq[:-1][-20:], q, seq[-1]))
    result = {"split": a.split, "title_words": a.title_words, "users": len(cases), "skipped_no_query_words": skipped, "examples": [c[1] for c in cases[:5]], "runs": {}}
    for c in a.candidates.split(","):
        for w in a.weights.split(","):
            r = run(a.bin, a.model, int(c), float(w), cases, a.kinds.split(","))
            if "personalized" in r and "text" in r:
                r["personalized_over_text_ndcg"] = r["personalized"]["ndcg@10"] / max(r["text"]["ndcg@10"], 1e-12)
            result["runs"][f"candidates={c},weight={w}"] = r
            print(json.dumps({c: r}), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
