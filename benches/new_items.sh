#!/usr/bin/env bash
# Every new item gets a semantic ID (issue 42): on a catalog built by
# benches/catalog_scale.sh (KEEP=1) or by this script, 20,000 new items are
# sent as one NDJSON batch to `genrec serve --no-model`, twice from the
# indexed state: items like the catalog's ("mixture": a random item's
# embedding plus a little noise) and items all in its densest component
# ("hot": a flash sale, a trending live category). Prints one Markdown row
# per size and kind: lines refused, upserts/s, items placed off their
# nearest codes (by the first level moved) and their extra squared
# distance, and the catalog's fill afterwards (GET /admin/catalog).
#
# Usage: benches/new_items.sh [N ...]          (default: 100000 1000000 10000000)
# Env:   WORK (default work/scale, as catalog_scale.sh), B (the genrec binary,
#        default target/release/genrec: set it to an older build to compare),
#        ITEMS (20000), PORT (18182)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/genrec}
WORK=${WORK:-work/scale}
ITEMS=${ITEMS:-20000}
PORT=${PORT:-18182}
TOKEN=new-items-bench-token-0123
PY=${PYTHON:-$(bash scripts/cache-dir.sh)/venv-py3.11-*/bin/python}
PY=$(ls $PY 2>/dev/null | head -1)
[ -x "$PY" ] || PY=python3
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(100000 1000000 10000000)
[ -x "$B" ] || cargo build --release
echo "| items | batch | lines refused | upserts/s | placed off their nearest codes (by first level moved) | extra squared distance mean / max | full prefixes per level after | free IDs after |"
echo "|---|---|---|---|---|---|---|---|"
for N in "${SIZES[@]}"; do
  D="$WORK/$N"
  mkdir -p "$D"
  [ -f "$D/synth.safetensors" ] || $B synth --out "$D" --items "$N" --dim 64 --users 20000 --seed 7 2> "$D/synth.log"
  [ -f "$D/catalog/CURRENT" ] || $B index --items "$D/synth.jsonl" --embeddings "$D/synth.safetensors" \
      --out "$D/catalog" --report "$D/index.json" > "$D/index.out" 2> "$D/index.log"
  for kind in mixture hot; do
    [ -f "$D/new-$kind.ndjson" ] || "$PY" - "$D" "$kind" "$ITEMS" <<'PY'
import json, struct, sys, collections
import numpy as np
d, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(f"{d}/synth.safetensors", "rb") as f:
    hlen = struct.unpack("<Q", f.read(8))[0]
    head = json.loads(f.read(hlen))["embeddings"]
rows, dim = head["shape"]
emb = np.memmap(f"{d}/synth.safetensors", dtype=np.float32, mode="r", offset=8 + hlen, shape=(rows, dim))
rng = np.random.default_rng(42 if kind == "mixture" else 43)
if kind == "mixture":
    pick = rng.choice(rows, size=n, replace=rows < n)
else:
    # the densest component: items' titles name it ("... of group G")
    groups = np.empty(rows, dtype=np.int32)
    with open(f"{d}/synth.jsonl") as f:
        for i, line in enumerate(f):
            groups[i] = int(line.rsplit("group ", 1)[1].split('"', 1)[0])
    top = collections.Counter(groups.tolist()).most_common(1)[0][0]
    members = np.flatnonzero(groups == top)
    pick = rng.choice(members, size=n, replace=len(members) < n)
x = np.asarray(emb[np.sort(pick)], dtype=np.float32)
x += rng.normal(scale=0.02 * float(np.abs(x).mean()), size=x.shape).astype(np.float32)
with open(f"{d}/new-{kind}.ndjson", "w") as f:
    for j, v in enumerate(x):
        f.write(json.dumps({"id": f"new-{kind}-{j}", "title": f"new {kind} item {j}", "embedding": [round(float(a), 6) for a in v]}) + "\n")
PY
    rm -f "$D"/catalog/edits-*.log   # from the indexed state each time
    $B serve --catalog "$D/catalog" --no-model --addr "127.0.0.1:$PORT" --admin-token "$TOKEN" --intent-model none \
        > "$D/new-items-serve.out" 2> "$D/new-items-serve.log" &
    pid=$!
    # (without a model /readyz says not ready: wait for the admin API)
    until curl -sf -H "authorization: Bearer $TOKEN" "127.0.0.1:$PORT/admin/catalog" > /dev/null; do
      kill -0 $pid 2> /dev/null || { echo "server died"; tail "$D/new-items-serve.log"; exit 1; }
      sleep 0.2
    done
    start=$(date +%s.%N)
    curl -sf -H "authorization: Bearer $TOKEN" -H "content-type: application/x-ndjson" \
        --data-binary "@$D/new-$kind.ndjson" "127.0.0.1:$PORT/admin/items" > "$D/new-$kind.answer.json"
    secs=$(python3 -c "print($(date +%s.%N) - $start)")
    curl -sf -H "authorization: Bearer $TOKEN" "127.0.0.1:$PORT/admin/catalog" > "$D/new-$kind.catalog.json"
    kill $pid; wait $pid 2> /dev/null || true
    rm -f "$D"/catalog/edits-*.log
    python3 - "$N" "$kind" "$D" "$secs" <<'PY'
import json, sys
n, kind, d, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
a = json.load(open(f"{d}/new-{kind}.answer.json")); c = json.load(open(f"{d}/new-{kind}.catalog.json"))
p = a.get("placement") or {}
moved = p.get("moved_at_level", []); nm = sum(moved)
mean = p.get("extra_distance_sum", 0) / max(nm, 1)
fill = c.get("fullness") or {}
full = " / ".join(f"{l['full']:,} of {l['used']:,}" for l in fill.get("levels", [])) or "–"
refused = len(a.get("errors", []))
free = f"{fill['free_ids']:,}" if "free_ids" in fill else "–"
print(f"| {int(n):,} | {kind} | {refused} | {(a['applied']) / secs:,.0f} | {nm:,} of {p.get('placed', a['applied']):,} ({moved}) "
      f"| {mean:.4f} / {p.get('extra_distance_max', 0):.4f} | {full} | {free} |")
if refused:
    print("   first refusal:", a["errors"][0]["error"], file=sys.stderr)
PY
  done
done
