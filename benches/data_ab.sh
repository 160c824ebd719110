#!/usr/bin/env bash
# `trainer bench data` of two builds side by side (e.g. before and after a loader change) on
# the same packed 224px JPEGs resized to 112, batch 50: repetitions alternate A, B, A, B...
# so other load hits both alike; medians of img/s and CPU ms per image, and the image bytes
# of one batch (a build that does not report them is taken as the former f32 batch,
# N×3×S×S×4). Usage:
#   benches/data_ab.sh OLD_TRAINER [NEW_TRAINER] [WORKDIR]   (env: IDS, PER, REPS, BATCHES, WORKERS)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
A=${1:?usage: benches/data_ab.sh OLD_TRAINER [NEW_TRAINER] [WORKDIR]}
B=${2:-$here/target/release/trainer}
work=${3:-$(mktemp -d)}
IDS=${IDS:-100} PER=${PER:-30} REPS=${REPS:-7} BATCHES=${BATCHES:-30} WORKERS=${WORKERS:-1}
export RUST_LOG=${RUST_LOG:-warn}

if [ ! -f "$work/packed/bench.manifest.json" ]; then
  "$B" synth --out "$work/img" --identities "$IDS" --per-identity "$PER" --size 224 --format jpeg --seed 1
  "$B" pack "$work/img" --name bench --shards 1 --out "$work/packed" >/dev/null 2>&1
fi
echo "dataset: $IDS identities x $PER images, 224px JPEG, resized to 112, batch 50, $WORKERS worker(s)"
echo "A: $A"
echo "B: $B"
echo "cpu: $(nproc) core(s), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
results=$work/ab.jsonl
: > "$results"
for rep in $(seq 1 "$REPS"); do
  for side in A B; do
    bin=$A; [ "$side" = B ] && bin=$B
    line=$("$bin" bench data --train-sets "$work/packed/bench" --workers "$WORKERS" --size 112 --batch-size 50 \
      --batches "$BATCHES" --reps 1 --seed "$rep" --json | tail -1)
    echo "{\"side\":\"$side\",\"report\":$line}" >> "$results"
  done
  echo "rep $rep/$REPS done" >&2
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\n{'build':<6} {'img/s':>8} {'CPU ms/img':>11} {'bytes/batch':>12} {'buffers':>8}   (medians of {len(rows) // 2} reps)")
med = {}
for side in "AB":
    rs = [r["report"] for r in rows if r["side"] == side]
    m = {k: statistics.median(r[k] for r in rs) for k in ("images_per_s", "cpu_ms_per_image")}
    m["batch_bytes"] = rs[0].get("batch_bytes", rs[0]["batch_size"] * 3 * rs[0]["size"] ** 2 * 4)
    m["buffers"] = rs[-1].get("buffers_allocated", "-")
    med[side] = m
    print(f"{side:<6} {m['images_per_s']:8.1f} {m['cpu_ms_per_image']:11.3f} {m['batch_bytes']:12d} {m['buffers']!s:>8}")
a, b = med["A"], med["B"]
print(f"B/A: {b['images_per_s'] / a['images_per_s']:.2f}x img/s, {a['cpu_ms_per_image'] / b['cpu_ms_per_image']:.2f}x less CPU per image, "
      f"{a['batch_bytes'] / b['batch_bytes']:.2f}x fewer bytes per batch")
PY
