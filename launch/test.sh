#!/usr/bin/env bash
# The test command: installs what is missing (launch/setup.sh), builds, runs every test.
# Unit tests of the three packages, integration tests that drive the real `trainer` binary
# (pack, verify, train, resume, mpirun -n 2, ...), and the PyTorch interoperability checks.
# The MPI tests run twice: with the MPICH build (target/release) and again with the
# OpenMPI build (target/openmpi/release), each under its own mpirun.
# The build uses the committed Cargo.lock as it is: a lock that needs changing is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup.sh
# Tests that need mpirun, the PyTorch venv or the reference venv fail instead of skipping.
export CI=${CI:-true}
# Gates: the format (rustfmt.toml) and clippy's lints, before anything runs.
cargo fmt --all --check
cargo build --release --locked --workspace
cargo clippy --release --locked --workspace --all-targets -- -D warnings
# The OpenMPI build: its packages beside MPICH's, its own target directory (launch/setup.sh).
(TRAINER_MPI=openmpi; . launch/setup.sh; cargo build --release --locked --workspace)
# ldd is read whole first: under pipefail, `ldd | grep -q` fails whenever grep quits before ldd
# has written its last line (SIGPIPE), which a loaded machine makes likely.
links() { grep -q "$2" <<<"$(ldd "target/$1/trainer-torch")" || { echo "target/$1/trainer-torch does not link $2" >&2; exit 1; }; }
links release libmpich.so
links openmpi/release libmpi.so.40
# Every command the docs show still parses, and their examples on built-in data run (docs/testing.md).
launch/doc-check.sh
# A one-node Slurm for tests/slurm.rs (sbatch, srun, requeue), stopped when the tests end.
slurm_dir=$(mktemp -d)
trap 'launch/slurm-cluster.sh stop "$slurm_dir"' EXIT
launch/slurm-cluster.sh start "$slurm_dir"
export SLURM_CONF=$slurm_dir/slurm.conf
# Two test threads: the tests that start `mpirun -n 2` or train must not starve each other.
cargo test --release --locked --workspace --no-fail-fast -- --test-threads 2
# Every test that starts mpirun has `mpi` in its name (tests/common/mod.rs checks it).
TRAINER_MPI=openmpi cargo test --release --locked --workspace --no-fail-fast -- --test-threads 2 mpi
