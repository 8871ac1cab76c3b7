#!/usr/bin/env python3
"""How far the validation and test targets of a leave-one-out split lie from
the training data: how often each target item occurs in the training parts
(all but the last two items of every user), and how often the step from the
history's last item to the target occurs there as a consecutive pair.

Usage: python3 benches/split_novelty.py NAME.inter.json
"""
import collections
import json
import statistics
import sys


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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
