#!/usr/bin/env bash
# `trainer pack` of an MXNet RecordIO set (insightface layout, 112px JPEGs, written by
# benches/make_rec.py) against `cat` of the same .rec into one file, alternated run by run.
#
#   benches/recordio_pack.sh [MIB=1024] [RUNS=5] [SHARDS=16]
#
# Warm page cache (one untimed run of each first; dropping caches needs root and would
# measure the disk). pack fsyncs its shards, so `cat` is timed with and without an fsync of
# its output. Reports medians and the ratio pack / cat.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
RUNS=${2:-5}
SHARDS=${3:-16}
. launch/setup.sh
set +u
PY=${TORCH_VENV:+$TORCH_VENV/bin/}python3
cargo build --release -q -p trainer
TRAINER=$PWD/target/release/trainer
WORK=$(mktemp -d "${TMPDIR:-/tmp}/recordio_pack.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== writing a ${MIB} MiB RecordIO set in $WORK/rec"
"$PY" benches/make_rec.py "$WORK/rec" "$MIB" | sed 's/^/   /'
REC=$WORK/rec/train.rec
BYTES=$(stat -c %s "$REC")

cat_rec() { cat "$REC" > "$WORK/cat.bin"; }
cat_rec_sync() { cat "$REC" > "$WORK/cat.bin" && sync "$WORK/cat.bin"; }
pack_rec() { "$TRAINER" pack "$REC" --name bench --shards "$SHARDS" --out "$WORK/shards"; }
pack_rec_1() { pack_rec --workers 1; }
pack_scan() { mv "$WORK/rec/train.idx" "$WORK/idx.bak"; pack_rec; local rc=$?; mv "$WORK/idx.bak" "$WORK/rec/train.idx"; return $rc; }
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {printf "%.3f", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

NAMES=(cat_rec cat_rec_sync pack_rec pack_rec_1 pack_scan)
for f in "${NAMES[@]}"; do "$f" >/dev/null 2>&1; done   # warm-up
declare -A T
for r in $(seq "$RUNS"); do
  for f in "${NAMES[@]}"; do T[$f]+="$(seconds "$f") "; done
done
"$TRAINER" verify "$WORK/shards/bench" | sed 's/^/   verify: /'
med() { printf '%s\n' ${T[$1]} | median; }
C=$(med cat_rec); CS=$(med cat_rec_sync)
row() {  # label, function
  local t; t=$(med "$2")
  printf '   %-46s %7.3f s %7.0f MB/s  %.2fx cat  %.2fx cat+fsync\n' "$1" "$t" "$(echo "$BYTES / 1000000 / $t" | bc -l)" "$(echo "$t / $C" | bc -l)" "$(echo "$t / $CS" | bc -l)"
}
echo "== medians of $RUNS alternated runs, $((BYTES / 1000000)) MB .rec, warm cache"
row "cat train.rec > one file" cat_rec
row "cat + fsync of the result (pack fsyncs)" cat_rec_sync
row "trainer pack --shards $SHARDS (all cores, .idx)" pack_rec
row "trainer pack --shards $SHARDS --workers 1" pack_rec_1
row "trainer pack --shards $SHARDS, no .idx (scan)" pack_scan
