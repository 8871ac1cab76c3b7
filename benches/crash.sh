#!/usr/bin/env bash
# The crash harness, long: a SIGKILL at a random instant of each round while
# clients upsert, delete and compact through HTTP, every acknowledged edit
# checked after each restart (tests/common/crash.rs). Appends its row to
# benches/results/reliability.md.
#
#   benches/crash.sh [ITERATIONS] [SEED]      # default 200 rounds, seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
iterations="${1:-200}"
seed="${2:-1}"
out="$(mktemp)"
cargo bench --bench crash -- --iterations "$iterations" --seed "$seed" | tee "$out"
row="$(grep '^| single server' "$out")"
echo "$row  <!-- benches/crash.sh $iterations $seed, $(date -u +%Y-%m-%d) -->" >> benches/results/reliability.md
rm -f "$out"
