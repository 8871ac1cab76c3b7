#!/usr/bin/env bash
# Three `genrec serve --feed` replicas and one redis-server on loopback
# (benches/replicas.rs): edit rate and time until every replica applied an
# edit, a replica and then Redis killed with SIGKILL mid-stream. Prints the
# results and keeps their JSON in OUT_DIR.
#
#   benches/replicas.sh [EDITS] [OUT_DIR] [WRITERS...]      # default 10000 work/replicas 8 32; the demo catalog
#   benches/replicas.sh --scale MODEL_DIR CATALOG_DIR [OUT_DIR]
#       the same with 8 writers on a large catalog (a hard-linked copy of
#       CATALOG_DIR in OUT_DIR is the shared folder), plus a compaction
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server > /dev/null || { echo "redis-server is required (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --quiet
echo "# $(date -u +%FT%TZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(redis-server --version | cut -d' ' -f1-3)"
if [ "${1:-}" = --scale ]; then
  model="$2"; catalog="$3"; out="${4:-work/replicas-scale}"
  mkdir -p "$out"; rm -rf "$out/catalog"
  # versions are never changed in place: hard links make a cheap copy that
  # compaction can write beside (same file system as CATALOG_DIR)
  cp -al "$catalog" "$out/catalog"
  echo "## cargo bench --bench replicas -- --edits 10000 --fault-edits 2000 --writers 8 --model $model --catalog $out/catalog --compact --json $out/replicas-scale.json"
  RUST_LOG=warn cargo bench --quiet --bench replicas -- --edits 10000 --fault-edits 2000 --writers 8 \
    --model "$model" --catalog "$out/catalog" --compact --json "$out/replicas-scale.json" 2> "$out/replicas-scale.log"
  exit 0
fi
edits="${1:-10000}"; out="${2:-work/replicas}"; shift $(( $# < 2 ? $# : 2 ))
writers=("$@"); [ ${#writers[@]} -gt 0 ] || writers=(8 32)
mkdir -p "$out"
for w in "${writers[@]}"; do
  echo "## cargo bench --bench replicas -- --edits $edits --fault-edits 2000 --writers $w --compact --json $out/replicas-w$w.json"
  RUST_LOG=warn cargo bench --quiet --bench replicas -- --edits "$edits" --fault-edits 2000 --writers "$w" --compact --json "$out/replicas-w$w.json" 2> "$out/replicas-w$w.log"
done
