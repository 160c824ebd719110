#!/usr/bin/env bash
# Peak memory of training steps, trainer (tch) vs PyTorch (Python), on the CPU: the same
# model and step as benches/train.sh, each run once under GNU time, which reports the peak
# resident set size (weights, optimiser state, activations kept for backward, allocator).
#   ARCH=vit_b BATCH=32 benches/train_memory.sh
# Settings: ARCH SIZE BATCH THREADS STEPS CLASSES, TRAINER, PYTHON (as benches/train.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-vit_b} SIZE=${SIZE:-112} BATCH=${BATCH:-32} THREADS=${THREADS:-2}
STEPS=${STEPS:-2} CLASSES=${CLASSES:-1000}
TRAINER=${TRAINER:-target/release/trainer} PYTHON=${PYTHON:-python3}
common=(--arch "$ARCH" --size "$SIZE" --batch-size "$BATCH" --steps "$STEPS" --warmup 0
        --classes "$CLASSES" --threads "$THREADS" --device cpu)
peak() {
  local out
  out=$(/usr/bin/time -f 'exit %x peak %M' "$@" 2>&1 >/dev/null | tail -1)
  [[ $out == "exit 0 peak "* ]] || { echo "failed: $* ($out)" >&2; exit 1; }
  echo "${out##* }"
}
r=$(peak "$TRAINER" bench train "${common[@]}")
p=$(peak "$PYTHON" benches/pytorch_train.py "${common[@]}")
echo "$ARCH ${SIZE}px batch $BATCH, $STEPS steps on the CPU: peak RSS trainer $((r / 1024)) MiB, pytorch $((p / 1024)) MiB"
