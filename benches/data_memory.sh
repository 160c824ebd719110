#!/usr/bin/env bash
# Reader memory against bin size, and cold-cache reads with and without the loader's
# random-access hints (MADV_RANDOM + a whole batch's records prefetched with MADV_WILLNEED;
# TRAINER_READ_HINTS=0 leaves the kernel's readahead instead). Two datasets of 224px JPEGs,
# the second 10x the first; medians over alternated runs. The cold-cache part drops the page
# cache before every run, which needs root; without it only the memory part runs.
#   benches/data_memory.sh [WORKDIR]   (env: TRAINER, RUNS=3, BATCHES=100, WORKERS=2)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
TRAINER=${TRAINER:-$here/target/release/trainer}
RUNS=${RUNS:-3} BATCHES=${BATCHES:-100} WORKERS=${WORKERS:-2}
export RUST_LOG=${RUST_LOG:-warn}

make_set() { # name identities
  [ -f "$work/$1/packed/$1.manifest.json" ] && return
  "$TRAINER" synth --out "$work/$1/img" --identities "$2" --per-identity 30 --size 224 --format jpeg --seed 1 >/dev/null
  "$TRAINER" pack "$work/$1/img" --name "$1" --shards 4 --out "$work/$1/packed" >/dev/null 2>&1
  rm -rf "$work/$1/img"
}
bench() { # dataset -> "img/s anon_mb file_mb"
  "$TRAINER" bench data --train-sets "$1" --workers "$WORKERS" --batches "$BATCHES" --reps 1 --json | tail -1 |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.1f %.1f" % (r["images_per_s"], r["rss_anon_mb"], r["rss_file_mb"]))'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

make_set small 100
make_set large 1000
echo "== reader memory with the loader running ($WORKERS workers, $BATCHES batches of 50, warm cache)"
for set in small large; do
  read -r rate anon file < <(bench "$work/$set/packed/$set")
  printf '   %-6s bin %6s: %6s MB anonymous, %6s MB file-backed (page cache), %s img/s\n' \
    "$set" "$(du -sh "$work/$set/packed" | cut -f1)" "$anon" "$file" "$rate"
done

if ! { sync && echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
  echo "== cold cache: skipped (dropping the page cache needs root)"; exit 0
fi
echo "== cold cache, large set, page cache dropped before each run (median of $RUNS, alternated)"
declare -A rates files
for _ in $(seq "$RUNS"); do
  for hints in 0 1; do
    sync; echo 3 > /proc/sys/vm/drop_caches
    read -r rate _ file < <(TRAINER_READ_HINTS=$hints bench "$work/large/packed/large")
    rates[$hints]+="$rate "; files[$hints]+="$file "
  done
done
for hints in 0 1; do
  label=$([ "$hints" = 1 ] && echo "random-access hints (default)" || echo "kernel readahead (TRAINER_READ_HINTS=0)")
  printf '   %-42s %6s img/s, %6s MB read into the page cache  (runs: %s)\n' "$label" \
    "$(tr ' ' '\n' <<<"${rates[$hints]}" | grep . | median)" "$(tr ' ' '\n' <<<"${files[$hints]}" | grep . | median)" "${rates[$hints]}"
done
