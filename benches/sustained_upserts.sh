#!/usr/bin/env bash
# Sustained upserts beside recommendation traffic (issue 38, part 3): a
# synthetic catalog of N items (default 10^7) is indexed, a one-epoch model
# trained, `genrec serve` started with its defaults, then `genrec
# bench-catalog` runs back to back in slices of SLICE_S seconds for MINUTES
# minutes: NDJSON upserts of new items (2 writers, 2,000 per batch) beside 4
# closed-loop recommendation clients. After every slice the script records
# the server's RSS, the edit log's size, the segments' count and size, the
# catalog version and the slice's upserts/s and recommend p50/p99, so a
# reader sees whether they stay flat.
# The first slice starts with 60 s of recommendations alone: the idle p99.
#
# Usage: benches/sustained_upserts.sh [N]
# Env:   WORK (work/sustained), MINUTES (30), SLICE_S (300), PORT (18182),
#        B (the genrec binary, target/release/genrec), SERVE_ARGS (more flags
#        for genrec serve, e.g. "--fold-log-mb 0" for the catalog without
#        segments)
# Writes $WORK/N/slices.jsonl and prints a Markdown table (benches/results/
# sustained.md keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/genrec}
N=${1:-10000000}
WORK=${WORK:-work/sustained}
MINUTES=${MINUTES:-30}
SLICE=${SLICE_S:-300}
PORT=${PORT:-18182}
TOKEN=sustained-bench-token-0123
D="$WORK/$N"
[ -x "$B" ] || cargo build --release
mkdir -p "$D"
echo "# $(date -u +%FT%TZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(git rev-parse --short HEAD)"
echo "## benches/sustained_upserts.sh $N (MINUTES=$MINUTES SLICE_S=$SLICE SERVE_ARGS=${SERVE_ARGS:-})"
[ -f "$D/synth.safetensors" ] || $B synth --out "$D" --items "$N" --dim 64 --users 20000 --seed 7 2> "$D/synth.log"
# a fresh catalog every run: the indexed state, no edits
rm -rf "$D/catalog"
$B index --items "$D/synth.jsonl" --embeddings "$D/synth.safetensors" --out "$D/catalog" > "$D/index.out" 2> "$D/index.log"
[ -f "$D/model/model.safetensors" ] || $B train --data "$D/synth.inter.json" --catalog "$D/catalog" --out "$D/model" \
    --epochs 1 --valid-users 0 > "$D/train.out" 2> "$D/train.log"
# shellcheck disable=SC2086
$B serve --model "$D/model" --addr "127.0.0.1:$PORT" --admin-token "$TOKEN" --intent-model none ${SERVE_ARGS:-} \
    > "$D/serve.out" 2> "$D/serve.log" &
pid=$!
trap 'kill $pid 2> /dev/null || true' EXIT
until curl -sf "127.0.0.1:$PORT/readyz" > /dev/null; do
  kill -0 $pid 2> /dev/null || { echo "server died"; tail "$D/serve.log"; exit 1; }
  sleep 0.2
done
: > "$D/slices.jsonl"
slices=$(( MINUTES * 60 / SLICE ))
t0=$(date +%s)
for s in $(seq 1 "$slices"); do
  idle=0; [ "$s" = 1 ] && idle=60
  # a slice whose loader fails is reported, and the run goes on
  if ! $B bench-catalog --url "http://127.0.0.1:$PORT" --token "$TOKEN" --data "$D/synth.inter.json" \
      --synth-items $(( N + s * 20000000 )) --synth-dim 64 --synth-seed 7 --seconds "$SLICE" --batch 2000 \
      --concurrency 4 --idle-seconds "$idle" --singles 0 --json "$D/slice-$s.json" > "$D/slice-$s.out" 2>&1; then
    echo "slice $s: the loader failed at $(date -u +%T) ($(head -1 "$D/slice-$s.out")); see $D/slice-$s.out"
    continue
  fi
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  log=$(cat "$D"/catalog/edits-*.log 2> /dev/null | wc -c)
  cat=$(curl -sf -H "authorization: Bearer $TOKEN" "127.0.0.1:$PORT/admin/catalog")
  python3 - "$D/slice-$s.json" "$s" "$(( $(date +%s) - t0 ))" "$rss" "$log" "$cat" >> "$D/slices.jsonl" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); c = json.loads(sys.argv[6])
during = b["recommend_during_stream"]; idle = b.get("recommend_idle") or {}
print(json.dumps(dict(slice=int(sys.argv[2]), elapsed_s=int(sys.argv[3]), rss_kb=int(sys.argv[4]), log_bytes=int(sys.argv[5]),
    version=c.get("version"), rows=c.get("rows"), overlay_items=c.get("overlay_items"), compacting=c.get("compacting"),
    segments=None if c.get("segments") is None else len(c["segments"]), segment_bytes=None if c.get("segments") is None else sum(s["bytes"] for s in c["segments"]),
    upserts_per_s=b["upserts_per_s"], upsert_errors=b["upsert_errors"],
    p50_ms=during["p50_ms"], p99_ms=during["p99_ms"], idle_p99_ms=idle.get("p99_ms"))))
PY
  tail -1 "$D/slices.jsonl"
done
python3 - "$D/slices.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
idle = rows[0]["idle_p99_ms"]
print(f"\nidle recommend p99 {idle:.2f} ms (first slice, 60 s, 4 clients)\n")
print("| slice | ends at s | upserts/s | upsert errors | recommend p50 / p99 ms | p99 x idle | server RSS GB | edit log MB | segments (MB) | catalog version (rows, edits above it) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    seg = "busy" if r.get("segments") is None else f"{r['segments']} ({r['segment_bytes'] / 1e6:.0f})"
    busy = ", compacting or folding" if r.get("compacting") else ""
    print(f"| {r['slice']} | {r['elapsed_s']} | {r['upserts_per_s']:,.0f} | {r['upsert_errors']} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | "
          f"{r['p99_ms'] / idle:.2f} | {r['rss_kb'] / 1e6:.2f} | {r['log_bytes'] / 1e6:.0f} | {seg} | {r['version']} ({r['rows']:,}, {r['overlay_items']:,}){busy} |")
PY
