#!/usr/bin/env bash
# ANN recall against brute force at each size: a synthetic catalog (genrec
# synth, reused when there), genrec index (its IVF phase timed in the
# report), then the in-process ANN bench (`benches/ann.rs`): recall@10 and
# p50/p99 per probe count for the IVF index, on the synth users'
# histories. Writes the raw output
# under $WORK/<N>/ann.out; benches/results/ann.md keeps the tables.
#
# Usage: benches/ann_scale.sh [N ...]         (default: 100000 1000000 10000000)
# Env:   B (genrec binary; default target/release/genrec), ANN_BENCH (the
#        bench binary; default: built with cargo), WORK (work/ann),
#        QUERIES (1000; 200 from 10^7 on), F16=1 (synth writes f16,
#        as at 10^8), KEEP_INDEX=1 reuses a catalog already indexed there.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/genrec}
WORK=${WORK:-work/ann}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(100000 1000000 10000000)
if [ -z "${ANN_BENCH:-}" ]; then
  cargo bench --bench ann --no-run 2>&1 | tail -1
  ANN_BENCH=$(ls -t target/release/deps/ann-* | grep -v '\.d$' | head -1)
fi
for N in "${SIZES[@]}"; do
  D="$WORK/$N"
  mkdir -p "$D"
  echo "== $N items =="
  F16_ARG=""; [ "${F16:-0}" = 1 ] && F16_ARG="--f16"
  [ -f "$D/synth.safetensors" ] || $B synth --out "$D" --items "$N" --dim 64 --users 20000 --seed 7 $F16_ARG 2> "$D/synth.log"
  if [ "${KEEP_INDEX:-0}" != 1 ] || [ ! -f "$D/catalog/CURRENT" ]; then
    rm -rf "$D/catalog"
    /usr/bin/time -v $B index --items "$D/synth.jsonl" --embeddings "$D/synth.safetensors" --out "$D/catalog" \
        --report "$D/index.json" > "$D/index.out" 2> "$D/index.log"
    grep -E "Maximum resident|Elapsed" "$D/index.log" | tee "$D/index.time"
    python3 -c "import json,sys; r=json.load(open('$D/index.json')); print('phases', r.get('phases'))" || true
  fi
  Q=${QUERIES:-$([ "$N" -ge 10000000 ] && echo 200 || echo 1000)}
  /usr/bin/time -v "$ANN_BENCH" --catalog "$D/catalog" --data "$D/synth.inter.json" --queries "$Q" \
      > "$D/ann.out" 2> "$D/ann.log"
  grep -v '^{' "$D/ann.out"
done
