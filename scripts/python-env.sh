#!/usr/bin/env bash
# A Python with PyTorch (CPU use) and Hugging Face transformers, for the
# checkpoint-compatibility test (tests/hf_compat.rs) and the speed benchmark
# against transformers (benches/hf_generate.py).
#
# The environment lives in the cache folder (scripts/cache-dir.sh), keyed by
# the pinned requirements (scripts/python-requirements.txt) and the Python
# version, so a second clone reuses it; `.venv` (git-ignored) links to it.
# Idempotent; a half-made environment is never used (it is built under a
# temporary name and renamed when complete).
# Prints the path of its python on the last line.
#
# Usage: scripts/python-env.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
req="$root/scripts/python-requirements.txt"
pyver="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
key="$( (cat "$req"; echo "python $pyver") | sha256sum | cut -c1-16)"
cache="$(bash "$root/scripts/cache-dir.sh")"
venv="$cache/venv-py$pyver-$key"
if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then
  echo "python-env: reusing $venv" >&2
else
  echo "python-env: installing $(grep -v '^#' "$req" | tr '\n' ' ')into $venv (a few minutes, ~6 GB) ..." >&2
  tmp="$venv.partial.$$"
  rm -rf "$tmp"
  python3 -m venv "$tmp"
  "$tmp/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check -r "$req"
  touch "$tmp/.complete"
  # (only bin/python is used, which finds its packages wherever the folder is)
  mv -T "$tmp" "$venv" 2>/dev/null || rm -rf "$tmp" # another clone finished first
fi
# `.venv` in the clone: a link to the cached environment (benches use it)
if [ -L "$root/.venv" ] || [ ! -e "$root/.venv" ]; then
  ln -sfn "$venv" "$root/.venv"
fi
"$venv/bin/python" -c "import torch, transformers; print('python-env: torch', torch.__version__, 'transformers', transformers.__version__)" >&2
echo "$venv/bin/python"
