#!/usr/bin/env python3
"""Writes a copy of an interactions file without each user's last item, so
that settings can be chosen on a validation that looks like test.

Under leave-one-out the validation history is exactly the sequence the model
was trained on, while the test history adds one item (the validation item)
the model never saw in that context; settings that memorise the training
contexts win on validation and not on test. On the shortened file the whole
pipeline runs unchanged, and its *test* split is a test-like validation: the
target is the original second-to-last item, the history ends with the
original third-to-last item, which the model did not train on. The original
test items are never read by anything downstream.

Usage: python3 benches/test_like_split.py NAME.inter.json OUT/NAME.inter.json
  then: genrec index --interactions OUT/NAME.inter.json ..., genrec train
        --data OUT/NAME.inter.json ..., genrec eval --data OUT/NAME.inter.json
        (--split test: test-like validation; --split valid: the optimistic one)
"""
import json
import os
import sys


def main(src, dst):
    with open(src) as f:
        data = json.load(f)
    out = {u: s[:-1] for u, s in data.items()}
    short = sum(len(s) < 3 for s in out.values())
    if short:
        print(f"warning: {short} users keep fewer than 3 items and have no validation item", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".partial"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, dst)
    print(f"{len(out)} users, {sum(map(len, out.values()))} interactions (each user's last item dropped) -> {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
