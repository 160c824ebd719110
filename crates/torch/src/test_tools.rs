//! What the unit tests that run PyTorch share: where its python is, and the project's one
//! rule for a missing tool (as `tests/common`'s `missing`): the test fails, unless
//! `TRAINER_ALLOW_SKIP=1` is set outside CI, where it says so and passes.

use std::path::PathBuf;

/// `$TRAINER_TORCH_PYTHON`, else launch/setup.sh's `$TORCH_VENV/bin/python`.
pub fn torch_python() -> PathBuf {
    let venv = || PathBuf::from(std::env::var_os("TORCH_VENV").unwrap_or_default()).join("bin/python");
    std::env::var_os("TRAINER_TORCH_PYTHON").map_or_else(venv, PathBuf::from)
}

/// Fails the test for a missing `what`, or, where skips are allowed, prints a notice.
pub fn missing(what: &str) {
    let on = |var: &str| std::env::var(var).is_ok_and(|v| v == "1" || v == "true");
    assert!(
        on("TRAINER_ALLOW_SKIP") && !on("CI"),
        "{what}: a missing tool fails the test (launch/setup.sh installs it; TRAINER_ALLOW_SKIP=1 skips outside CI)"
    );
    eprintln!("NOTICE: SKIPPED: {what} (TRAINER_ALLOW_SKIP=1)");
}
