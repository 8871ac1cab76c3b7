#!/usr/bin/env bash
# Load benchmark of `genrec serve` over HTTP with `genrec bench`, on this machine.
#
#   benches/serve_load.sh [OUT_DIR] [extra genrec serve flags...]
#
# Serves the embedded default model (or --model DIR ... passed as extra flags)
# on a loopback port, sends the demo world's test histories (k = 10) in closed
# loops at concurrency 1, 8 and 64 and an open loop at 200 req/s, and prints
# one markdown table; each run's JSON is kept in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-work/serve-load}"; shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$out"
cargo build --release --quiet
B=target/release/genrec
$B demo-data --out "$out/data" > /dev/null
port=$((20000 + RANDOM % 20000))
$B serve --addr "127.0.0.1:$port" "$@" > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
run() { # name, bench flags...
  local name=$1; shift
  $B bench --url "http://127.0.0.1:$port" --data "$out/data/demo.inter.json" --json "$out/$name.json" "$@" > /dev/null 2>&1
}
run warmup --concurrency 8 --requests 300
run c1 --concurrency 1 --requests 500
run c8 --concurrency 8 --requests 2000
run c64 --concurrency 64 --requests 4000
run open200 --rate 200 --seconds 10
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); server flags: ${*:-(defaults)}"
echo
echo "| load | requests | ok answers/s | items/s | ok p50 ms | ok p90 ms | ok p99 ms | 429 | errors | fallbacks |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for name in c1 c8 c64 open200; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('| {mode} | {requests} | {ok_per_s:.1f} | {items_per_s:.0f} | {latency_ms_p50:.2f} | {latency_ms_p90:.2f} | {latency_ms_p99:.2f} | {rejected} | {errors} | {fallbacks} |'.format(**r))" "$out/$name.json"
done
