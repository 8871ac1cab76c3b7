#!/usr/bin/env bash
# The crash harness, long: a SIGKILL at a random instant of each round while
# clients upsert, delete and compact through HTTP, every acknowledged edit
# checked after each restart (tests/common/crash.rs); or the disk-full
# harness (tests/common/disk_full.rs). Prints the Markdown row, with the
# command and date, for the matching table of benches/results/reliability.md.
#
#   benches/crash.sh [ITERATIONS] [SEED] [--replicas]   # default 200 rounds, seed 1
#   benches/crash.sh --disk-full [REQUESTS]              # needs root (a tmpfs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--disk-full" ]; then
  out="$(mktemp)"
  cargo bench --bench crash -- --disk-full --requests "${2:-2000}" | tee "$out"
  row="$(grep -E '^\| [0-9]' "$out")"
  echo; echo "row for benches/results/reliability.md:"
  echo "$row  <!-- benches/crash.sh --disk-full ${2:-2000}, $(date -u +%Y-%m-%d) -->"
  rm -f "$out"
  exit 0
fi
iterations="${1:-200}"
seed="${2:-1}"
out="$(mktemp)"
mode="${3:-}"
cargo bench --bench crash -- --iterations "$iterations" --seed "$seed" $mode | tee "$out"
row="$(grep -E '^\| (single server|3 replicas)' "$out")"
echo; echo "row for benches/results/reliability.md:"
echo "$row  <!-- benches/crash.sh $iterations $seed $mode, $(date -u +%Y-%m-%d) -->"
rm -f "$out"
