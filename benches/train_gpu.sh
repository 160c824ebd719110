#!/usr/bin/env bash
# The training benchmarks on the GPU machine (no cargo there): carry target/release/trainer and trainer-torch,
# then `bash benches/train_gpu.sh`. Uses that machine's PyTorch in /opt/torch/.venv for both
# the baseline and libtorch. ResNet-50 112px: batch 128 fp32 and AMP on the GPU, then the
# CPU comparison (batch 16, 2 threads) on its idle cores. Log: $OUT/train_gpu.log.
set -uo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.11/site-packages/torch/lib
PY=/opt/torch/.venv/bin/python
T=target/release/trainer
exec > >(tee "${OUT:-.}/train_gpu.log") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv
lscpu | grep -E "Model name|^CPU\(s\)"
$PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" || echo "no torchvision (bench uses its copy of the layout)"
$T bench train --arch tiny --size 32 --batch-size 4 --steps 2 --warmup 1 --device cuda:0 || exit 1
echo "== GPU fp32"
TRAINER=$T PYTHON=$PY DEVICE=cuda:0 BATCH=128 THREADS=2 STEPS=20 WARMUP=5 REPEATS=3 timeout 150 bash benches/train.sh
echo "== GPU amp"
TRAINER=$T PYTHON=$PY DEVICE=cuda:0 BATCH=128 THREADS=2 STEPS=20 WARMUP=5 REPEATS=3 AMP=1 timeout 150 bash benches/train.sh
echo "== CPU 2 threads"
TRAINER=$T PYTHON=$PY DEVICE=cpu BATCH=16 THREADS=2 STEPS=8 WARMUP=3 REPEATS=3 timeout 200 bash benches/train.sh
echo "== CPU 2 threads, trainer channels-last"
timeout 60 $T bench train --arch resnet50 --size 112 --batch-size 16 --steps 8 --warmup 3 --threads 2 --channels-last --device cpu
