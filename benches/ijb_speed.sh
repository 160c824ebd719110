#!/usr/bin/env bash
# IJB-C's pooling + pair scoring + TAR table at full size: `trainer bench ijb` against
# eval_ijbc.py's own NumPy/scikit-learn code (benches/ijb_twin.py score) on the same meta files
# and the same random 512-d features. Medians of RUNS runs each; peak memory from /usr/bin/time.
#
#   benches/ijb_speed.sh [WORKDIR]     (RUNS=3, TWIN_RUNS=1 by default)
#
# The meta files are IJB-C's size: 469,375 images, 23,124 templates, 15,658,489 pairs (about
# 300 MB of text, generated once into WORKDIR and reused). The NumPy side needs a few GB.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-${TMPDIR:-/tmp}/ijb-speed}
runs=${RUNS:-3}
twin_runs=${TWIN_RUNS:-1}
trainer=${TRAINER:-$here/../target/release/trainer}
python=${TRAINER_REF_PYTHON:?set TRAINER_REF_PYTHON (launch/setup.sh)}
mkdir -p "$work"
if [ ! -f "$work/feats.npy" ]; then
  echo "generating IJB-C-sized meta files in $work" >&2
  "$python" "$here/ijb_twin.py" big "$work" --features "$work/feats.npy.partial.npy" --seed 1
  mv "$work/feats.npy.partial.npy" "$work/feats.npy"
fi

# One timed run: prints "wall_s peak_kib json".
timed() {
  local log
  log=$(mktemp)
  /usr/bin/time -v "$@" >"$log.out" 2>"$log"
  local wall peak
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$log")
  peak=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  echo "$wall $peak $(grep '^{' "$log.out" | tail -1)"
  rm -f "$log" "$log.out"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

ours=()
for _ in $(seq "$runs"); do
  r=$(timed "$trainer" bench ijb "$work" --features "$work/feats.npy" --save-scores "$work/ours")
  echo "trainer: $r" >&2
  ours+=("$r")
done
theirs=()
for _ in $(seq "$twin_runs"); do
  r=$(timed "$python" "$here/ijb_twin.py" score "$work" --features "$work/feats.npy" --out "$work/twin.npy")
  echo "numpy:   $r" >&2
  theirs+=("$r")
done

ow=$(printf '%s\n' "${ours[@]}" | cut -d' ' -f1 | median)
om=$(printf '%s\n' "${ours[@]}" | cut -d' ' -f2 | sort -n | tail -1)
tw=$(printf '%s\n' "${theirs[@]}" | cut -d' ' -f1 | median)
tm=$(printf '%s\n' "${theirs[@]}" | cut -d' ' -f2 | sort -n | tail -1)
agree=$("$python" -c "import numpy as np, sys; a=np.load(sys.argv[1]); b=np.load(sys.argv[2]); print('%.2e' % np.abs(a-b).max())" "$work/ours/ijbc.npy" "$work/twin.npy")
echo "ijb_speed: trainer median ${ow}s (of $runs), peak ${om} KiB; numpy/sklearn median ${tw}s (of $twin_runs), peak ${tm} KiB"
awk -v a="$tw" -v b="$ow" 'BEGIN {printf "ijb_speed: speed-up %.1fx (wall, including reading the meta files and features)\n", a / b}'
echo "ijb_speed: largest score difference trainer vs numpy: $agree"
