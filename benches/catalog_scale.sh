#!/usr/bin/env bash
# The catalog at scale, one row per size: a synthetic catalog (genrec synth),
# genrec index (time, peak RSS, collisions, bytes per item), a small model
# trained for one epoch on its histories, genrec serve (start-to-ready time
# and RSS, resident bytes per item), then genrec bench-catalog through HTTP
# (recommendation latency idle and during a stream of NDJSON upserts,
# upserts/s, single-upsert latency, upsert lines refused and new items placed
# off their nearest codes). Writes benches/results/scale.md and the
# raw reports under $WORK/<N>/.
#
# Usage: benches/catalog_scale.sh [N ...]      (default: 100000 1000000 10000000)
# Env:   WORK (default work/scale), DIM (64), SECONDS_STREAM (30), BATCH (2000),
#        PORT (18181), KEEP=1 keeps each size's files (default: removed after
#        its row, except the reports), SKIP_INDEX=1 reuses a kept catalog and
#        its index report (its edit log is reset to the indexed state).
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/genrec
WORK=${WORK:-work/scale}
DIM=${DIM:-64}
SECONDS_STREAM=${SECONDS_STREAM:-30}
BATCH=${BATCH:-2000}
PORT=${PORT:-18181}
TOKEN=scale-bench-token-0123
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(100000 1000000 10000000)
[ -x "$B" ] || cargo build --release
mkdir -p "$WORK"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

for N in "${SIZES[@]}"; do
  D="$WORK/$N"
  mkdir -p "$D"
  echo "== $N items =="
  # 1. data
  [ -f "$D/synth.safetensors" ] || $B synth --out "$D" --items "$N" --dim "$DIM" --users 20000 --seed 7 2> "$D/synth.log"
  # 2. index (peak RSS from GNU time)
  if [ "${SKIP_INDEX:-0}" = 1 ] && [ -f "$D/catalog/CURRENT" ] && [ -f "$D/index.json" ]; then
    echo "reusing $D/catalog (edit log reset)"
    rm -f "$D"/catalog/edits-*.log
  else
    /usr/bin/time -v $B index --items "$D/synth.jsonl" --embeddings "$D/synth.safetensors" --out "$D/catalog" \
        --report "$D/index.json" > "$D/index.out" 2> "$D/index.log"
    grep -E "Maximum resident|Elapsed" "$D/index.log" | tee "$D/index.time"
  fi
  # 3. a small model, one epoch
  [ -f "$D/model/model.safetensors" ] || $B train --data "$D/synth.inter.json" --catalog "$D/catalog" --out "$D/model" \
      --epochs 1 --valid-users 0 > "$D/train.out" 2> "$D/train.log"
  # 4. serve: time to ready, RSS
  start=$(date +%s.%N)
  $B serve --model "$D/model" --addr "127.0.0.1:$PORT" --admin-token "$TOKEN" --intent-model none > "$D/serve.out" 2> "$D/serve.log" &
  pid=$!
  until curl -sf "127.0.0.1:$PORT/readyz" > /dev/null; do
    kill -0 $pid 2> /dev/null || { echo "server died"; tail "$D/serve.log"; exit 1; }
    sleep 0.2
  done
  ready=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  rss_ready=$(rss_kb $pid)
  curl -sf -H "authorization: Bearer $TOKEN" "127.0.0.1:$PORT/admin/catalog" > "$D/catalog-ready.json"
  echo "ready in ${ready}s, RSS ${rss_ready} kB"
  # 5. load: upserts alone (batches, then single upserts), then
  #    recommendations idle and during a second stream of upserts
  $B bench-catalog --url "http://127.0.0.1:$PORT" --token "$TOKEN" --data "$D/synth.inter.json" \
      --synth-items "$N" --synth-dim "$DIM" --synth-seed 7 --seconds "$SECONDS_STREAM" --batch "$BATCH" \
      --concurrency 0 --idle-seconds 0 --json "$D/bench-alone.json" | tee "$D/bench-alone.out"
  $B bench-catalog --url "http://127.0.0.1:$PORT" --token "$TOKEN" --data "$D/synth.inter.json" \
      --synth-items $((N + 5000000)) --synth-dim "$DIM" --synth-seed 7 --seconds "$SECONDS_STREAM" --batch "$BATCH" \
      --concurrency 4 --singles 0 --json "$D/bench.json" | tee "$D/bench.out"
  rss_after=$(rss_kb $pid)
  curl -sf -H "authorization: Bearer $TOKEN" "127.0.0.1:$PORT/admin/catalog" > "$D/catalog-after.json"
  kill $pid; wait $pid 2> /dev/null || true
  printf '{"ready_s": %s, "rss_ready_kb": %s, "rss_after_kb": %s}\n' "$ready" "$rss_ready" "$rss_after" > "$D/serve.json"
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$D/catalog" "$D/model" "$D"/synth.*; fi
done

