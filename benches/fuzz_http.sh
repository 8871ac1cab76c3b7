#!/usr/bin/env bash
# Hostile input at scale: starts `genrec serve` (the embedded default, with
# an admin token) on a loopback port and sends it generated and mutated
# bodies (benches/fuzz_http.py). Fails on a 5xx other than 503/504, a dropped
# connection, a crash, or no answer to a valid request afterwards.
#
#   benches/fuzz_http.sh [REQUESTS] [OUT_DIR] [extra genrec serve flags...]   # default 100000 requests
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"; out="${2:-work/fuzz-http}"; shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
cargo build --release --quiet
port=$((20000 + RANDOM % 20000))
target/release/genrec serve --addr "127.0.0.1:$port" --intent-model none --admin-token fuzz-token-0123456789 "$@" > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
rss0=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
python3 benches/fuzz_http.py "http://127.0.0.1:$port" --requests "$n" | tee "$out/report.json"
kill -0 "$server" || { echo "fuzz_http: the server died" >&2; exit 1; }
echo "server RSS: ${rss0} kB before, $(awk '/VmRSS/ {print $2}' "/proc/$server/status") kB after"
