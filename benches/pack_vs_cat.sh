#!/usr/bin/env bash
# Pack throughput against its floor, `cat` of the same files into one file, and the index
# load rate against the seed's way of reading an idx in Python.
#
#   benches/pack_vs_cat.sh [FILES=2000] [RUNS=5]
#
# Everything runs on a warm page cache (each command runs once untimed first; dropping
# caches needs root and would measure the disk instead). Reports medians of RUNS runs.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-2000}
RUNS=${2:-5}
RECORDS=${INDEX_RECORDS:-1000000}
. launch/setup.sh
set +u
PY=${TORCH_VENV:+$TORCH_VENV/bin/}python3
cargo build --release -q
TRAINER=$PWD/target/release/trainer
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pack_vs_cat.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== generating $FILES JPEGs (224px, 40 identities) in $WORK/src"
"$PY" - "$WORK/src" "$FILES" <<'PYEOF'
import os, sys, random
from PIL import Image, ImageDraw
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(0)
for i in range(n):
    d = os.path.join(root, f"id_{i % 40:03d}")
    os.makedirs(d, exist_ok=True)
    img = Image.new("RGB", (224, 224), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        x, y = rng.randrange(224), rng.randrange(224)
        draw.ellipse((x, y, x + rng.randrange(10, 80), y + rng.randrange(10, 80)), fill=tuple(rng.randrange(256) for _ in range(3)))
    img.save(os.path.join(d, f"img ({i}).jpg"), quality=92)
PYEOF
BYTES=$(du -sb "$WORK/src" | cut -f1)
echo "   $(find "$WORK/src" -type f | wc -l) files, $((BYTES / 1024)) KiB"

# Prints the median wall time in seconds of RUNS runs of "$@" (after one warm-up run).
median() {
  "$@" >/dev/null 2>&1
  local times=()
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.3f", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}

cat_all() { (cd "$WORK/src" && find . -type f -print0 | sort -z | xargs -0 cat > "$WORK/all.bin"); }
cat_all_sync() { cat_all && sync "$WORK/all.bin"; }
pack_keep() { "$TRAINER" pack "$WORK/src" --name bench --shards 8 --out "$WORK/shards" --encoding keep --force "$@"; }
pack_keep_1() { pack_keep --workers 1; }

echo "== pack --encoding keep vs cat (median of $RUNS, warm cache)"
T_CAT=$(median cat_all)
T_CAT_SYNC=$(median cat_all_sync)
T_PACK=$(median pack_keep)
T_PACK_1=$(median pack_keep_1)
"$TRAINER" verify "$WORK/shards/bench" | sed 's/^/   verify: /'
printf '   %-44s %7.3f s\n' "cat of all files into one file" "$T_CAT"
printf '   %-44s %7.3f s\n' "cat + fsync of the result (pack fsyncs)" "$T_CAT_SYNC"
printf '   %-44s %7.3f s  (%.2fx cat, %.2fx cat+fsync)\n' "trainer pack --shards 8 (all cores)" "$T_PACK" "$(echo "$T_PACK / $T_CAT" | bc -l)" "$(echo "$T_PACK / $T_CAT_SYNC" | bc -l)"
printf '   %-44s %7.3f s  (%.2fx cat)\n' "trainer pack --shards 8 --workers 1" "$T_PACK_1" "$(echo "$T_PACK_1 / $T_CAT" | bc -l)"
T_START=$(median "$TRAINER" --version)
printf '   %-44s %7.3f s  (included in the pack times above)\n' "trainer process start-up alone (--version)" "$T_START"
IN_PROC=()
for _ in $(seq "$RUNS"); do
  IN_PROC+=("$(pack_keep 2>/dev/null | sed -n 's/.* in \([0-9.]*\) s (.*/\1/p')")
done
T_IN=$(printf '%s\n' "${IN_PROC[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf '   %-44s %7.3f s  (%.2fx cat, %.2fx cat+fsync)\n' "pack's own time (listing to commit, no start-up)" "$T_IN" "$(echo "$T_IN / $T_CAT" | bc -l)" "$(echo "$T_IN / $T_CAT_SYNC" | bc -l)"

echo "== index load, $RECORDS records (v1 idx, sparse bin)"
"$PY" - "$WORK/big" "$RECORDS" <<'PYEOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(root, exist_ok=True)
with open(os.path.join(root, "big-00000-of-00001.idx"), "w") as f:
    f.write("# trainer-shard v1 columns=path,label,start,end,gender,age,crc32c\n")
    off = 0
    for i in range(n):
        size = 20000 + (i * 7919) % 5000
        f.write(f"identity_{i // 50:06d}/enroll ({i % 50}).jpg\t{i // 50}\t{off}\t{off + size}\t{i % 2}\t{i % 7}\t{(i * 2654435761) % 2**32:08x}\n")
        off += size
with open(os.path.join(root, "big-00000-of-00001.bin"), "wb") as f:
    f.truncate(off)
PYEOF
IDX_MB=$(du -b "$WORK/big/big-00000-of-00001.idx" | awk '{printf "%.1f", $1/1e6}')
"$TRAINER" inspect "$WORK/big/big" >/dev/null
RATES=(); CPU_RATES=()
for _ in $(seq "$RUNS"); do
  LINE=$("$TRAINER" inspect "$WORK/big/big" | grep '^index load')
  RATES+=("$(echo "$LINE" | sed -n 's/.*wall (\([0-9.]*\) M records\/s.*/\1/p')")
  CPU_RATES+=("$(echo "$LINE" | sed -n 's/.*= \([0-9.]*\) M records per CPU-second.*/\1/p')")
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
RATE=$(med "${RATES[@]}")
CPU_RATE=$(med "${CPU_RATES[@]}")
T_INSPECT=$(median "$TRAINER" inspect "$WORK/big/big")
PY_RATE=$("$PY" - "$WORK/big/big-00000-of-00001.idx" "$RUNS" <<'PYEOF'
import sys, time, statistics
path, runs = sys.argv[1], int(sys.argv[2])
def load():  # the seed's way: split each line into lists
    paths, labels, starts, ends = [], [], [], []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            c = line.rstrip("\n").split("\t")
            paths.append(c[0]); labels.append(int(c[1])); starts.append(int(c[2])); ends.append(int(c[3]))
    return len(paths)
load()
wall, cpu = [], []
for _ in range(runs):
    t, c = time.perf_counter(), time.process_time()
    n = load()
    wall.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
print(f"{n / statistics.median(wall) / 1e6:.2f} {n / statistics.median(cpu) / 1e6:.2f}")
PYEOF
)
printf '   %-44s %7s M records/s  (idx %s MB, load average %s)\n' "trainer index load (Dataset::open), wall" "$RATE" "$IDX_MB" "$(cut -d' ' -f1 /proc/loadavg)"
printf '   %-44s %7s M records per CPU-second (all threads)\n' "trainer index load, CPU time" "$CPU_RATE"
printf '   %-44s %7s M records/s wall, %s M records per CPU-second\n' "Python line.split, seed-style (4 columns)" "${PY_RATE% *}" "${PY_RATE#* }"
printf '   %-44s %7.3f s\n' "whole 'trainer inspect' process" "$T_INSPECT"