python3 - "$WORK" "${SIZES[@]}" <<'PY'
import json, re, sys, os
work, sizes = sys.argv[1], sys.argv[2:]
def load(p):
    with open(p) as f: return json.load(f)
rows = []
for n in sizes:
    d = os.path.join(work, n)
    idx = load(f"{d}/index.json"); b = load(f"{d}/bench.json"); alone = load(f"{d}/bench-alone.json")
    s = load(f"{d}/serve.json"); cat = load(f"{d}/catalog-ready.json")
    t = open(f"{d}/index.time").read()
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", t).group(1)
    parts = wall.split(":"); secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(parts)))
    N = int(n); files = dict(idx["bytes"])
    per = lambda x: x / N
    is_ann = lambda k: k.startswith("ivf.") or k == "embeddings.ivf.f16"
    ann = sum(v for k, v in files.items() if is_ann(k))
    catalog_bytes = sum(v for k, v in files.items() if not is_ann(k))
    rows.append(dict(n=N, index_s=secs, index_peak_gb=peak_kb / 1e6, emb_gb=N * int(idx["dim"]) * 4 / 1e9,
        catalog_b=per(catalog_bytes), trie_b=per(cat["bytes"]["trie"]), ann_b=per(ann), max_group=idx["max_group"],
        ready_s=s["ready_s"], rss_ready_gb=s["rss_ready_kb"] / 1e6, rss_per_item=s["rss_ready_kb"] * 1024 / N,
        p50=b["recommend_idle"]["p50_ms"], p99=b["recommend_idle"]["p99_ms"], ups=alone["upserts_per_s"], ups_busy=b["upserts_per_s"],
        p99_stream=b["recommend_during_stream"]["p99_ms"], ratio=b["recommend_p99_ratio"],
        single_p99=alone["single_upsert"]["p99_ms"], invisible=alone["not_visible_after_ack"], errors=alone["upsert_errors"] + b["upsert_errors"],
        placed=sum(x.get("placement", {}).get("placed", 0) for x in (alone, b)),
        moved=sum(sum(x.get("placement", {}).get("moved_at_level", [])) for x in (alone, b))))
hdr = ("| items | index s | index peak RSS GB (embeddings f32 GB) | catalog B/item | trie B/item | ANN B/item | largest collision group "
       "| start-to-ready s | RSS at ready GB (B/item) | recommend p50 / p99 ms | upserts/s alone (beside 4 recommend clients) | recommend p99 during upserts ms (x idle) | single upsert p99 ms | upsert lines refused | placed off their nearest codes |")
out = [hdr, "|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|"]
for r in rows:
    out.append(f"| {r['n']:,} | {r['index_s']:.0f} | {r['index_peak_gb']:.2f} ({r['emb_gb']:.2f}) | {r['catalog_b']:.0f} | {r['trie_b']:.1f} | {r['ann_b']:.0f} "
               f"| {r['max_group']} | {r['ready_s']:.1f} | {r['rss_ready_gb']:.2f} ({r['rss_per_item']:.0f}) | {r['p50']:.1f} / {r['p99']:.1f} "
               f"| {r['ups']:,.0f} ({r['ups_busy']:,.0f}) | {r['p99_stream']:.1f} ({r['ratio']:.2f}x) | {r['single_p99']:.1f} "
               f"| {r['errors']:,} | {r['moved']:,} of {r['placed']:,} |")
print("\n".join(out))
with open(os.path.join(work, "table.md"), "w") as f: f.write("\n".join(out) + "\n")
PY
echo "table: $WORK/table.md (copy it into benches/results/scale.md with the commands)"
