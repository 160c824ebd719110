#!/usr/bin/env bash
# dlib's plateau check at N losses: trainer (Rust, O(n) per check) beside the seed's
# Python (refit per suffix, O(n^2)) and a one-pass Python port, on the same losses.
# Usage: benches/plateau.sh [N] [RUNS]   (from the repository root, after launch/setup.sh)
set -euo pipefail
N=${1:-15000}
RUNS=${2:-5}
TRAINER=${TRAINER:-target/release/trainer}
PYTHON=${PYTHON:-${TORCH_VENV:+$TORCH_VENV/bin/}python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$TRAINER" bench plateau --n "$N" --runs "$RUNS" --write-losses "$tmp/losses.txt" | tee "$tmp/rust.txt"
"$PYTHON" benches/seed_plateau.py time "$tmp/losses.txt" --runs "$RUNS" --impl seed | tee "$tmp/seed.txt"
"$PYTHON" benches/seed_plateau.py time "$tmp/losses.txt" --runs "$RUNS" --impl exact | tee "$tmp/exact.txt"

# The same losses must give the same counts everywhere before timings mean anything.
ours=$("$TRAINER" plateau "$tmp/losses.txt" | sed -n 1p)
theirs=$("$PYTHON" benches/seed_plateau.py count "$tmp/losses.txt" --impl seed | sed -n 1p)
echo "counts: trainer [$ours] python seed [$theirs]"
[ "$ours" = "$theirs" ] || { echo "counts differ" >&2; exit 1; }

median() { sed -n 's/.*median_s=\([0-9.e-]*\).*/\1/p' "$1"; }
awk -v r="$(median "$tmp/rust.txt")" -v s="$(median "$tmp/seed.txt")" -v e="$(median "$tmp/exact.txt")" \
  'BEGIN { printf "check at n='"$N"': rust %.3f ms, python seed %.3f s (%.0fx), python one-pass %.3f s (%.0fx)\n", r*1e3, s, s/r, e, e/r }'
