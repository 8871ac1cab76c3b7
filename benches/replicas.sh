#!/usr/bin/env bash
# Three `genrec serve --feed` replicas and one redis-server on loopback
# (benches/replicas.rs): edit rate and time until every replica applied an
# edit, a replica and then Redis killed with SIGKILL mid-stream. Prints the
# results and keeps their JSON in OUT_DIR.
#
#   benches/replicas.sh [EDITS] [OUT_DIR] [WRITERS...]   # default 10000 work/replicas 8 32
set -euo pipefail
cd "$(dirname "$0")/.."
edits="${1:-10000}"; out="${2:-work/replicas}"; shift $(( $# < 2 ? $# : 2 ))
writers=("$@"); [ ${#writers[@]} -gt 0 ] || writers=(8 32)
command -v redis-server > /dev/null || { echo "redis-server is required (apt-get install redis-server)" >&2; exit 1; }
mkdir -p "$out"
cargo build --release --quiet
echo "# $(date -u +%FT%TZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(redis-server --version | cut -d' ' -f1-3)"
for w in "${writers[@]}"; do
  echo "## cargo bench --bench replicas -- --edits $edits --fault-edits 2000 --writers $w --json $out/replicas-w$w.json"
  RUST_LOG=warn cargo bench --quiet --bench replicas -- --edits "$edits" --fault-edits 2000 --writers "$w" --json "$out/replicas-w$w.json" 2> "$out/replicas-w$w.log"
done
