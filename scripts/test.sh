#!/usr/bin/env bash
# The project's test command (README, CI). In order:
#   1. style: `cargo fmt --check` (rustfmt.toml) and that `cargo build` and
#      `cargo test` share their compiled dependencies;
#   2. in the background, the models the tests need (scripts/fetch-models.sh)
#      and the Python of the Hugging Face compatibility test
#      (scripts/python-env.sh), both cached outside the clone;
#   3. build and lint: every target (library, binary, tests, benches) in
#      release mode, compiled by clippy-driver with warnings denied, the lints
#      of `cargo clippy --all-targets -- -D warnings`, in the same pass as
#      the code the tests run (a separate `cargo clippy` re-checks every
#      dependency: 5 more minutes on a fresh clone here); genrec itself is
#      compiled incrementally (a one-line change rebuilds in seconds), its
#      dependencies are the ones `cargo build --release` compiled;
#   4. the tests: every unit and integration test.
# Ends with the time each phase took. Extra arguments go to cargo test.
# GENREC_SKIP_HF=1 skips the Python set-up (the compatibility test then says
# it was skipped); GENREC_SKIP_LINT=1 skips the style checks and the lints.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-1}"
# Four test threads on two cores: most integration tests wait on a server
# process, Python or a timer, not on the CPU (70 s instead of 95 s here).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
# the text-encoder test fails instead of skipping when the model is missing
export GENREC_REQUIRE_MODELS=1

started=$SECONDS
times=()
phase() { # name, command...: runs it and records how long it took
  local name="$1" t0=$SECONDS
  shift
  echo "test.sh: $name ..."
  "$@"
  times+=("$(printf '  %-34s %5d s' "$name" $((SECONDS - t0)))")
}
report() {
  local rc=$?
  echo "test.sh: time per phase$([ $rc = 0 ] || echo " (stopped with exit status $rc)")"
  [ ${#times[@]} = 0 ] || printf '%s\n' "${times[@]}"
  printf '  %-34s %5d s\n' "total" $((SECONDS - started))
}
trap report EXIT

logs="$(mktemp -d)"
setup_models() { scripts/fetch-models.sh >"$logs/models.log" 2>&1; }
setup_python() { scripts/python-env.sh >"$logs/python.log" 2>&1; }
setup_models &
models_pid=$!
if [ "${GENREC_SKIP_HF:-0}" != 1 ]; then
  setup_python &
  python_pid=$!
fi

if [ "${GENREC_SKIP_LINT:-0}" != 1 ]; then
  phase "cargo fmt --check" cargo fmt --check
  phase "build/test dependencies shared" scripts/check-shared-deps.sh
  clippy="$(command -v clippy-driver || true)"
  if [ -z "$clippy" ]; then
    echo "test.sh: clippy-driver not found: rustup component add clippy (or GENREC_SKIP_LINT=1)" >&2
    exit 1
  fi
  # (the same for the build and the test run, so nothing compiles twice)
  export RUSTC_WORKSPACE_WRAPPER="$clippy" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
fi
phase "build and lint (all targets)" cargo test --release --locked --no-run --all-targets "$@"

wait_for() { # name, pid, log: waits for a background set-up, shows its log on failure
  if ! wait "$2"; then
    cat "$3" >&2
    echo "test.sh: $1 failed" >&2
    return 1
  fi
  cat "$3"
}
phase "models (background, waited for)" wait_for "fetch-models" "$models_pid" "$logs/models.log"
if [ "${GENREC_SKIP_HF:-0}" != 1 ]; then
  phase "python env (background, waited for)" wait_for "python-env" "$python_pid" "$logs/python.log"
  GENREC_PYTHON="$(tail -n 1 "$logs/python.log")"
  export GENREC_PYTHON GENREC_REQUIRE_HF=1
fi
phase "tests" cargo test --release --locked "$@"
rm -rf "$logs"
