#!/usr/bin/env bash
# N local ranks of trainer: `launch/mpirun.sh 2 train FR ...` runs
# `mpirun -n 2 target/release/trainer train FR ...` with the launcher of the MPI the
# build links. Each rank takes GPU cuda:<local rank> (or the CPU) and the shards k = rank (mod N).
#   TRAINER_MPI=openmpi   run the OpenMPI build (target/openmpi/release) instead of MPICH's
#   TRAINER_BIN=path      run another trainer binary (its trainer-torch must sit beside it)
#   MPIRUN_ARGS="..."     extra mpirun options (e.g. MPIRUN_ARGS="-hostfile launch/hostfile")
# The launcher is read from the binary, not from Debian's `mpirun` alternative, which
# follows whichever MPI was installed last: an MPICH build under OpenMPI's mpirun (or the
# reverse) would start N single-rank jobs.
set -euo pipefail

if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N <trainer subcommand> [args...]   e.g. $0 2 train FR -train_sets shards/faces" >&2
  exit 2
fi
n=$1; shift

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${TRAINER_MPI:-mpich}" in
  mpich) default_bin=$root/target/release/trainer ;;
  openmpi) default_bin=$root/target/openmpi/release/trainer ;;
  *) echo "TRAINER_MPI=$TRAINER_MPI: expected mpich or openmpi" >&2; exit 2 ;;
esac
trainer=${TRAINER_BIN:-$default_bin}
torch=$(dirname "$trainer")/trainer-torch
if [ ! -x "$trainer" ] || [ ! -x "$torch" ]; then
  echo "$trainer or $torch is missing: build it first (TRAINER_MPI=${TRAINER_MPI:-mpich} . launch/setup.sh && cargo build --release)" >&2
  exit 1
fi

# The MPI library trainer-torch loads decides the launcher.
linked=$(ldd "$torch" 2>/dev/null | grep -oE 'lib(mpich|mpi)\.so[.0-9]*' | head -n1 || true)
case "$linked" in
  libmpich.so*) mpi=mpich ;;
  libmpi.so*) mpi=openmpi ;;
  *) echo "$torch links no MPI library ldd can find (${linked:-none}); was it built with the mpi feature?" >&2; exit 1 ;;
esac
launcher=$(command -v "mpirun.$mpi" || true)
if [ -z "$launcher" ] && command -v mpirun >/dev/null; then
  # Not Debian's naming: a plain mpirun will do if it belongs to the same MPI.
  says_openmpi=$(mpirun --version 2>&1 | grep -c "Open MPI" || true)
  if { [ "$mpi" = openmpi ] && [ "$says_openmpi" -gt 0 ]; } || { [ "$mpi" = mpich ] && [ "$says_openmpi" -eq 0 ]; }; then
    launcher=$(command -v mpirun)
  fi
fi
if [ -z "$launcher" ]; then
  echo "$torch links $linked ($mpi) but no $mpi launcher was found (mpirun.$mpi): TRAINER_MPI=$mpi . launch/setup.sh installs it" >&2
  exit 1
fi

flags=()
if [ "$mpi" = openmpi ]; then
  # OpenMPI refuses root and more ranks than cores unless told; MPICH needs neither.
  [ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
  flags+=(--oversubscribe)
fi

# shellcheck disable=SC2086  # MPIRUN_ARGS is a list of options
exec "$launcher" "${flags[@]}" ${MPIRUN_ARGS:-} -n "$n" "$trainer" "$@"
