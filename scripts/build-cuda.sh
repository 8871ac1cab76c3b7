#!/usr/bin/env bash
# Builds genrec with the `cuda` feature on any x86-64 Linux machine, with or
# without a GPU: the binary runs on an H100/H200 (sm_90) with a CUDA 13 driver.
#
#   scripts/build-cuda.sh            # -> target/cuda/release/genrec (+ genrec.gz beside it, for carrying)
#   scripts/build-cuda.sh test       # cargo test --features cuda (GPU tests skip without a GPU)
#
# What it does, and why:
# 1. nvcc 13.0. An nvcc already on PATH that says "release 13.0" is used (the
#    Dockerfile's devel image); otherwise nvcc 13.0 is installed from PyPI into
#    .cuda-toolchain/ (git-ignored; ~300 MB, seconds). Keep 13.0: PTX from a
#    newer nvcc is refused by a 13.0 (r580) driver.
# 2. A patched copy of candle-core 0.11.1 under target/cuda/patch/: candle
#    hard-wires cudarc's `dynamic-linking` (huggingface/candle#3900), which would
#    link -lcuda -lcublas ... at build time and make the binary unable to start
#    without CUDA. The copy asks for `dynamic-loading` instead (libraries opened
#    at run time). The patch is passed with --config for this build only; the
#    default build and CI never see it, and Cargo.lock is restored afterwards.
# 3. cargo build --release --features cuda into target/cuda (its own target
#    folder, so the CPU build stays cached). ~24 minutes clean on 2 idle cores, most
#    of it nvcc on candle's kernels.
#
# At run time the binary needs the NVIDIA driver (libcuda.so.1) and, for
# candle's matrix products, libcublas.so.13, libcublasLt.so.13 and
# libcurand.so.10 on the library path (e.g. LD_LIBRARY_PATH=/usr/local/cuda/lib64).
# Environment: CUDA_COMPUTE_CAP (default 90), NVCC_APPEND_FLAGS (default
# --compress-mode=size: 4x smaller GPU code), CARGO_BUILD_JOBS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# 1. nvcc 13.0
if command -v nvcc >/dev/null && nvcc --version | grep -q "release 13.0"; then
  echo "build-cuda: using $(command -v nvcc)" >&2
else
  tc="$root/.cuda-toolchain"
  if [ ! -x "$tc/bin/python" ]; then
    echo "build-cuda: installing nvcc 13.0 from PyPI into .cuda-toolchain/ ..." >&2
    python3 -m venv "$tc"
  fi
  "$tc/bin/python" -m pip install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  cu13="$("$tc/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
  export PATH="$cu13/bin:$PATH"
  export CUDA_ROOT="$cu13" CUDA_PATH="$cu13"
  echo "build-cuda: using $cu13/bin/nvcc" >&2
fi
nvcc --version | tail -2 >&2
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:---compress-mode=size}"

# 2. candle-core with dynamic-loading
cargo fetch --quiet
src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name 'candle-core-0.11.1' | head -1)"
[ -n "$src" ] || { echo "build-cuda: candle-core 0.11.1 source not found after cargo fetch" >&2; exit 1; }
patch="$root/target/cuda/patch/candle-core-0.11.1"
if [ ! -f "$patch/.genrec-patched" ]; then
  rm -rf "$patch"
  mkdir -p "$(dirname "$patch")"
  cp -r "$src" "$patch"
  sed -i 's/^    "dynamic-linking",$/    "dynamic-loading",/' "$patch/Cargo.toml"
  grep -q '"dynamic-loading"' "$patch/Cargo.toml" || { echo "build-cuda: patching candle-core failed" >&2; exit 1; }
  touch "$patch/.genrec-patched"
fi

# 3. build (or test)
cp Cargo.lock target/cuda/Cargo.lock.orig
trap 'cp target/cuda/Cargo.lock.orig Cargo.lock' EXIT
cmd=build
if [ "${1:-}" = test ]; then cmd=test; shift; fi
start=$(date +%s)
cargo "$cmd" --release --features cuda --target-dir target/cuda \
  --config "patch.crates-io.candle-core.path=\"$patch\"" \
  --config 'profile.release.strip="symbols"' "$@"
if [ "$cmd" = build ]; then
  bin="$root/target/cuda/release/genrec"
  gzip -9 -c "$bin" > "$bin.gz"
  echo "build-cuda: built $bin ($(du -h "$bin" | cut -f1), gzipped $(du -h "$bin.gz" | cut -f1); $(( $(date +%s) - start )) s)" >&2
fi
