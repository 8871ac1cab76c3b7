#!/usr/bin/env bash
# Soak: `genrec serve` (the embedded default) under an open-loop load at 70%
# of its measured capacity for a long time, RSS sampled every 10 s. Passes
# when, after the warm-up (the first sixth of the run, at least 2 minutes),
# RSS grows by less than 1 MB per minute (least-squares slope).
#
#   benches/soak.sh [SECONDS] [OUT_DIR] [extra genrec serve flags...]   # default 3600 s
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3600}"; out="${2:-work/soak}"; shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
cargo build --release --quiet
B=target/release/genrec
$B demo-data --out "$out/data" > /dev/null
port=$((20000 + RANDOM % 20000))
$B serve --addr "127.0.0.1:$port" --intent-model none "$@" > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port"
# capacity: closed loop, 16 clients, 20 s
$B bench --url "$url" --data "$out/data/demo.inter.json" --concurrency 16 --seconds 20 --json "$out/capacity.json" > /dev/null
rate=$(python3 -c "import json; print(round(0.7 * json.load(open('$out/capacity.json'))['ok_per_s'], 1))")
echo "capacity $(python3 -c "import json; print(round(json.load(open('$out/capacity.json'))['ok_per_s'], 1))") answers/s; soaking at $rate req/s for $secs s"
$B bench --url "$url" --data "$out/data/demo.inter.json" --rate "$rate" --seconds "$secs" --json "$out/soak.json" > /dev/null &
load=$!
: > "$out/rss.tsv"
start=$(date +%s)
while kill -0 "$load" 2> /dev/null; do
  echo -e "$(( $(date +%s) - start ))\t$(awk '/VmRSS/ {print $2}' "/proc/$server/status")" >> "$out/rss.tsv"
  sleep 10
done
wait "$load"
kill -0 "$server" || { echo "soak: the server died" >&2; exit 1; }
python3 - "$out" "$secs" <<'EOF'
import json, sys
out, secs = sys.argv[1], float(sys.argv[2])
rows = [tuple(map(float, l.split())) for l in open(f"{out}/rss.tsv") if l.strip()]
warm = max(120.0, secs / 6)
pts = [(t, kb) for t, kb in rows if t >= warm]
n = len(pts)
mt, mk = sum(t for t, _ in pts) / n, sum(k for _, k in pts) / n
slope = sum((t - mt) * (k - mk) for t, k in pts) / max(1e-9, sum((t - mt) ** 2 for t, _ in pts))  # kB per s
mb_min = slope * 60 / 1024
r = json.load(open(f"{out}/soak.json"))
print(f"soak {secs:.0f} s: {r['ok']} ok, {r['rejected']} 429, {r['errors']} errors, {r['fallbacks']} fallbacks; "
      f"ok p50/p99 {r['latency_ms_p50']:.2f}/{r['latency_ms_p99']:.2f} ms; "
      f"RSS {rows[0][1]/1024:.0f} -> {rows[-1][1]/1024:.0f} MB, after {warm:.0f} s warm-up {mb_min:+.3f} MB/min ({n} samples)")
sys.exit(0 if mb_min < 1.0 and r["errors"] == 0 else 1)
EOF
