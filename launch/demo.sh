#!/usr/bin/env bash
# The main job on a small built-in example: set up, build, synthesise face-like
# identities, pack them into 4 shards, train a tiny FR model on 2 MPI ranks for a minute
# on CPU, then evaluate it on held-out identities. TRAINER_MPI=openmpi runs it with the
# OpenMPI build (see launch/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# Only what the demo needs: the tests' reference implementations stay out (launch/test.sh).
TRAINER_SETUP=demo . launch/setup.sh
cargo build --release
T=${CARGO_TARGET_DIR:-target}/release/trainer
DATA=${DEMO_DATA:-/tmp/trainer-demo}
rm -rf "$DATA"

$T synth --out "$DATA/train-img" --identities 64 --per-identity 24 --size 64 --seed 1
$T synth --out "$DATA/valid-img" --identities 16 --per-identity 12 --size 64 --seed 2
$T pack "$DATA/train-img" --list "$DATA/train-img/list.tsv" --name demo --shards 4 --out "$DATA/shards"
$T pack "$DATA/valid-img" --list "$DATA/valid-img/list.tsv" --name demo-valid --shards 1 --out "$DATA/shards"
$T inspect "$DATA/shards/demo"
$T verify "$DATA/shards/demo" --decode

RUN=demo-$(date -u +%Y%m%d-%H%M%S)
launch/mpirun.sh 2 train FR --config training/demo-tiny.toml \
  --train-sets "$DATA/shards/demo" --valid-sets "$DATA/shards/demo-valid" --run-id "$RUN"
$T eval "Model/$RUN" --valid-sets "$DATA/shards/demo-valid"
echo
echo "Run directory: Model/$RUN (log.txt, loss_debug/, checkpoints/, best/)"
tail -n 3 "Model/$RUN/log.txt"
