#!/usr/bin/env bash
# The device check of genrec's GPU path, run on the GPU machine (no Rust there):
# the cuda binary built here by scripts/build-cuda.sh does all the work
# (`genrec gpu-check`, src/gpu_check/). One call runs three checks, each under
# its own time limit (all three: under 8 minutes on an H200):
#
#   A. MODEL_DIR (default: the embedded demo model):
#      1. correctness: the beam-step kernels (the radix selection that serving
#         runs, and the pooled one that is to replace it, also with its
#         fallback forced) against the CPU reference on random tries and
#         logits; GPU against CPU generation with either kernel, as a
#         two-member ensemble, and in bf16 (informative);
#      2. both kernels' time per step, batch 1/16/64 x beam 16/64/256, tries of
#         10^4 and 10^6 items in both layouts (3 x 256 and 3 x 8,192 codes),
#         beside the memory-bandwidth and launch floors;
#      3. end-to-end requests/s, tokens/s, p50/p99 and GPU memory for batch
#         1/16/64 at beam 64 and 256: GPU (radix), bf16, GPU (pool), CPU.
#   B. a Qwen3-0.6B-shaped model with random weights over 10^6 random
#      3 x 8,192 semantic IDs, 1,000-token contexts (333 items): parts 1 and 3
#      (bf16, the dtype --dtype auto serves it in; radix and pool) at beam 50
#      and 256, batch 1, 8, 64, with the published anchors printed beside.
#   C. the same with Qwen3-1.7B's shape (4 requests against the CPU).
#
# Tables on stdout (and $OUT/gpu-check-{A,B,C}.md), JSON in
# $OUT/gpu-check-{A,B,C}.json. Exits non-zero when any check failed (a
# correctness mismatch, an error, or a time limit).
#
# Usage (on the GPU machine, from the repository root):
#   scripts/gpu-check.sh [MODEL_DIR [CATALOG_DIR]]
# With the device tool (the gzipped binary: ~19 MB, inside the 64 MiB a call carries):
#   run(command="bash scripts/gpu-check.sh", carry=["target/cuda/release/genrec.gz"], timeout_s=540)
# GENREC_GPU_CHECK_ONLY=A|B|C runs one check; GENREC_GPU_CHECK_ARGS adds flags
# to check A (e.g. --e2e-beams 64; A already runs with --quick).
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
case "${GENREC_GPU_CHECK_ONLY:-}" in
  ""|A|B|C) ;;
  *) echo "gpu-check: GENREC_GPU_CHECK_ONLY must be A, B or C, not '$GENREC_GPU_CHECK_ONLY'" >&2; exit 2;;
esac
# check NAME LIMIT_S ARGS...: one `genrec gpu-check`, its table and JSON in $out
failed=()
check() {
  local name=$1 limit=$2; shift 2
  if [ -n "${GENREC_GPU_CHECK_ONLY:-}" ] && [ "$GENREC_GPU_CHECK_ONLY" != "$name" ]; then return 0; fi
  echo "== gpu-check $name: $* (limit ${limit} s)" | tee "$out/gpu-check-$name.md"
  local t0 rc=0
  t0=$(date +%s)
  timeout "$limit" "$bin" gpu-check --device cuda:0 --out "$out/gpu-check-$name.json" "$@" 2>&1 | tee -a "$out/gpu-check-$name.md" || rc=$?
  echo "== gpu-check $name: rc $rc in $(( $(date +%s) - t0 )) s" | tee -a "$out/gpu-check-$name.md"
  [ "$rc" -eq 0 ] || failed+=("$name (rc $rc)")
}
start=$(date +%s)
a_args=()
[ $# -ge 1 ] && a_args+=(--model "$1")
[ $# -ge 2 ] && a_args+=(--catalog "$2")
# shellcheck disable=SC2206
extra=(${GENREC_GPU_CHECK_ARGS:-})
case " ${extra[*]:-} " in *" --quick "*) ;; *) a_args+=(--quick);; esac
a_args+=(${extra[@]+"${extra[@]}"})
check A 120 "${a_args[@]}"
prod=(--layout onerec --history-items 333 --no-step-times --e2e-beams 50,256 --batches 1,8,64 --quick)
check B 150 --synthetic qwen3-0.6b --e2e-requests 8 "${prod[@]}"
check C 200 --synthetic qwen3-1.7b --e2e-requests 4 "${prod[@]}"
echo "gpu-check: done in $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-check: FAILED: ${failed[*]}" >&2
  exit 1
fi
