#!/usr/bin/env bash
# The seed's multi-task workflow on a small built-in example: three datasets laid out the
# way such data comes (an identity set, a gender set in 0_male/1_female folders, an age set
# in one folder per age bucket, each with its own held-out part), one tiny backbone with
# the FR, Gender and Age heads, trained with the weighted sum on 2 MPI ranks on CPU, then
# evaluated per task. STEPS (default 600) sets the length. FR's ArcFace loss (about 10)
# dwarfs the Gender and Age cross-entropies (below 2), hence --loss-weights 1,5,5.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAINER_SETUP=demo . launch/setup.sh  # the tests' reference implementations are not needed
cargo build --release
T=target/release/trainer
DATA=${MULTI_DATA:-/tmp/trainer-multitask}
STEPS=${STEPS:-600}
rm -rf "$DATA"

# Identities for FR; held-out identities for its verification.
$T synth --out "$DATA/ids" --identities 64 --per-identity 16 --size 48 --seed 1
$T synth --out "$DATA/ids-valid" --identities 16 --per-identity 8 --size 48 --seed 2
# Gender: many people, few photos each, in the seed's class folders.
$T synth --out "$DATA/gender" --identities 600 --per-identity 2 --size 48 --seed 3 --gender
$T synth --out "$DATA/gender-valid" --identities 150 --per-identity 1 --size 48 --seed 4 --gender
# Age: the same faces regrouped into one folder per age bucket (0..6), from synth's list.tsv.
by_age() {
  local from=$1 to=$2
  tail -n +2 "$from/list.tsv" | while IFS=$'\t' read -r path _label _gender age; do
    mkdir -p "$to/$age" && cp "$from/$path" "$to/$age/${path//\//_}"
  done
}
$T synth --out "$DATA/people" --identities 600 --per-identity 2 --size 48 --seed 5
$T synth --out "$DATA/people-valid" --identities 150 --per-identity 1 --size 48 --seed 6
by_age "$DATA/people" "$DATA/age"
by_age "$DATA/people-valid" "$DATA/age-valid"
rm "$DATA/gender/list.tsv" "$DATA/gender-valid/list.tsv"  # class folders carry the labels

S=$DATA/shards
$T pack "$DATA/ids" --list "$DATA/ids/list.tsv" --name ids --shards 2 --out "$S"
$T pack "$DATA/ids-valid" --list "$DATA/ids-valid/list.tsv" --name ids-valid --shards 1 --out "$S"
for set in gender gender-valid age age-valid; do
  $T pack "$DATA/$set" --name "$set" --shards 2 --out "$S"
done
$T inspect "$S/age" | grep -A3 '^tasks'

RUN=multi-$(date -u +%Y%m%d-%H%M%S)
launch/mpirun.sh 2 train Multi --arch tiny --size 48 --batch-size 32 --lr 0.1 --emb-dim 64 \
  --arc-s 32 --arc-m 0.3 --gender-hidden 64 --age-hidden 64,64 --loss-weights 1,5,5 --plateau-steps 400 --max-steps "$STEPS" --log-every 50 \
  --valid-every "$STEPS" --save-every "$STEPS" --workers 1 --valid-pairs 1000 --run-id "$RUN" \
  --train-sets fr="$S/ids" gender="$S/gender" age="$S/age" \
  --valid-sets fr="$S/ids-valid" gender="$S/gender-valid" age="$S/age-valid"
$T eval "Model/$RUN" --valid-sets fr="$S/ids-valid" gender="$S/gender-valid" age="$S/age-valid"
echo
echo "Run directory: Model/$RUN"
grep '"event":"valid"' "Model/$RUN/log.txt" | tail -n 1
