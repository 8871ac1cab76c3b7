#!/usr/bin/env python3
"""How far the validation and test targets of a leave-one-out split lie from
the training data: how often each target item occurs in the training parts
(all but the last two items of every user), and how often the step from the
history's last item to the target occurs there as a consecutive pair; and
how well the items bought recently predict the targets: the mean log-likelihood
of the targets under item counts in which a training item `d` steps before the
end of its user's training part counts 0.5^(d / H) (add-one smoothing scaled to
the counts' mass; H = inf counts every purchase the same). A higher figure at
small H means the latest purchases say more about the held-out items than the
whole history does (what `genrec train --recency-half-life` builds on).

Usage: python3 benches/split_novelty.py NAME.inter.json
"""
import collections
import json
import math
import statistics
import sys

HALF_LIVES = (1, 2, 3, 5, 10, math.inf)


def recency_loglik(seqs, half_life, at):
    """Mean log-likelihood of the targets at position `at` under recency-weighted counts."""
    counts = collections.defaultdict(float)
    for s in seqs:
        part = s[:-2]
        for j, item in enumerate(part):
            counts[item] += 0.5 ** ((len(part) - 1 - j) / half_life)
    items = {i for s in seqs for i in s}
    mass = sum(counts.values())
    alpha = mass / sum(len(s) - 2 for s in seqs)  # one purchase's worth per item
    total = mass + alpha * len(items)
    return sum(math.log((counts.get(s[at], 0.0) + alpha) / total) for s in seqs) / len(seqs)


def main(path):
    with open(path) as f:
        data = json.load(f)
    seqs = [s for s in (data.values() if isinstance(data, dict) else data) if len(s) >= 3]
    counts = collections.Counter(i for s in seqs for i in s[:-2])
    pairs = {(a, b) for s in seqs for a, b in zip(s[:-2], s[1:-2])}
    print(f"{len(seqs)} users")
    print("split | target's training count: median / mean / share under 5 | last -> target pair seen in training")
    for name, at in (("valid", -2), ("test", -1)):
        c = [counts[s[at]] for s in seqs]
        seen = sum((s[at - 1], s[at]) in pairs for s in seqs) / len(seqs)
        under5 = sum(x < 5 for x in c) / len(c)
        print(f"{name} | {statistics.median(c):g} / {sum(c) / len(c):.1f} / {under5:.1%} | {seen:.1%}")
    print("split | " + " | ".join(f"log-likelihood, H = {h:g}" for h in HALF_LIVES))
    for name, at in (("valid", -2), ("test", -1)):
        print(f"{name} | " + " | ".join(f"{recency_loglik(seqs, h, at):.4f}" for h in HALF_LIVES))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
