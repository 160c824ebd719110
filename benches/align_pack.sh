#!/usr/bin/env bash
# What `pack --align` costs per image: `trainer pack --list L --size 112` (centre crop +
# resize + JPEG encode) against the same with `--align` (full decode, 5-point similarity
# transform, bilinear warp, JPEG encode), one worker, alternated run by run, medians.
#
#   benches/align_pack.sh [IMAGES=2000] [RUNS=5]
#
# Inputs: 224px synthetic faces (`trainer synth`); landmarks: the ArcFace template scaled
# to 224 px with a per-image rotation and shift, so every warp is a real rotation.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
RUNS=${2:-5}
. launch/setup.sh
set +u
PY=${TORCH_VENV:+$TORCH_VENV/bin/}python3
cargo build --release -q -p trainer
TRAINER=$PWD/target/release/trainer
WORK=$(mktemp -d "${TMPDIR:-/tmp}/align_pack.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

IDS=$(( (N + 19) / 20 ))
"$TRAINER" synth --out "$WORK/src" --identities "$IDS" --per-identity 20 --size 224 --seed 1 >/dev/null
"$PY" - "$WORK/src" <<'PYEOF'
import math, os, random, sys
root = sys.argv[1]
template = [(38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)]
rng = random.Random(0)
rows = ["path\tlabel\t" + "\t".join(f"x{i}\ty{i}" for i in range(1, 6))]
for label, cls in enumerate(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))):
    for f in sorted(os.listdir(os.path.join(root, cls))):
        a, dx, dy = math.radians(rng.uniform(-20, 20)), rng.uniform(-8, 8), rng.uniform(-8, 8)
        pts = []
        for x, y in template:
            x, y = 2 * x - 112, 2 * y - 112
            pts += [112 + dx + x * math.cos(a) - y * math.sin(a), 112 + dy + x * math.sin(a) + y * math.cos(a)]
        rows.append(f"{cls}/{f}\t{label}\t" + "\t".join(f"{v:.2f}" for v in pts))
open(os.path.join(root, "landmarks.tsv"), "w").write("\n".join(rows) + "\n")
PYEOF
COUNT=$(($(wc -l < "$WORK/src/landmarks.tsv") - 1))
echo "== $COUNT 224px JPEGs, pack to 112 px, --workers 1, medians of $RUNS alternated runs"

resize() { "$TRAINER" pack "$WORK/src" --list "$WORK/src/landmarks.tsv" --name r --out "$WORK/o" --size 112 --workers 1; }
align() { "$TRAINER" pack "$WORK/src" --list "$WORK/src/landmarks.tsv" --name a --out "$WORK/o" --size 112 --workers 1 --align; }
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {printf "%.3f", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
resize >/dev/null 2>&1; align >/dev/null 2>&1
TR=""; TA=""
for _ in $(seq "$RUNS"); do TR+="$(seconds resize) "; TA+="$(seconds align) "; done
R=$(printf '%s\n' $TR | median); A=$(printf '%s\n' $TA | median)
"$TRAINER" verify "$WORK/o/a" --decode | sed 's/^/   verify: /'
printf '   %-40s %7.3f s  %6.3f ms/img\n' "pack --size 112 (crop + resize)" "$R" "$(echo "$R * 1000 / $COUNT" | bc -l)"
printf '   %-40s %7.3f s  %6.3f ms/img\n' "pack --size 112 --align" "$A" "$(echo "$A * 1000 / $COUNT" | bc -l)"
printf '   %-40s %7.3f ms/img  (%.2fx the resize pack)\n' "cost of --align" "$(echo "($A - $R) * 1000 / $COUNT" | bc -l)" "$(echo "$A / $R" | bc -l)"
