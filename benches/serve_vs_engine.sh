#!/usr/bin/env bash
# The server against its own engine and against transformers, on one
# checkpoint and one set of histories, in one run (this machine drifts
# 10-30% within minutes: compare only rows of the same run).
#
#   benches/serve_vs_engine.sh [MODEL_DIR DATA.inter.json] [OUT_DIR]
#
# Default: the demo model (models/demo/model) and the demo world's
# interactions. The requests are the test histories of 256 users, evenly
# spaced over the file (the same users on every side); k = B = 10 and 50.
#   engine:        benches/generate_vs_hf.rs in process (batches of 64, one
#                  worker per core on single-threaded kernels; single
#                  requests with the kernels over all cores)
#   transformers:  benches/hf_generate.py on the same token sequences
#                  (generate with a trie, its better thread set-up); skipped
#                  with NO_TRANSFORMERS=1
#   server:        genrec serve --beam 10 [--max-batch 1 | the defaults],
#                  genrec bench --users 256 --k B at concurrency 16
#                  (throughput) and 1 (latency); each setting twice,
#                  alternating, medians reported. The requests ask for the
#                  engine's work: strategy generative (no ANN answer ever
#                  counts), a 60 s deadline, history items not excluded;
#                  the tables print failures and fallbacks (both must be 0)
# Prints markdown tables; the JSON of every run is kept in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 2 ]; then model="$1"; data="$2"; shift 2; else model=models/demo/model; data=""; fi
out="${1:-work/serve-vs-engine}"
users=256
mkdir -p "$out"
cargo build --release --quiet
B=target/release/genrec
if [ -z "$data" ]; then $B demo-data --out "$out/data" > /dev/null; data="$out/data/demo.inter.json"; fi
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD)"

# 1. the engine in process (writes requests.json for transformers)
engine() { cargo bench --quiet --bench generate_vs_hf -- --model "$model" --data "$data" --out "$out/engine" --users $users --beams 10,50 "$@"; }
engine --phase batched --workers "$(nproc)" 2> "$out/engine.log"
engine --phase single 2>> "$out/engine.log"

# 2. transformers on the same token sequences
rm -f "$out/engine/compare.json" # never print an earlier run's transformers figures
if [ "${NO_TRANSFORMERS:-0}" != 1 ]; then
  python="$(scripts/python-env.sh | tail -n 1)"
  "$python" benches/hf_generate.py "$out/engine" > "$out/transformers.log" 2>&1
fi

# 3. the server through HTTP
serve_bench() { # name, serve flags...
  local name=$1; shift
  local port=$((20000 + RANDOM % 20000))
  $B serve --addr "127.0.0.1:$port" --model "$model" --intent-model none --beam 10 "$@" > "$out/$name.server.log" 2>&1 &
  local server=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
  local url="http://127.0.0.1:$port"
  local same=(--users $users --strategy generative --timeout-ms 60000 --keep-history)
  for k in 10 50; do
    local n=$((k == 10 ? 3000 : 600))
    $B bench --url "$url" --data "$data" "${same[@]}" --k $k --concurrency 16 --requests $((n / 5)) > /dev/null 2>&1 # warm-up
    $B bench --url "$url" --data "$data" "${same[@]}" --k $k --concurrency 16 --requests $n --json "$out/$name.k$k.c16.json" > /dev/null
    $B bench --url "$url" --data "$data" "${same[@]}" --k $k --concurrency 1 --requests $((n / 10)) --json "$out/$name.k$k.c1.json" > /dev/null
  done
  kill "$server"; wait "$server" 2> /dev/null || true
}
for rep in 1 2; do
  serve_bench "batch1-$rep" --max-batch 1
  serve_bench "default-$rep"
done

python3 - "$out" "$model" "$data" <<'EOF'
import json, os, statistics, sys
out, model, data = sys.argv[1:4]
eng = json.load(open(f"{out}/engine/genrec.json"))
hf_path = f"{out}/engine/compare.json"
hf = json.load(open(hf_path)) if os.path.exists(hf_path) else {}
def runs(name, k, load):
    return [json.load(open(f"{out}/{name}-{r}.k{k}.{load}.json")) for r in (1, 2)]
def med(name, k, load, key):
    return statistics.median(j[key] for j in runs(name, k, load))
def not_ok(name, k):
    return sum(j["requests"] - j["ok"] + j["fallbacks"] for load in ("c16", "c1") for j in runs(name, k, load))
print(f"model {model}, data {data}, the test histories of 256 users\n")
for k in ("10", "50"):
    e = eng[k]
    e_rps, e_p50 = e["requests_per_s"], e["single_p50_ms"]
    h = hf.get(k)
    print(f"### k = B = {k}\n")
    print("| | answers/s at concurrency 16 | p50 ms at 16 | single-request p50 ms | throughput / engine | single p50 - engine's | throughput / transformers | failed or fallback |")
    print("|---|---|---|---|---|---|---|---|")
    hf_cell = lambda rps: f"{rps / h['transformers_requests_per_s']:.1f}x" if h else "not run"
    print(f"| engine in process ({e.get('workers', 1)} workers, batches of 64) | {e_rps:.1f} | | {e_p50:.2f} | 1.00 | | {hf_cell(e_rps)} | |")
    rows = []
    for name, label in (("batch1", "`--max-batch 1`"), ("default", "default (`--max-batch 32`)")):
        rps, c16, p50 = med(name, k, "c16", "ok_per_s"), med(name, k, "c16", "latency_ms_p50"), med(name, k, "c1", "latency_ms_p50")
        rows.append(rps)
        print(f"| server, {label} | {rps:.1f} | {c16:.1f} | {p50:.2f} | {rps / e_rps:.2f} | {p50 - e_p50:+.2f} ms | {hf_cell(rps)} | {not_ok(name, k)} |")
    if h:
        print(f"| transformers in process ({h['transformers_throughput_setup']}) | {h['transformers_requests_per_s']:.1f} | | {h['transformers_single_p50_ms']:.1f} | | | 1.0x | |")
    print(f"\nbatching on / off (server throughput): {rows[1] / rows[0]:.2f}\n")
EOF
