#!/usr/bin/env bash
# What an ensemble costs per request, through HTTP: `genrec serve` with one
# model against the same server with a two-member ensemble of it, on the same
# users' test histories, default server settings.
#
#   benches/ensemble_cost.sh MODEL_DIR DATA.inter.json [OUT_DIR]
#
# The ensemble is MODEL_DIR plus a copy of it as members/1 (OUT_DIR/ens,
# served with the model's own catalog): a second seed's weights cost the
# same. Requests ask for the model's work (`--strategy generative
# --timeout-ms 60000 --keep-history`: no ANN answer counts); after a
# warm-up, 1,500 requests at k = 10 from 16 clients (throughput) and 150 one
# at a time (latency); single and ensemble alternate, twice, and the table
# gives medians and the ensemble / single ratios. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1"; data="$2"; out="${3:-work/ensemble-cost}"
users=256
mkdir -p "$out"
cargo build --release --quiet
B=target/release/genrec
catalog="$(python3 -c 'import json,os,sys; d=sys.argv[1]; c=json.load(open(os.path.join(d,"genrec.json")))["catalog"]; print(os.path.normpath(os.path.join(d,c)))' "$model")"
rm -rf "$out/ens"
mkdir -p "$out/ens/members/1"
for f in config.json model.safetensors genrec.json; do
  cp "$model/$f" "$out/ens/$f"
  cp "$model/$f" "$out/ens/members/1/$f"
done
python3 - "$out/ens/genrec.json" <<'PY'
import json, sys
p = sys.argv[1]
s = json.load(open(p))
s["members"] = ["members/1"]
json.dump(s, open(p, "w"), indent=2)
PY
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD)"
echo "command: benches/ensemble_cost.sh $*"

serve_bench() { # name, model dir
  local name=$1 dir=$2
  local port=$((20000 + RANDOM % 20000))
  $B serve --addr "127.0.0.1:$port" --model "$dir" --catalog "$catalog" --intent-model none > "$out/$name.server.log" 2>&1 &
  local server=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
  local url="http://127.0.0.1:$port"
  local same=(--users $users --strategy generative --timeout-ms 60000 --keep-history --k 10)
  $B bench --url "$url" --data "$data" "${same[@]}" --concurrency 16 --requests 300 > /dev/null 2>&1 # warm-up
  $B bench --url "$url" --data "$data" "${same[@]}" --concurrency 16 --requests 1500 --json "$out/$name.c16.json" > /dev/null
  $B bench --url "$url" --data "$data" "${same[@]}" --concurrency 1 --requests 150 --json "$out/$name.c1.json" > /dev/null
  kill "$server"; wait "$server" 2> /dev/null || true
}
for rep in 1 2; do
  serve_bench "single-$rep" "$model"
  serve_bench "ensemble-$rep" "$out/ens"
done

python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def med(name, load, key):
    return statistics.median(json.load(open(f"{out}/{name}-{r}.{load}.json"))[key] for r in (1, 2))
def bad(name):
    return sum(j["requests"] - j["ok"] + j["fallbacks"] for r in (1, 2) for load in ("c16", "c1")
               for j in [json.load(open(f"{out}/{name}-{r}.{load}.json"))])
rows = {n: (med(n, "c16", "ok_per_s"), med(n, "c16", "latency_ms_p50"), med(n, "c1", "latency_ms_p50"), med(n, "c1", "latency_ms_p99")) for n in ("single", "ensemble")}
print("\n| server, default settings | answers/s at concurrency 16 | p50 ms at 16 | single-request p50 ms | single-request p99 ms | failed or fallback |")
print("|---|---|---|---|---|---|")
for n, label in (("single", "one model"), ("ensemble", "two-member ensemble")):
    r = rows[n]
    print(f"| {label} | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.2f} | {r[3]:.2f} | {bad(n)} |")
s, e = rows["single"], rows["ensemble"]
print(f"| ensemble / one model | {e[0] / s[0]:.2f} | {e[1] / s[1]:.2f} | {e[2] / s[2]:.2f} | {e[3] / s[3]:.2f} | |")
PY
