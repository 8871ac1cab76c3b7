#!/usr/bin/env bash
# The device check of genrec's GPU path, run on the GPU machine (no Rust there):
# the cuda binary built here by scripts/build-cuda.sh does all the work
# (`genrec gpu-check`, src/gpu_check/):
#   1. correctness: the beam-step kernels (the radix selection that serving
#      runs, and the pooled one that is to replace it, also with its fallback
#      forced) against the CPU reference on random tries and logits, and GPU
#      against CPU generation on a real checkpoint;
#   2. both kernels' time per step, batch 1/16/64 x beam 16/64/256, tries of
#      10^4, 10^6, 10^7 items, beside the memory-bandwidth and launch floors;
#   3. end-to-end requests/s and p50/p99 for batch 1/16/64 at beam 64 and 256,
#      GPU and CPU in the same run.
# Table on stdout (and $OUT/gpu-check.md), JSON in $OUT/gpu-check.json.
# Budget: 44 s on an H200 with the Beauty checkpoint (benches/results/gpu.md).
#
# Usage (on the GPU machine, from the repository root):
#   scripts/gpu-check.sh [MODEL_DIR [CATALOG_DIR]]     # default: the embedded demo model
# With the device tool, carrying the binary and the Beauty checkpoint:
#   run(command="bash scripts/gpu-check.sh work/beauty/cf-ff1024 work/beauty/cf-catalog",
#       carry=["target/cuda/release/genrec.gz", "work/beauty/cf-ff1024", "work/beauty/cf-catalog"])
# (the gzipped binary: 16 MB instead of 46, inside the 64 MiB a call carries)
# GENREC_GPU_CHECK_ARGS adds flags (e.g. --quick). Production-shaped models
# need no carried weights: they are built on the device with random weights,
#   GENREC_GPU_CHECK_ARGS="--synthetic qwen3-1.7b --layout onerec --history-items 333 --quick"
# (Qwen3-1.7B shape over 10^6 random 3 x 8,192 semantic IDs, 1,000-token
# histories; part 1b then compares 8 requests with the CPU, part 3 times the
# GPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${GENREC_BIN:-target/cuda/release/genrec}"
if [ ! -x "$bin" ] && [ -f "$bin.gz" ]; then
  gunzip -c "$bin.gz" > /tmp/genrec-cuda && chmod +x /tmp/genrec-cuda && bin=/tmp/genrec-cuda
fi
[ -x "$bin" ] || { echo "gpu-check: $bin not found: build it with scripts/build-cuda.sh and carry it" >&2; exit 2; }
# candle's matrix products open cuBLAS/cuRAND at run time
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# no toolkit libraries there? PyTorch's pip wheels (nvidia-cublas, nvidia-curand) carry them
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
  for f in $(find /usr /opt -name 'libcublas.so.1*' -o -name 'libcurand.so.1*' 2>/dev/null); do
    d=$(dirname "$f"); case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}";; esac
  done
fi
echo "gpu-check: LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
args=(gpu-check --device cuda:0 --out "$out/gpu-check.json")
[ $# -ge 1 ] && args+=(--model "$1")
[ $# -ge 2 ] && args+=(--catalog "$2")
# shellcheck disable=SC2206
args+=(${GENREC_GPU_CHECK_ARGS:-})
start=$(date +%s)
set -o pipefail
timeout 470 "$bin" "${args[@]}" 2>&1 | tee "$out/gpu-check.md"
echo "gpu-check: done in $(( $(date +%s) - start )) s" | tee -a "$out/gpu-check.md"
