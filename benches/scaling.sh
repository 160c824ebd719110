#!/usr/bin/env bash
# Data-parallel scaling on this machine's CPUs: the same per-rank work (one core, one
# libtorch thread, batch B) run as 1 rank and as 2 ranks under mpirun; efficiency =
# images/s at 2 ranks / (2 × images/s at 1 rank), for 2 ranks with the all-reduce
# overlapped with backward (--overlap on) and after it (off). Repeated, alternating, medians.
#   benches/scaling.sh              # resnet18, 64px, batch 32, 30 steps, 3 repeats
# Settings: ARCH SIZE BATCH STEPS REPEATS TRAINER
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-resnet18} SIZE=${SIZE:-64} BATCH=${BATCH:-32} STEPS=${STEPS:-30} REPEATS=${REPEATS:-3}
T=${TRAINER:-target/release/trainer}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

$T synth --out "$work/img" --identities 64 --per-identity 20 --size "$SIZE" --seed 1 2>/dev/null
$T pack "$work/img" --list "$work/img/list.tsv" --name s --shards 2 --out "$work/shards" >/dev/null

run() { # $1 = ranks, $2 = overlap on|off
  local id="r$1-$2-$RANDOM"
  local args=(train FR --arch "$ARCH" --size "$SIZE" --batch-size "$BATCH" --train-sets "$work/shards/s"
    --out "$work/Model" --run-id "$id" --threads 1 --workers 1 --max-steps "$STEPS" --log-every 5
    --save-every 1000000 --emb-dim 128 --overlap "$2")
  if [ "$1" = 1 ]; then RUST_LOG=warn $T "${args[@]}"; else RUST_LOG=warn launch/mpirun.sh "$1" "${args[@]}"; fi
  # The first log window includes start-up; average the rest.
  grep '"images_per_s"' "$work/Model/$id/log.txt" | tail -n +2 |
    sed 's/.*"images_per_s":\([0-9.e+-]*\).*/\1/' | awk '{s+=$1; n++} END {printf "%.1f\n", s/n}'
}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

one=() on=() off=()
for i in $(seq "$REPEATS"); do
  a=$(run 1 off); b=$(run 2 on); c=$(run 2 off)
  echo "run $i: 1 rank $a images/s, 2 ranks $b images/s overlapped, $c images/s not"
  one+=("$a"); on+=("$b"); off+=("$c")
done
m1=$(printf '%s\n' "${one[@]}" | median)
eff() { awk -v a="$m1" -v b="$1" 'BEGIN {printf "%.0f%%", 100*b/(2*a)}'; }
m_on=$(printf '%s\n' "${on[@]}" | median); m_off=$(printf '%s\n' "${off[@]}" | median)
echo "median: 1 rank $m1 images/s; 2 ranks $m_on images/s with --overlap on (efficiency $(eff "$m_on")), $m_off images/s off ($(eff "$m_off"))"
