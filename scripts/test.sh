#!/usr/bin/env bash
# The project's test command (README, CI): fetch the models the tests need,
# then run every unit and integration test. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
# the text-encoder test fails instead of skipping when the model is missing
export GENREC_REQUIRE_MODELS=1
cargo test --release "$@"
