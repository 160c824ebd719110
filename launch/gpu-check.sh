#!/usr/bin/env bash
# The GPU checks, as one short call on a machine with a GPU but no cargo or MPI:
#   cargo build --release -p trainer -p trainer-torch --no-default-features --features trainer-torch/nccl   (here)
#   carry target/release/trainer and trainer-torch, run `bash launch/gpu-check.sh` there.
# Measures: ResNet-50 112px training images/s beside PyTorch on the same GPU in fp32,
# --amp (fp16), --amp bf16 and --amp with channels-last on both sides; --amp for
# arcface_torch's vit_t, mbf and iresnet200; a 1-rank
# NCCL all-reduce (correctness and bandwidth, flat buffer vs buckets); bench train through
# a 1-rank NCCL communicator with the all-reduce overlapped (side stream) or not; the ArcFace head
# replicated and under Partial FC through a 1-rank NCCL communicator; a short FR run on
# the GPU (end to end with the data pipeline, as a ratio of the fp32 bare step), then again
# with --amp --partial-fc --channels-last (images/s and host_syncs per log interval);
# and the CPU trainer-vs-PyTorch comparison on that machine's idle cores.
# Uses that machine's PyTorch (TORCH_PY, default /opt/torch/.venv). Log: $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
TORCH_PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
export LD_LIBRARY_PATH=$("$TORCH_PY" -c "import torch, os; print(os.path.dirname(torch.__file__) + '/lib')")
T=${TRAINER:-target/release/trainer}
exec > >(tee "${OUT:-.}/gpu_check.log") 2>&1
export RUST_LOG=warn

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$TORCH_PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
$T bench train --arch tiny --size 32 --batch-size 4 --steps 2 --warmup 1 --device cuda:0 || { echo "trainer cannot use the GPU"; exit 1; }

echo "== ResNet-50 112px batch 128, GPU fp32 (trainer vs PyTorch)"
bare_log=$(mktemp)
TRAINER=$T PYTHON=$TORCH_PY DEVICE=cuda:0 BATCH=128 THREADS=4 STEPS=15 WARMUP=5 REPEATS=2 timeout 110 bash benches/train.sh |
  tee "$bare_log"
bare=$(sed -n 's/.*: trainer \([0-9.]*\) images\/s, pytorch.*/\1/p' "$bare_log")
echo "== same with --amp"
TRAINER=$T PYTHON=$TORCH_PY DEVICE=cuda:0 BATCH=128 THREADS=4 STEPS=15 WARMUP=5 REPEATS=2 AMP=1 timeout 110 bash benches/train.sh

echo "== same with --amp bf16 (no loss scale)"
TRAINER=$T PYTHON=$TORCH_PY DEVICE=cuda:0 BATCH=128 THREADS=4 STEPS=15 WARMUP=5 REPEATS=2 AMP=bf16 timeout 110 bash benches/train.sh
echo "== same with --amp --channels-last on both sides"
TRAINER=$T PYTHON=$TORCH_PY DEVICE=cuda:0 BATCH=128 THREADS=4 STEPS=15 WARMUP=5 REPEATS=2 AMP=1 CHANNELS_LAST=1 \
  timeout 110 bash benches/train.sh

echo "== arcface_torch's backbones, 112px batch 128, GPU --amp (trainer vs PyTorch; docs/model-zoo.md)"
for arch in vit_t mbf iresnet200; do
  ARCH=$arch TRAINER=$T PYTHON=$TORCH_PY DEVICE=cuda:0 BATCH=128 THREADS=4 STEPS=10 WARMUP=3 REPEATS=2 AMP=1 \
    timeout 80 bash benches/train.sh | tail -3
done

echo "== NCCL, 1 rank"
timeout 40 $T bench allreduce --device cuda --check
timeout 40 $T bench allreduce --device cuda --iters 20
echo "== all-reduce overlapped with backward through a 1-rank NCCL communicator (side stream), ResNet-50 --amp batch 128: on vs off"
for o in on off on off; do
  timeout 40 $T bench train --arch resnet50 --size 112 --batch-size 128 --steps 10 --warmup 3 --device cuda:0 --amp \
    --nccl --overlap $o | tail -1
done
echo "== ArcFace head, 1-rank NCCL communicator: replicated vs Partial FC (NCCL all-gather and all-reduces)"
timeout 90 $T bench head --device cuda --classes 100000,1000000 --emb-dim 512 --batch-size 128

echo "== short FR run on the GPU"
work=$(mktemp -d)
timeout 40 $T synth --out "$work/img" --identities 200 --per-identity 20 --size 112 --seed 1
timeout 40 $T synth --out "$work/vimg" --identities 50 --per-identity 10 --size 112 --seed 2
$T pack "$work/img" --list "$work/img/list.tsv" --name fr --shards 4 --out "$work/shards" | tail -1
$T pack "$work/vimg" --list "$work/vimg/list.tsv" --name frv --shards 1 --out "$work/shards" | tail -1
RUST_LOG=info timeout 130 $T train FR --arch resnet50 --size 112 --batch-size 128 --lr 0.1 --device cuda:0 \
  --train-sets "$work/shards/fr" --valid-sets "$work/shards/frv" --workers 12 --max-steps 200 --log-every 25 \
  --valid-every 200 --save-every 200 --out "$work/Model" --run-id gpu 2>&1 | grep -E "step|verification|error"
grep -E '"images_per_s"|"valid"' "$work/Model/gpu/log.txt" | tail -4
e2e=$(grep -o '"images_per_s":[0-9.]*' "$work/Model/gpu/log.txt" | tail -n +2 | cut -d: -f2 | sort -g |
  awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]}')
echo "end to end (median progress line after the first) ${e2e:-?} images/s vs bare step ${bare:-?} images/s:" \
  "$(awk -v a="${e2e:-0}" -v b="${bare:-0}" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "?"}') (goal >= 0.95)"
echo "== the same run with --amp --partial-fc --channels-last (100 steps)"
RUST_LOG=info timeout 100 $T train FR --arch resnet50 --size 112 --batch-size 128 --lr 0.1 --device cuda:0 \
  --amp --partial-fc --channels-last --train-sets "$work/shards/fr" --workers 12 --max-steps 100 --log-every 25 \
  --save-every 100 --out "$work/Model" --run-id gpu-amp 2>&1 | grep -E "step|error"
grep -oE '"host_syncs":[0-9]+|"images_per_s":[0-9.]+|"loss_scale":[0-9.e+]+' "$work/Model/gpu-amp/log.txt" | paste -sd' '

echo "== ResNet-50 112px batch 16, CPU 2 threads (trainer vs PyTorch, idle cores)"
TRAINER=$T PYTHON=$TORCH_PY DEVICE=cpu BATCH=16 THREADS=2 STEPS=6 WARMUP=2 REPEATS=2 timeout 90 bash benches/train.sh
