#!/usr/bin/env bash
# The ANN index through HTTP, as a user runs it: `genrec serve --no-model
# --catalog DIR` on each catalog folder made by benches/ann_scale.sh, time
# from start to ready and RSS then, then `genrec bench --strategy ann` with
# the synth users' histories: one client (latency) and four (answers/s on
# both cores). With WARM=N, N requests go first, unmeasured (a fresh
# server's first requests at 10^8 read the index from the disk). Prints one
# table row per size; raw reports under $WORK/<N>/http-*.json.
#
# Usage: benches/ann_http.sh [N ...]          (default: 100000 1000000 10000000)
# Env:   B (genrec binary), WORK (work/ann), PORT (18190), REQUESTS (1000),
#        WARM (0), SETTLE (seconds between ready and the first request, 0:
#        the server reads its ANN rows ahead in the background from start;
#        14 s at 10^8 here)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/genrec}
WORK=${WORK:-work/ann}
PORT=${PORT:-18190}
REQUESTS=${REQUESTS:-1000}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(100000 1000000 10000000)
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
echo "| items | start to ready s | RSS at ready GB | ANN cells (probes) | 1 client p50 / p99 ms | 4 clients answers/s, p99 ms | errors |"
echo "|---|---|---|---|---|---|---|"
for N in "${SIZES[@]}"; do
  D="$WORK/$N"
  start=$(date +%s.%N)
  $B serve --catalog "$D/catalog" --no-model --addr "127.0.0.1:$PORT" --admin-token ann-http-bench-token --intent-model none > "$D/http-serve.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  # (without a model /readyz answers 503; /healthz once the catalog and
  # its ANN index are open and the port listens)
  until curl -sf "127.0.0.1:$PORT/healthz" > /dev/null; do
    kill -0 $pid 2>/dev/null || { echo "serve exited; see $D/http-serve.log"; exit 1; }
    sleep 0.05
  done
  ready=$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")
  rss=$(rss_kb $pid)
  curl -sf -H "authorization: Bearer ann-http-bench-token" "127.0.0.1:$PORT/admin/catalog" > "$D/http-catalog.json"
  sleep "${SETTLE:-0}"
  if [ "${WARM:-0}" -gt 0 ]; then
    $B bench --url "http://127.0.0.1:$PORT" --data "$D/synth.inter.json" --strategy ann --concurrency 4 \
        --requests "$WARM" --users "$WARM" > /dev/null
  fi
  $B bench --url "http://127.0.0.1:$PORT" --data "$D/synth.inter.json" --strategy ann --concurrency 1 \
      --requests "$REQUESTS" --users "$REQUESTS" --json "$D/http-1.json" > /dev/null
  $B bench --url "http://127.0.0.1:$PORT" --data "$D/synth.inter.json" --strategy ann --concurrency 4 \
      --requests "$REQUESTS" --users "$REQUESTS" --json "$D/http-4.json" > /dev/null
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$D" "$N" "$ready" "$rss" <<'PY'
import json, sys
d, n, ready, rss = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
one, four, cat = (json.load(open(f"{d}/{f}")) for f in ("http-1.json", "http-4.json", "http-catalog.json"))
def lat(r, p): return r[f"latency_ms_{p}"]
errors = sum(r["errors"] + r["rejected"] for r in (one, four))
print(f"| {n:,} | {ready:.2f} | {rss / 1e6:.2f} | {cat['ann']['cells']:,} ({cat['ann']['probes']:,}) | "
      f"{lat(one, 'p50'):.2f} / {lat(one, 'p99'):.2f} | {four['ok_per_s']:,.0f}, {lat(four, 'p99'):.2f} | {errors} |")
PY
done
