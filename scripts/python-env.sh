#!/usr/bin/env bash
# Set up .venv/ (git-ignored): a Python with PyTorch (CPU use) and Hugging Face
# transformers, for the checkpoint-compatibility test (tests/hf_compat.rs) and
# the speed benchmark against transformers (benches/hf_generate.py).
# Idempotent: an environment that already imports both is left alone.
# Prints the path of its python on the last line.
#
# Usage: scripts/python-env.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  echo "python-env: $venv already has torch and transformers" >&2
else
  echo "python-env: installing torch and transformers into $venv (a few minutes, ~6 GB) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
    "torch>=2.4" "transformers>=4.56,<6" "safetensors>=0.4"
fi
"$venv/bin/python" -c "import torch, transformers; print('python-env: torch', torch.__version__, 'transformers', transformers.__version__)" >&2
echo "$venv/bin/python"
