#!/usr/bin/env bash
# All-reduce overlapped with backward, on one machine: a 2-rank `bench train` with
# --overlap on and off, without and with a simulated slower network
# (TRAINER_COMM_DELAY_MS=10: each gradient bucket's all-reduce takes 10 ms longer, a
# sleep). Alternated, REPEATS times; medians of each run's median step and of its
# exposed communication (the wait after the backward ended). The figure to watch: the
# step time the delay adds with on, as a share of what it adds with off.
#   benches/overlap.sh            # resnet18, 64 px, batch 16, 12 steps, 8 MiB buckets, 3 repeats
# Settings: ARCH SIZE BATCH STEPS BUCKET_MB DELAY REPEATS
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-resnet18} SIZE=${SIZE:-64} BATCH=${BATCH:-16} STEPS=${STEPS:-12} BUCKET_MB=${BUCKET_MB:-8}
DELAY=${DELAY:-10} REPEATS=${REPEATS:-3}

one() { # $1 = on|off, $2 = delay ms: prints "step_ms exposed_comm_ms"
  TRAINER_COMM_DELAY_MS=$2 RUST_LOG=warn launch/mpirun.sh 2 bench train --arch "$ARCH" --size "$SIZE" \
    --batch-size "$BATCH" --steps "$STEPS" --bucket-mb "$BUCKET_MB" --overlap "$1" |
    grep '"exposed_comm_ms"' | python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print(j["step_ms"], j["exposed_comm_ms"])'
}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

declare -A step exposed
for i in $(seq "$REPEATS"); do
  for d in 0 "$DELAY"; do
    for o in on off; do
      read -r s e < <(one "$o" "$d")
      echo "run $i: overlap $o, delay $d ms: step $s ms, exposed comm $e ms"
      step[$o$d]+="$s "; exposed[$o$d]+="$e "
    done
  done
done
m() { printf '%s\n' $1 | median; }
for o in on off; do
  for d in 0 "$DELAY"; do
    echo "median overlap $o, delay $d ms: step $(m "${step[$o$d]}") ms, exposed comm $(m "${exposed[$o$d]}") ms"
  done
done
python3 - "$(m "${step[on0]}")" "$(m "${step[on$DELAY]}")" "$(m "${step[off0]}")" "$(m "${step[off$DELAY]}")" <<'PY'
import sys
on0, on_d, off0, off_d = map(float, sys.argv[1:])
print(f"delay adds {on_d - on0:.1f} ms with overlap on, {off_d - off0:.1f} ms off: "
      f"{100 * (on_d - on0) / (off_d - off0):.0f}% (goal: at most 40%)")
PY
