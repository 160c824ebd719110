#!/usr/bin/env bash
# The test command: installs what is missing (launch/setup.sh), builds, runs every test.
# Unit tests, integration tests that drive the real `trainer` binary (pack, verify, train,
# resume, mpirun -n 2, ...), and the PyTorch interoperability checks.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup.sh
export TORCH_VENV
cargo build --release --locked 2>/dev/null || cargo build --release
# Two test threads: the tests that start `mpirun -n 2` or train must not starve each other.
cargo test --release -- --test-threads 2
