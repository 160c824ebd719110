#!/usr/bin/env bash
# The test command: installs what is missing (launch/setup.sh), builds, runs every test.
# Unit tests of the three packages, integration tests that drive the real `trainer` binary
# (pack, verify, train, resume, mpirun -n 2, ...), and the PyTorch interoperability checks.
# The build uses the committed Cargo.lock as it is: a lock that needs changing is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup.sh
# Tests that need mpirun, the PyTorch venv or the reference venv fail instead of skipping.
export CI=${CI:-true}
cargo build --release --locked --workspace
# Two test threads: the tests that start `mpirun -n 2` or train must not starve each other.
cargo test --release --locked --workspace --no-fail-fast -- --test-threads 2
