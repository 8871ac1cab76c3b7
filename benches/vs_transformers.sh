#!/usr/bin/env bash
# Speed of genrec against transformers' constrained beam search on the same
# checkpoint and the same test histories, on this machine's CPU, in one run.
#
#   benches/vs_transformers.sh MODEL_DIR DATA.inter.json [OUT_DIR] [extra args for the genrec half]
#
# e.g. benches/vs_transformers.sh work/beauty/model ../shared/data/amazon-beauty/Beauty.inter.json
# Prints a markdown table (requests/s batched, median single-request latency,
# ratios, share of identical top-k lists) for k = B = 10 and 50. Throughput is
# each side's better set-up (see benches/generate_vs_hf.rs, benches/hf_generate.py);
# the whole run takes about ten minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?model folder}"; data="${2:?interactions file}"; out="${3:-work/vs-transformers}"
shift $(( $# < 3 ? $# : 3 ))
python="$(scripts/python-env.sh | tail -n 1)"
mkdir -p "$out"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# genrec: throughput with one worker per core (single-threaded kernels each),
# then single-request latency in a second process with the kernels spread over
# the cores (GENREC_BENCH_WORKERS overrides the worker count)
workers="${GENREC_BENCH_WORKERS:-$(nproc)}"
cargo bench --quiet --bench generate_vs_hf -- --model "$model" --data "$data" --out "$out" --phase batched --workers "$workers" "$@"
cargo bench --quiet --bench generate_vs_hf -- --model "$model" --data "$data" --out "$out" --phase single "$@"
"$python" benches/hf_generate.py "$out"
