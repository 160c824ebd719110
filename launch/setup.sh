#!/usr/bin/env bash
# Installs what building and testing `trainer` needs, idempotently:
# MPICH or OpenMPI + libclang (rsmpi's bindgen), cmake + nasm (libjpeg-turbo, built from the
# turbojpeg crate's bundled source with its SIMD code) from Debian, PyTorch 2.11.0 (the
# libtorch tch 0.24 expects) into a virtualenv cached outside the clone, and a second
# virtualenv of reference implementations the tests cross-check against (the C++ dlib's
# plateau functions, MXNet's RecordIO, TensorBoard's event reader, OpenCV and
# scikit-image's alignment, NumPy and scikit-learn for insightface's metric).
# Source it (`. launch/setup.sh`) to get LIBTORCH_USE_PYTORCH, PATH, TORCH_VENV and
# TRAINER_REF_PYTHON set; sourcing leaves the caller's shell options alone.
#
# TRAINER_SETUP says what for: `all` (the default; launch/test.sh) installs everything above;
# `demo` (launch/demo.sh) only what building and training need: the Debian packages and
# PyTorch, without torchvision and the reference virtualenv, which only tests use.
#
# TRAINER_MPI picks the MPI the build links: mpich (the default) or openmpi. Each has its
# own target directory (target/release, target/openmpi/release) because rsmpi's bindings
# are generated at build time from whichever mpicc it finds, and cargo does not notice a
# change of MPI. MPICC names that MPI's own wrapper, so the build never follows Debian's
# `mpicc` alternative, which installing the other MPI switches.
[[ "${BASH_SOURCE[0]}" == "$0" ]] && set -euo pipefail

TRAINER_MPI=${TRAINER_MPI:-mpich}
TRAINER_SETUP=${TRAINER_SETUP:-all}
case "$TRAINER_SETUP" in
  all | demo) ;;
  *) echo "setup: TRAINER_SETUP=$TRAINER_SETUP: expected all or demo" >&2; return 2 2>/dev/null || exit 2 ;;
esac
case "$TRAINER_MPI" in
  mpich) mpi_apt=(mpich libmpich-dev) ;;
  openmpi) mpi_apt=(openmpi-bin libopenmpi-dev) ;;
  *) echo "setup: TRAINER_MPI=$TRAINER_MPI: expected mpich or openmpi" >&2; return 2 2>/dev/null || exit 2 ;;
esac

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
TRAINER_CACHE=${TRAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainer}
TORCH_VENV=${TORCH_VENV:-$TRAINER_CACHE/torch-$TORCH_VERSION}
# Pinned together: mxnet 1.9.1 needs numpy < 1.24, and the rest are the newest that agree.
REF_PACKAGES=("mxnet==1.9.1" "numpy==1.23.5" "dlib-bin==20.0.1.post1" "tensorboard==2.21.0"
  "opencv-python-headless==4.11.0.86" "scikit-image==0.24.0" "scikit-learn==1.5.2" "scipy==1.13.1")
REF_VENV=${REF_VENV:-$TRAINER_CACHE/refs-1}

need_apt=()
for pkg in "${mpi_apt[@]}" libclang-dev cmake nasm bsdutils; do
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
  if [ "$TRAINER_SETUP" = all ] && ! "$TORCH_VENV/bin/python" -c "import torchvision" 2>/dev/null; then
    "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check --no-deps "torchvision==$TORCHVISION_VERSION"
  fi
  # onnx and onnxruntime only for the test of launch/export_onnx.py (tests/eval_pairsets.rs).
  if [ "$TRAINER_SETUP" = all ] && ! "$TORCH_VENV/bin/python" -c "import onnx, onnxruntime" 2>/dev/null; then
    "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check "onnx==1.23.2" "onnxruntime==1.32.0"
  fi
  export LIBTORCH_USE_PYTORCH=1
  export PATH="$TORCH_VENV/bin:$PATH"
fi
if [ "$TRAINER_SETUP" = all ] && ! "$REF_VENV/bin/python" -c "import mxnet, dlib, cv2, skimage, sklearn, scipy, tensorboard" 2>/dev/null; then
  echo "setup: installing the reference implementations into $REF_VENV (one-time)" >&2
  mkdir -p "$TRAINER_CACHE"
  python3 -m venv "$REF_VENV"
  "$REF_VENV/bin/pip" install -q --disable-pip-version-check "${REF_PACKAGES[@]}"
fi
export TORCH_VENV REF_VENV TRAINER_MPI
command -v "mpicc.$TRAINER_MPI" >/dev/null && export MPICC="mpicc.$TRAINER_MPI"
TRAINER_OPENMPI_TARGET="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/openmpi"

# A new OpenMPI target directory starts from the MPICH build's compiled dependencies, which
# link no MPI (libtorch's C++ wrapper, libjpeg-turbo, ...): only rsmpi and trainer-torch
# are then compiled again, under a minute instead of 8 on 2 cores. Cargo rebuilds
# anything the copy leaves stale, so the worst case is a full build.
trainer_seed_openmpi_target() {
  local from="${TRAINER_OPENMPI_TARGET%/openmpi}/release" to="$TRAINER_OPENMPI_TARGET/release"
  [ -d "$to" ] || [ ! -d "$from/.fingerprint" ] && return 0
  echo "setup: seeding $to with the MPICH build's dependencies" >&2
  mkdir -p "$to/deps"
  cp -a "$from/.fingerprint" "$from/build" "$to/"
  find "$from/deps" -maxdepth 1 -type f \( -name '*.rlib' -o -name '*.rmeta' -o -name '*.so' -o -name '*.d' \) \
    -exec cp -a -t "$to/deps/" {} +
  # What links MPI is compiled again, against OpenMPI.
  rm -rf "$to"/.fingerprint/{mpi-,trainer-torch-}* "$to"/build/{mpi-sys,trainer-torch}-* \
    "$to"/deps/{libmpi-,libmpi_sys-,mpi-,mpi_sys-,libtrainer_torch-,trainer_torch-}*
}

if [ "$TRAINER_MPI" = openmpi ]; then
  trainer_seed_openmpi_target
  export CARGO_TARGET_DIR="$TRAINER_OPENMPI_TARGET"
elif [ "${CARGO_TARGET_DIR:-}" = "$TRAINER_OPENMPI_TARGET" ]; then
  unset CARGO_TARGET_DIR
fi
export TRAINER_REF_PYTHON="$REF_VENV/bin/python"
