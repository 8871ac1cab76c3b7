#!/usr/bin/env bash
# The project's test command (README, CI): fetch the models the tests need, set
# up the Python used by the Hugging Face compatibility test, then run every
# unit and integration test. Extra arguments go to cargo test.
# GENREC_SKIP_HF=1 skips the Python set-up (the compatibility test then says
# it was skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
# the text-encoder test fails instead of skipping when the model is missing
export GENREC_REQUIRE_MODELS=1
if [ "${GENREC_SKIP_HF:-0}" != 1 ]; then
  GENREC_PYTHON="$(scripts/python-env.sh | tail -n 1)"
  export GENREC_PYTHON GENREC_REQUIRE_HF=1
fi
cargo test --release "$@"
