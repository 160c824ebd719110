#!/usr/bin/env bash
# Input pipeline vs the seed's Python loader, side by side on the same packed 224px JPEGs
# resized to 112: medians of several repetitions, and the ratio. Usage:
#   benches/data.sh [WORKDIR]   (env: TRAINER, PYTHON, IDS, PER, REPS, BATCHES, PY_BATCHES, WORKERS)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
TRAINER=${TRAINER:-$here/target/release/trainer}
PYTHON=${PYTHON:-${TORCH_VENV:+$TORCH_VENV/bin/python}}
PYTHON=${PYTHON:-python3}
IDS=${IDS:-100} PER=${PER:-30} REPS=${REPS:-5} BATCHES=${BATCHES:-30} PY_BATCHES=${PY_BATCHES:-$BATCHES}
WORKERS=${WORKERS:-"1 2"}
export RUST_LOG=${RUST_LOG:-warn}

if [ ! -f "$work/packed/bench.manifest.json" ]; then
  "$TRAINER" synth --out "$work/img" --identities "$IDS" --per-identity "$PER" --size 224 --format jpeg --seed 1
  "$TRAINER" pack "$work/img" --name bench --shards 1 --out "$work/packed" >/dev/null
fi
echo "dataset: $IDS identities x $PER images, 224px JPEG ($(du -sh "$work/packed" | cut -f1) packed), resized to 112"

py=$("$PYTHON" "$here/benches/python_loader.py" "$work"/packed/bench-*.idx --size 112 --batch-size 50 \
      --batches "$PY_BATCHES" --reps "$REPS" --json | tee /dev/stderr | tail -1)
py_rate=$("$PYTHON" -c "import json,sys; print(json.loads(sys.argv[1])['images_per_s'])" "$py")

printf '\n%-28s %12s %10s %8s\n' "loader" "img/s" "MB/s" "vs py"
printf '%-28s %12.1f %10.1f %8s\n' "python (PIL, 1 process)" "$py_rate" \
  "$("$PYTHON" -c "import json,sys; print(json.loads(sys.argv[1])['mb_per_s'])" "$py")" "1.00x"
for w in $WORKERS; do
  out=$("$TRAINER" bench data --train-sets "$work/packed/bench" --workers "$w" --size 112 --batch-size 50 \
        --batches "$BATCHES" --reps "$REPS" --json | tail -1)
  "$PYTHON" - "$out" "$py_rate" "$w" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); py = float(sys.argv[2])
print(f"{'trainer, ' + sys.argv[3] + ' worker(s)':<28} {r['images_per_s']:12.1f} {r['mb_per_s']:10.1f} {r['images_per_s'] / py:7.2f}x")
PY
done
