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
# two models: the windows alone, and with each user's first 10 items also
# trained as targets of an empty history (--first-items 10)
$B train --data "$D/ML100K.inter.json" --catalog "$out/catalog" --out "$out/model" \
  --holdout-users $HOLD --epochs 10 --seed 42 --valid-users 300 --threads 2
$B train --data "$D/ML100K.inter.json" --catalog "$out/catalog" --out "$out/model-first" \
  --holdout-users $HOLD --epochs 10 --seed 42 --valid-users 300 --threads 2 --first-items 10
# a third reads the training users' profiles (and their declared interests,
# the stand-in for a sign-up picker) as profile tokens before the history
$B train --data "$D/ML100K.inter.json" --catalog "$out/catalog" --out "$out/model-profile" \
  --holdout-users $HOLD --epochs 10 --seed 42 --valid-users 300 --threads 2 --first-items 10 \
  --users "$D/ML100K.user.json" --interests-from "$D/ML100K.item.json"
eval() { $B coldstart-eval --data "$D/ML100K.inter.json" --users "$D/ML100K.user.json" \
  --holdout-users $HOLD --prompt prompts/movies.prompt "$@" 2> /dev/null | tail -n 1; }
W=0,0.1,0.25,0.5,1
# settings are picked on the validation half of the held-out users ...
for m in model model-first; do
  eval --model "$out/$m" --split valid --methods first-popularity,first-popularity-age,embedding,llm --steering-weight $W
  eval --model "$out/$m" --split valid --methods embedding,llm --steering hard
  eval --model "$out/$m" --split valid --methods embedding,llm --steering-weight $W --interests-from "$D/ML100K.item.json"
done
eval --catalog "$out/catalog" --split valid --methods first-popularity-age --age-blend 0.25
P=(--model "$out/model-profile" --methods first-popularity,embedding,llm --steering-weight 0,0.1)
eval "${P[@]}" --split valid
eval "${P[@]}" --split valid --interests-from "$D/ML100K.item.json"
# ... and reported once on the test half (settings from the validation runs)
TEST_W="${TEST_W:-0.1}"
eval --model "$out/model-first" --split test --methods popularity,first-popularity,embedding,llm --steering-weight 0,$TEST_W
eval --model "$out/model-first" --split test --methods embedding,llm --steering-weight 0,$TEST_W --interests-from "$D/ML100K.item.json"
eval --model "$out/model" --split test --methods embedding,llm --steering-weight 0,$TEST_W
eval --model "$out/model" --split test --methods embedding,llm --steering hard
eval --catalog "$out/catalog" --split test --methods first-popularity-age --age-blend 0.25
eval "${P[@]}" --split test
eval "${P[@]}" --split test --interests-from "$D/ML100K.item.json"
# latency and memory of the intent LLM through HTTP (idle machine)
python3 benches/intent_latency.py --model "$out/model-first"
