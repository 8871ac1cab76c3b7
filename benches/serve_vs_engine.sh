#!/usr/bin/env bash
# The server against its own engine, on one checkpoint and one data set, in
# one run (this machine drifts 10-30% within minutes: compare only rows of
# the same run).
#
#   benches/serve_vs_engine.sh [MODEL_DIR DATA.inter.json] [OUT_DIR]
#
# Default: the demo model (models/demo/model) and the demo world's
# interactions. k = B = 10 throughout.
#   engine:  benches/generate_vs_hf.rs in process (batches of 64, one worker
#            per core on single-threaded kernels; single requests with the
#            kernels over all cores), on the test histories of 256 users
#   server:  genrec serve --beam 10 [--max-batch 1 | default], genrec bench
#            --concurrency 16 (throughput) and --concurrency 1 (latency),
#            test histories of every user; each setting twice, alternating,
#            medians reported
# Prints a markdown table; JSON of every run is kept in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 2 ]; then model="$1"; data="$2"; shift 2; else model=models/demo/model; data=""; fi
out="${1:-work/serve-vs-engine}"
mkdir -p "$out"
cargo build --release --quiet
B=target/release/genrec
if [ -z "$data" ]; then $B demo-data --out "$out/data" > /dev/null; data="$out/data/demo.inter.json"; fi

# 1. the engine in process
cargo bench --quiet --bench generate_vs_hf -- --model "$model" --data "$data" --out "$out/engine" --beams 10 --phase batched --workers "$(nproc)" 2> "$out/engine.log"
cargo bench --quiet --bench generate_vs_hf -- --model "$model" --data "$data" --out "$out/engine" --beams 10 --phase single 2>> "$out/engine.log"

# 2. the server through HTTP
serve_bench() { # name, serve flags...
  local name=$1; shift
  local port=$((20000 + RANDOM % 20000))
  $B serve --addr "127.0.0.1:$port" --model "$model" --intent-model none --beam 10 "$@" > "$out/$name.server.log" 2>&1 &
  local server=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
  $B bench --url "http://127.0.0.1:$port" --data "$data" --k 10 --concurrency 16 --requests 600 > /dev/null 2>&1 # warm-up
  $B bench --url "http://127.0.0.1:$port" --data "$data" --k 10 --concurrency 16 --requests 3000 --json "$out/$name.c16.json" > /dev/null
  $B bench --url "http://127.0.0.1:$port" --data "$data" --k 10 --concurrency 1 --requests 300 --json "$out/$name.c1.json" > /dev/null
  kill "$server"; wait "$server" 2> /dev/null || true
}
for rep in 1 2; do
  serve_bench "batch1-$rep" --max-batch 1
  serve_bench "default-$rep"
done

python3 - "$out" "$model" "$data" <<'EOF'
import json, statistics, sys
out, model, data = sys.argv[1:4]
eng = json.load(open(f"{out}/engine/genrec.json"))["10"]
def med(name, load, key):
    return statistics.median(json.load(open(f"{out}/{name}-{r}.{load}.json"))[key] for r in (1, 2))
e_rps, e_p50 = eng["requests_per_s"], eng["single_p50_ms"]
rows = []
for name, label in (("batch1", "`--max-batch 1`"), ("default", "default (`--max-batch 32`)")):
    rps, p50 = med(name, "c16", "ok_per_s"), med(name, "c1", "latency_ms_p50")
    c16_p50 = med(name, "c16", "latency_ms_p50")
    rows.append((label, rps, c16_p50, p50))
print(f"model {model}, data {data}, k = B = 10\n")
print("| | answers/s at concurrency 16 | p50 ms at 16 | single-request p50 ms | throughput / engine | single p50 - engine's |")
print("|---|---|---|---|---|---|")
print(f"| engine in process ({eng.get('workers', 1)} workers, batches of 64) | {e_rps:.1f} | | {e_p50:.2f} | 1.00 | |")
for label, rps, c16, p50 in rows:
    print(f"| server, {label} | {rps:.1f} | {c16:.1f} | {p50:.2f} | {rps / e_rps:.2f} | {p50 - e_p50:+.2f} ms |")
print(f"\nbatching on / off (server throughput): {rows[1][1] / rows[0][1]:.2f}")
EOF
