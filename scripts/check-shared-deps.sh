#!/usr/bin/env bash
# Checks that `cargo build` and `cargo test` compile every shared dependency
# with the same features, so that the tests reuse what a build compiled
# (a dev-dependency that turns on one more feature of a crate rebuilds that
# crate and everything above it: candle, axum, ... several minutes).
# Fix a drift by naming the crate in [dependencies] with those features.
set -euo pipefail
cd "$(dirname "$0")/.."
tree() { cargo tree -f "{p} [{f}]" --prefix none -e "$1" | sed 's/ (\*)$//' | sort -u; }
build="$(tree normal,build)"
test="$(tree normal,build,dev)"
# packages (name and version) in both whose features differ
drift="$(comm -13 <(echo "$build") <(echo "$test") | while read -r name version rest; do
  if echo "$build" | grep -q "^$name $version "; then
    echo "  $name $version: build $(echo "$build" | grep "^$name $version " | cut -d' ' -f3-), test $rest"
  fi
done)"
if [ -n "$drift" ]; then
  echo "check-shared-deps: cargo test would recompile these with other features than cargo build:" >&2
  echo "$drift" >&2
  exit 1
fi
echo "check-shared-deps: build and test share every dependency"
