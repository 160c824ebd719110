#!/usr/bin/env bash
# Installs what building and testing `trainer` needs, idempotently:
# MPICH + libclang (rsmpi's bindgen), cmake + nasm (libjpeg-turbo, built from the
# turbojpeg crate's bundled source with its SIMD code) from Debian, and PyTorch 2.11.0 (the libtorch
# tch 0.24 expects) into a virtualenv cached outside the clone.
# Source it (`. launch/setup.sh`) to get LIBTORCH_USE_PYTORCH and PATH set; sourcing
# leaves the caller's shell options alone.
[[ "${BASH_SOURCE[0]}" == "$0" ]] && set -euo pipefail

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
TRAINER_CACHE=${TRAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainer}
TORCH_VENV=${TORCH_VENV:-$TRAINER_CACHE/torch-$TORCH_VERSION}

need_apt=()
for pkg in mpich libmpich-dev libclang-dev cmake nasm; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -z "${LIBTORCH:-}" ]; then
  if ! "$TORCH_VENV/bin/python" -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "setup: installing torch==$TORCH_VERSION into $TORCH_VENV (one-time, several GB)" >&2
    mkdir -p "$TRAINER_CACHE"
    python3 -m venv "$TORCH_VENV"
    "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy pillow
  fi
  # torchvision only for the interchange test (our safetensors load into its ResNets).
  if ! "$TORCH_VENV/bin/python" -c "import torchvision" 2>/dev/null; then
    "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check --no-deps "torchvision==$TORCHVISION_VERSION"
  fi
  export LIBTORCH_USE_PYTORCH=1
  export PATH="$TORCH_VENV/bin:$PATH"
fi
export TORCH_VENV
