#!/usr/bin/env bash
# genrec against transformers on one LLM-layout checkpoint (issue 39 part 5):
# a random-weight Llama of SmolLM2-135M's shape with 3 x 256 semantic-ID
# tokens added to its tokenizer, an LC-Rec index.json of 20,000 items and a
# ~200-token prompt (benches/llm_layout.py). genrec is measured through HTTP
# (`genrec serve --model DIR --beam B`, default settings otherwise; `genrec
# bench` with --keep-history --strategy generative), transformers with
# generate(num_beams=B, prefix_allowed_tokens_fn=trie) on the same prompts,
# one request at a time on 2 threads. Both at B = 10 and 50, k = B.
#
# Usage: benches/llm_layout.sh [OUT_DIR]   (default work/llm-bench; ~10 min)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/work/llm-bench}"
py="$(bash "$root/scripts/python-env.sh" | tail -1)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin="$root/target/release/genrec"
[ -f "$out/model.safetensors" ] || "$py" "$root/benches/llm_layout.py" write "$out" 2>/dev/null
rm -rf "$out/catalog"
results="$out/results.jsonl"
: > "$results"
port=18950
for beams in 10 50; do
  "$bin" serve --model "$out" --beam "$beams" --addr "127.0.0.1:$port" > "$out/serve-$beams.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.5; done
  common=(--url "http://127.0.0.1:$port" --data "$out/bench.inter.json" --k "$beams" --keep-history
          --strategy generative --timeout-ms 60000)
  # warm-up, then latency (one client) and throughput (4 clients)
  "$bin" bench "${common[@]}" --concurrency 1 --requests 4 > /dev/null
  "$bin" bench "${common[@]}" --concurrency 1 --requests 32 --json "$out/genrec-lat-$beams.json" > /dev/null
  "$bin" bench "${common[@]}" --concurrency 4 --requests 64 --json "$out/genrec-tput-$beams.json" > /dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "{\"system\": \"genrec\", \"beams\": $beams, \"latency\": $(cat "$out/genrec-lat-$beams.json"), \"throughput\": $(cat "$out/genrec-tput-$beams.json")}" >> "$results"
  echo "{\"system\": \"transformers\", \"beams\": $beams, \"run\": $("$py" "$root/benches/llm_layout.py" generate "$out" "$beams" 2 2>/dev/null | tail -1)}" >> "$results"
done
cat "$results"
