#!/usr/bin/env bash
# The sharded index build against the one-process build, on one synthetic
# catalog: `genrec index` in one process, then `genrec codebooks`, SHARDS
# `genrec assign --shard I/SHARDS` processes at once and the merge (`genrec
# index --codebooks --assigned`); wall time and peak RSS (GNU time) of each
# stage, and whether the two catalogs are the same bytes (cmp -r). With
# BASE=path/to/older/genrec, that binary's one-process index runs first, in
# the same script, as the baseline. Appends a section to
# benches/results/sharded_build.md (the commands are in it).
#
# Usage: benches/sharded_build.sh [N]          (default 1000000)
# Env:   WORK (default work/sharded), DIM (64), SHARDS (2), BASE (unset),
#        BASE_NAME (what BASE is, for the results file, e.g. a commit)
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/genrec
N=${1:-1000000}
WORK=${WORK:-work/sharded}
DIM=${DIM:-64}
SHARDS=${SHARDS:-2}
[ -x "$B" ] || cargo build --release
D="$WORK/$N"
mkdir -p "$D"
[ -f "$D/synth.safetensors" ] || $B synth --out "$D" --items "$N" --dim "$DIM" --users 1000 --seed 7 --f16 2> "$D/synth.log"
ITEMS="$D/synth.jsonl"
EMB="$D/synth.safetensors"
rm -rf "$D/one" "$D/merged" "$D/base" "$D/build"

# timed NAME CMD...: runs CMD under GNU time, records "NAME wall_s rss_gb"
timed() {
  local name=$1
  shift
  /usr/bin/time -f "%e %M" -o "$D/$name.time" "$@" > "$D/$name.out" 2> "$D/$name.log"
  read -r wall kb < "$D/$name.time"
  printf '%s %s %.2f\n' "$name" "$wall" "$(echo "$kb / 1048576" | bc -l)" | tee -a "$D/times"
}
: > "$D/times"
if [ -n "${BASE:-}" ]; then
  timed base "$BASE" index --items "$ITEMS" --embeddings "$EMB" --out "$D/base"
fi
timed one $B index --items "$ITEMS" --embeddings "$EMB" --out "$D/one"
timed codebooks $B codebooks --embeddings "$EMB" --out "$D/build/codebooks.safetensors"
start=$(date +%s.%N)
pids=()
for ((i = 0; i < SHARDS; i++)); do
  /usr/bin/time -f "%e %M" -o "$D/assign-$i.time" \
    $B assign --codebooks "$D/build/codebooks.safetensors" --embeddings "$EMB" --shard "$i/$SHARDS" \
    --out "$D/build/assign" > "$D/assign-$i.out" 2> "$D/assign-$i.log" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
assign_wall=$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")
assign_rss=$(cat "$D"/assign-*.time | awk '{ if ($2 > m) m = $2 } END { printf "%.2f", m / 1048576 }')
echo "assign $assign_wall $assign_rss" | tee -a "$D/times"
timed merge $B index --items "$ITEMS" --embeddings "$EMB" --codebooks "$D/build/codebooks.safetensors" \
  --assigned "$D/build/assign" --out "$D/merged"
same=no
cmp_out=$(diff -rq "$D/one" "$D/merged" 2>&1 || true)
[ -z "$cmp_out" ] && same=yes
base_same=
if [ -n "${BASE:-}" ]; then
  base_same="; baseline catalog $(diff -rq "$D/base" "$D/one" > /dev/null 2>&1 && echo same || echo different)"
fi

R=benches/results/sharded_build.md
[ -f "$R" ] || printf '# Sharded index build\n\nMade by `benches/sharded_build.sh`. Wall seconds and peak RSS (GB) from GNU time; the assign row is all shards at once (wall) and the largest shard (RSS).\n' > "$R"
{
  echo
  echo "## $N items x $DIM (f16), $SHARDS shards, $(date -u +%Y-%m-%d) ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo " with uncommitted changes to src"))"
  echo
  echo "Command: \`SHARDS=$SHARDS${BASE:+ BASE=OLDER_GENREC} benches/sharded_build.sh $N\`${BASE:+ (OLDER_GENREC: ${BASE_NAME:-an older build}, the \"base\" row)}"
  echo
  echo "| stage | wall s | peak RSS GB |"
  echo "|---|---|---|"
  while read -r name wall rss; do echo "| $name | $wall | $rss |"; done < "$D/times"
  echo
  echo "Sharded catalog byte-identical to the one-process catalog: **$same**$base_same."
  [ -z "$cmp_out" ] || echo "$cmp_out" | head -5 | sed 's/^/    /'
} >> "$R"
tail -20 "$R"
