#!/usr/bin/env bash
# N local ranks of trainer: `launch/mpirun.sh 2 train FR ...` runs
# `mpirun -n 2 target/release/trainer train FR ...` under MPICH or OpenMPI.
# Each rank takes GPU cuda:<local rank> (or the CPU) and the shards k = rank (mod N).
# Extra mpirun options go in MPIRUN_ARGS (e.g. MPIRUN_ARGS="-hostfile launch/hostfile").
set -euo pipefail

if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N <trainer subcommand> [args...]   e.g. $0 2 train FR -train_sets shards/faces" >&2
  exit 2
fi
n=$1; shift

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
trainer=${TRAINER_BIN:-$root/target/release/trainer}
if [ ! -x "$trainer" ]; then
  echo "$trainer is missing: build it first (. launch/setup.sh && cargo build --release)" >&2
  exit 1
fi
command -v mpirun >/dev/null || { echo "mpirun not found: run launch/setup.sh (installs MPICH)" >&2; exit 1; }

flags=()
if mpirun --version 2>&1 | grep -q "Open MPI"; then
  # OpenMPI refuses root and more ranks than cores unless told; MPICH needs neither.
  [ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
  flags+=(--oversubscribe)
fi

# shellcheck disable=SC2086  # MPIRUN_ARGS is a list of options
exec mpirun "${flags[@]}" ${MPIRUN_ARGS:-} -n "$n" "$trainer" "$@"
