"""transformers' half of the speed comparison (benches/vs_transformers.sh).

Serves the same checkpoint the way the TIGER / LC-Rec reproductions do:
AutoModelForCausalLM + generate(num_beams=B, num_return_sequences=k,
prefix_allowed_tokens_fn=<trie of the catalog's semantic IDs>), k = B. Reads
requests.json and genrec.json written by benches/generate_vs_hf.rs, measures
batched throughput (left-padded batches of similar length) and single-request latency, compares
each request's top-k items with genrec's, and prints a markdown table; the
numbers also go to OUT/compare.json.

Throughput is measured both ways a user could run it and the better one is
reported: one process with torch's threads over all cores, and one process per
core with one torch thread each (batches handed out as workers finish), the
set-up genrec's half uses for its own throughput.

usage: hf_generate.py OUT_DIR [--batch N] [--threads N] [--workers N]
"""

import argparse
import json
import multiprocessing
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


class Generator:
    """The checkpoint and the trie; run() generates for a batch of histories."""

    def __init__(self, req, threads):
        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(req["model"], dtype=torch.float32)
        self.model.eval()
        self.children, self.leaf = build_trie(req["item_tokens"])
        self.item_ids = req["item_ids"]
        self.pad = req["pad_token_id"]
        self.levels = req["levels"]

    def run(self, batch_seqs, beams):
        """Each history's top-B item ids, best first."""
        width = max(len(s) for s in batch_seqs)
        ids = torch.tensor([[self.pad] * (width - len(s)) + s for s in batch_seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch_seqs])

        def allowed(_batch_id, input_ids):
            return self.children.get(tuple(input_ids[width:].tolist()), [])

        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                num_beams=beams,
                num_return_sequences=beams,
                max_new_tokens=self.levels,
                min_new_tokens=self.levels,
                prefix_allowed_tokens_fn=allowed,
                do_sample=False,
                early_stopping=True,
                pad_token_id=self.pad,
                eos_token_id=None,
            )
        gen_tokens = out[:, width:].tolist()
        return [
            [self.item_ids[self.leaf[tuple(t)]] for t in gen_tokens[r * beams:(r + 1) * beams]]
            for r in range(len(batch_seqs))
        ]


# one Generator per worker process (one torch thread each)
_worker = None


def _init_worker(req):
    global _worker
    _worker = Generator(req, 1)


def _work(job):
    idx, batch_seqs, beams = job
    return idx, _worker.run(batch_seqs, beams)


def batches(seqs, batch):
    """Request indices in batches of similar length, as genrec's half forms them."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def throughput(run_all, n, passes):
    """Requests per second (median over passes) and the last pass's top-k lists."""
    pass_s, topk = [], None
    for _ in range(max(1, passes)):
        t0 = time.perf_counter()
        topk = run_all()
        pass_s.append(time.perf_counter() - t0)
    return n / statistics.median(pass_s), topk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=None, help="requests per generate call (default: as genrec)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the one-process run")
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="processes of the one-thread-each run (1: skip that run)")
    a = ap.parse_args()
    with open(os.path.join(a.out, "requests.json")) as f:
        req = json.load(f)
    with open(os.path.join(a.out, "genrec.json")) as f:
        gen = json.load(f)
    gen_main = Generator(req, a.threads)
    seqs = req["sequences"]
    batch = a.batch or req["batch"]
    chunks = batches(seqs, batch)
    pool = None
    if a.workers > 1:
        # spawn, not fork: torch's thread pool does not survive a fork
        pool = multiprocessing.get_context("spawn").Pool(a.workers, initializer=_init_worker, initargs=(req,))

    rows, report = [], {}
    for b in req["beams"]:
        g = gen[str(b)]
        gen_main.run(seqs[:batch], b)  # warm-up

        def one_process():
            topk = [None] * len(seqs)
            for idx in chunks:
                for j, items in zip(idx, gen_main.run([seqs[j] for j in idx], b)):
                    topk[j] = items
            return topk

        def per_core():
            topk = [None] * len(seqs)
            jobs = [(idx, [seqs[j] for j in idx], b) for idx in chunks]
            for idx, lists in pool.imap_unordered(_work, jobs):
                for j, items in zip(idx, lists):
                    topk[j] = items
            return topk

        modes = {}
        modes[f"1 process x {a.threads} threads"] = throughput(one_process, len(seqs), req.get("passes", 1))
        if pool is not None:
            pool.map(_work, [([0], [seqs[0]], b)] * a.workers)  # warm-up
            modes[f"{a.workers} processes x 1 thread"] = throughput(per_core, len(seqs), req.get("passes", 1))
        mode = max(modes, key=lambda m: modes[m][0])
        hf_rps, topk = modes[mode]
        lat = []
        for s in seqs[: req["single"]]:
            t = time.perf_counter()
            gen_main.run([s], b)
            lat.append((time.perf_counter() - t) * 1e3)
        hf_p50 = statistics.median(lat)
        same = sum(1 for x, y in zip(topk, g["topk"]) if x == y)
        same_set = sum(1 for x, y in zip(topk, g["topk"]) if set(x) == set(y))
        n = len(seqs)
        report[b] = {
            "requests": n,
            "transformers_requests_per_s": hf_rps,
            "transformers_throughput_by_setup": {m: r for m, (r, _) in modes.items()},
            "transformers_throughput_setup": mode,
            "genrec_requests_per_s": g["requests_per_s"],
            "genrec_workers": g.get("workers", 1),
            "throughput_ratio": g["requests_per_s"] / hf_rps,
            "transformers_single_p50_ms": hf_p50,
            "transformers_threads": a.threads,
            "genrec_single_p50_ms": g["single_p50_ms"],
            "genrec_single_threads": g.get("single_threads"),
            "latency_ratio": hf_p50 / g["single_p50_ms"],
            "identical_topk_share": same / n,
            "same_items_share": same_set / n,
        }
        rows.append(report[b])
        setups = ", ".join(f"{m}: {r:.1f} req/s" for m, (r, _) in modes.items())
        print(f"B={b}: transformers {setups}; single p50 {hf_p50:.1f} ms; identical top-k {same}/{n}", flush=True)
    if pool is not None:
        pool.close()
        pool.join()
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
    print()
    print("genrec: throughput with {} worker(s) x 1 kernel thread, latency with {} kernel thread(s); "
          "transformers: throughput in its better set-up ({}), latency with {} torch thread(s)".format(
              rows[0]["genrec_workers"] if rows else "?", rows[0]["genrec_single_threads"] if rows else "?",
              "; ".join(f"B={b}: {r['transformers_throughput_setup']}" for b, r in report.items()), a.threads))


if __name__ == "__main__":
    main()
