#!/usr/bin/env bash
# Prints the folder where genrec's set-up scripts keep what a fresh clone
# would otherwise download again (the Python environment, the fetched
# models): $GENREC_CACHE, else $XDG_CACHE_HOME/genrec, else ~/.cache/genrec.
# Entries are keyed by the pinned versions they hold, so clones of different
# commits share what they agree on and never overwrite each other's.
set -euo pipefail
dir="${GENREC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/genrec}"
mkdir -p "$dir"
cd "$dir" && pwd
