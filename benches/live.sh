#!/usr/bin/env bash
# The live world (benches/live.rs) against `genrec serve` through HTTP:
# lifetimes, events and the trending prior, in accelerated time. Prints
# Markdown tables (benches/results/live.md keeps them) and writes the JSON
# to OUT_DIR.
#
#   benches/live.sh [SECONDS] [TRENDING] [OUT_DIR]     # default 60 3 work/live
# Every other option of the binary passes through after `--`:
#   benches/live.sh 60 3 work/live -- --burst-share 0.5 --accel 30
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"; trending="${2:-3}"; out="${3:-work/live}"; shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = -- ] && shift
mkdir -p "$out"
cargo build --release --quiet
echo "# $(date -u +%FT%TZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(git rev-parse --short HEAD)"
echo "## cargo bench --bench live -- --seconds $secs --trending $trending --json $out/live.json $*"
RUST_LOG=warn cargo bench --quiet --bench live -- --seconds "$secs" --trending "$trending" --json "$out/live.json" "$@" \
  2> "$out/live.log"
