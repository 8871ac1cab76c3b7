#!/usr/bin/env bash
# Cold-start benchmark on MovieLens-100K (benches/results/coldstart.md):
# index the movies, train on the users that are not held out, then recommend
# to the held-out users from their sign-up profile alone.
#
#   benches/coldstart.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR holds ML100K.{item,inter,user}.json (default ../shared/data/ml-100k).
# Prints the validation runs (settings) and the test run (reported), each as
# JSON; logs and models stay in OUT_DIR (default work/ml).
set -euo pipefail
cd "$(dirname "$0")/.."
D="${1:-../shared/data/ml-100k}"
out="${2:-work/ml}"
mkdir -p "$out"
scripts/fetch-models.sh
cargo build --release --quiet
B=target/release/genrec
HOLD=0.3
$B index --items "$D/ML100K.item.json" --out "$out/catalog" --levels 2 --codebook-size 32
$B train --data "$D/ML100K.inter.json" --catalog "$out/catalog" --out "$out/model" \
  --holdout-users $HOLD --epochs 10 --seed 42 --valid-users 300 --threads 2
eval() { $B coldstart-eval --data "$D/ML100K.inter.json" --users "$D/ML100K.user.json" \
  --model "$out/model" --holdout-users $HOLD --prompt prompts/movies.prompt "$@"; }
# settings are picked on the validation half of the held-out users ...
eval --split valid --methods llm --calibration 0 | tail -n 1
eval --split valid --methods popularity,embedding,llm | tail -n 1
# ... and reported once on the test half
eval --split test | tail -n 1
