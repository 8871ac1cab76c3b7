"""transformers' half of the speed comparison (benches/vs_transformers.sh).

Serves the same checkpoint the way the TIGER / LC-Rec reproductions do:
AutoModelForCausalLM + generate(num_beams=B, num_return_sequences=k,
prefix_allowed_tokens_fn=<trie of the catalog's semantic IDs>), k = B. Reads
requests.json and genrec.json written by benches/generate_vs_hf.rs, measures
batched throughput (left-padded batches of similar length) and single-request latency, compares
each request's top-k items with genrec's, and prints a markdown table; the
numbers also go to OUT/compare.json.

usage: hf_generate.py OUT_DIR [--batch N]
"""

import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def build_trie(item_tokens):
    """prefix (tuple of tokens) -> allowed next tokens; leaf tuple -> item index."""
    children, leaf = {}, {}
    for idx, toks in enumerate(item_tokens):
        for depth in range(len(toks)):
            children.setdefault(tuple(toks[:depth]), set()).add(toks[depth])
        leaf[tuple(toks)] = idx
    return {p: sorted(c) for p, c in children.items()}, leaf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=None, help="requests per generate call (default: as genrec)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(os.path.join(a.out, "requests.json")) as f:
        req = json.load(f)
    with open(os.path.join(a.out, "genrec.json")) as f:
        gen = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(req["model"], dtype=torch.float32)
    model.eval()
    children, leaf = build_trie(req["item_tokens"])
    item_ids = req["item_ids"]
    pad = req["pad_token_id"]
    levels = req["levels"]
    seqs = req["sequences"]
    batch = a.batch or req["batch"]

    def run(batch_seqs, beams):
        width = max(len(s) for s in batch_seqs)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in batch_seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch_seqs])

        def allowed(_batch_id, input_ids):
            return children.get(tuple(input_ids[width:].tolist()), [])

        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                num_beams=beams,
                num_return_sequences=beams,
                max_new_tokens=levels,
                min_new_tokens=levels,
                prefix_allowed_tokens_fn=allowed,
                do_sample=False,
                early_stopping=True,
                pad_token_id=pad,
                eos_token_id=None,
            )
        gen_tokens = out[:, width:].tolist()
        return [
            [item_ids[leaf[tuple(t)]] for t in gen_tokens[r * beams:(r + 1) * beams]]
            for r in range(len(batch_seqs))
        ]

    rows, report = [], {}
    for b in req["beams"]:
        g = gen[str(b)]
        run(seqs[:batch], b)  # warm-up
        # batches of similar length, as genrec's half forms them
        order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
        topk = [None] * len(seqs)
        pass_s = []
        for _ in range(max(1, req.get("passes", 1))):
            t0 = time.perf_counter()
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                for j, items in zip(idx, run([seqs[j] for j in idx], b)):
                    topk[j] = items
            pass_s.append(time.perf_counter() - t0)
        hf_rps = len(seqs) / statistics.median(pass_s)
        lat = []
        for s in seqs[: req["single"]]:
            t = time.perf_counter()
            run([s], b)
            lat.append((time.perf_counter() - t) * 1e3)
        hf_p50 = statistics.median(lat)
        same = sum(1 for x, y in zip(topk, g["topk"]) if x == y)
        same_set = sum(1 for x, y in zip(topk, g["topk"]) if set(x) == set(y))
        n = len(seqs)
        report[b] = {
            "requests": n,
            "transformers_requests_per_s": hf_rps,
            "genrec_requests_per_s": g["requests_per_s"],
            "throughput_ratio": g["requests_per_s"] / hf_rps,
            "transformers_single_p50_ms": hf_p50,
            "genrec_single_p50_ms": g["single_p50_ms"],
            "latency_ratio": hf_p50 / g["single_p50_ms"],
            "identical_topk_share": same / n,
            "same_items_share": same_set / n,
        }
        rows.append(report[b])
        print(f"B={b}: transformers {hf_rps:.1f} req/s, p50 {hf_p50:.1f} ms; identical top-k {same}/{n}", flush=True)
    with open(os.path.join(a.out, "compare.json"), "w") as f:
        json.dump(report, f, indent=1)
    print()
    print("| k = B | genrec req/s | transformers req/s | ratio | genrec p50 ms | transformers p50 ms | ratio | identical top-k |")
    print("|---|---|---|---|---|---|---|---|")
    for b, r in report.items():
        print(
            f"| {b} | {r['genrec_requests_per_s']:.1f} | {r['transformers_requests_per_s']:.1f} | "
            f"{r['throughput_ratio']:.1f}x | {r['genrec_single_p50_ms']:.2f} | {r['transformers_single_p50_ms']:.1f} | "
            f"{r['latency_ratio']:.1f}x | {100 * r['identical_topk_share']:.1f}% (same set {100 * r['same_items_share']:.1f}%) |"
        )


if __name__ == "__main__":
    main()
