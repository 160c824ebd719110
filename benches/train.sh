#!/usr/bin/env bash
# Training-step throughput, trainer (tch) vs PyTorch (Python), side by side: the same model
# (ResNet minus fc + dropout/linear 512 + L2 norm + ArcFace s=64 m=0.5 + CE, SGD momentum
# 0.9 wd 5e-4) on a fixed synthetic batch, same thread count, runs alternated, medians.
#   benches/train.sh                     # ResNet-50, 112px, batch 16, CPU, 2 threads
#   DEVICE=cuda:0 BATCH=128 AMP=1 benches/train.sh
# Settings: ARCH SIZE BATCH THREADS STEPS WARMUP REPEATS DEVICE CLASSES AMP (1 or fp16, bf16),
# CHANNELS_LAST (1 = NHWC images and weights on both sides),
# TRAINER (binary, default target/release/trainer), PYTHON (default python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-resnet50} SIZE=${SIZE:-112} BATCH=${BATCH:-16} THREADS=${THREADS:-2}
STEPS=${STEPS:-8} WARMUP=${WARMUP:-3} REPEATS=${REPEATS:-3} DEVICE=${DEVICE:-cpu}
CLASSES=${CLASSES:-1000} AMP=${AMP:-0} CHANNELS_LAST=${CHANNELS_LAST:-0}
TRAINER=${TRAINER:-target/release/trainer} PYTHON=${PYTHON:-python3}
common=(--arch "$ARCH" --size "$SIZE" --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP"
        --classes "$CLASSES" --threads "$THREADS" --device "$DEVICE")
case "$AMP" in 1 | fp16) common+=(--amp) ;; bf16) common+=(--amp bf16) ;; esac
[ "$CHANNELS_LAST" = 1 ] && common+=(--channels-last)

rate() { sed -n 's/^median step.*, \([0-9.]*\) images\/s.*/\1/p'; }
best() { sed -n 's/^best step.*, \([0-9.]*\) images\/s.*/\1/p'; }
cpurate() { sed -n 's/.*(\([0-9.]*\) images per cpu-second).*/\1/p'; }
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

rust=() py=() rust_cpu=() py_cpu=() rust_best=() py_best=()
for i in $(seq "$REPEATS"); do
  ro=$("$TRAINER" bench train "${common[@]}")
  po=$("$PYTHON" benches/pytorch_train.py "${common[@]}")
  r=$(rate <<<"$ro") p=$(rate <<<"$po") rc=$(cpurate <<<"$ro") pc=$(cpurate <<<"$po")
  rb=$(best <<<"$ro") pb=$(best <<<"$po")
  echo "run $i: trainer $r images/s (best step $rb, $rc per cpu-second), pytorch $p images/s (best step $pb, $pc per cpu-second)"
  rust+=("$r") py+=("$p") rust_cpu+=("$rc") py_cpu+=("$pc") rust_best+=("$rb") py_best+=("$pb")
done
mr=$(printf '%s\n' "${rust[@]}" | median)
mp=$(printf '%s\n' "${py[@]}" | median)
mrc=$(printf '%s\n' "${rust_cpu[@]}" | median)
mpc=$(printf '%s\n' "${py_cpu[@]}" | median)
echo "$ARCH ${SIZE}px batch $BATCH on $DEVICE, $THREADS threads, amp=$AMP channels_last=$CHANNELS_LAST: trainer $mr images/s, pytorch $mp images/s, ratio $(awk -v a="$mr" -v b="$mp" 'BEGIN {printf "%.3f", a / b}') (median of $REPEATS alternated runs, $STEPS timed steps each)"
mrb=$(printf '%s\n' "${rust_best[@]}" | sort -g | tail -1)
mpb=$(printf '%s\n' "${py_best[@]}" | sort -g | tail -1)
echo "best single step of all runs: trainer $mrb images/s, pytorch $mpb images/s, ratio $(awk -v a="$mrb" -v b="$mpb" 'BEGIN {printf "%.3f", a / b}')"
echo "per cpu-second: trainer $mrc images, pytorch $mpc images, ratio $(awk -v a="$mrc" -v b="$mpc" 'BEGIN {printf "%.3f", a / b}')"
