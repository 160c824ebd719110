#!/usr/bin/env bash
# Input pipeline vs the seed's Python loader, side by side on the same packed 224px JPEGs
# resized to 112. Repetitions are interleaved (python, then trainer with each worker count,
# then again) so load from other processes hits every loader alike; medians and ratios of
# wall-clock img/s and of CPU time per image (robust to a shared machine). Usage:
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
  "$TRAINER" pack "$work/img" --name bench --shards 1 --out "$work/packed" >/dev/null 2>&1
fi
echo "dataset: $IDS identities x $PER images, 224px JPEG ($(du -sh "$work/packed" | cut -f1) packed), resized to 112, batch 50"
echo "cpu: $(nproc) core(s), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

results=$work/results.jsonl
: > "$results"
for rep in $(seq 1 "$REPS"); do
  "$PYTHON" "$here/benches/python_loader.py" "$work"/packed/bench-*.idx --size 112 --batch-size 50 \
    --batches "$PY_BATCHES" --reps 1 --seed "$rep" --json | tail -1 >> "$results"
  for w in $WORKERS; do
    "$TRAINER" bench data --train-sets "$work/packed/bench" --workers "$w" --size 112 --batch-size 50 \
      --batches "$BATCHES" --reps 1 --seed "$rep" --json | tail -1 >> "$results"
  done
  echo "rep $rep/$REPS done" >&2
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$PYTHON" - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def key(r):
    return "python (PIL, 1 process)" if r["bench"] == "python_loader" else f"trainer, {r['workers']} worker(s)"
groups = {}
for r in rows:
    groups.setdefault(key(r), []).append(r)
med = {k: {m: statistics.median(r[m] for r in v) for m in ("images_per_s", "mb_per_s", "cpu_ms_per_image")}
       for k, v in groups.items()}
py = med["python (PIL, 1 process)"]
print(f"\n{'loader':<26} {'img/s':>9} {'MB/s':>7} {'vs py':>7} {'CPU ms/img':>11} {'CPU vs py':>10}   (medians of {len(groups['python (PIL, 1 process)'])} reps)")
for k, m in med.items():
    print(f"{k:<26} {m['images_per_s']:9.1f} {m['mb_per_s']:7.1f} {m['images_per_s'] / py['images_per_s']:6.2f}x "
          f"{m['cpu_ms_per_image']:11.3f} {py['cpu_ms_per_image'] / m['cpu_ms_per_image']:9.2f}x")
PY
