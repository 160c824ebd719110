//! `trainer` is the data tools plus a hand-over: it must not load libtorch, and the
//! commands that need libtorch must reach `trainer-torch` with their arguments intact.

mod common;
use common::{run_ok, text, torch_binary};
use std::process::Command;

fn needed_libraries(binary: &str) -> String {
    let out = Command::new("readelf").args(["-d", binary]).output().expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf -d {binary}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("(NEEDED)")).collect::<Vec<_>>().join("\n")
}

#[test]
fn trainer_links_no_libtorch_and_trainer_torch_does() {
    let light = needed_libraries(env!("CARGO_BIN_EXE_trainer"));
    assert!(light.contains("libc.so"), "{light}");
    for heavy in ["libtorch", "libc10", "libmpi"] {
        assert!(!light.contains(heavy), "trainer needs {heavy}:\n{light}");
    }
    let torch = needed_libraries(torch_binary().to_str().unwrap());
    assert!(torch.contains("libtorch_cpu"), "{torch}");
}

#[test]
fn train_help_and_bench_train_are_answered_by_trainer_torch() {
    let help = text(&run_ok(&["train", "--help"]));
    assert!(help.contains("--train-sets") && help.contains("Usage: trainer train"), "{help}");
    let bench = text(&run_ok(&["bench", "train", "--help"]));
    assert!(bench.contains("--arch"), "{bench}");
    // The light binary's own commands keep their full help.
    assert!(text(&run_ok(&["pack", "--help"])).contains("--group-by-label"));
}

#[test]
fn missing_trainer_torch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("trainer");
    // `cp`, not `std::fs::copy`: a file this process held open for writing would be
    // inherited by a child another test thread forks meanwhile, and executing the copy
    // while that child still holds it fails with ETXTBSY ("Text file busy").
    let cp = Command::new("cp").arg(env!("CARGO_BIN_EXE_trainer")).arg(&lone).output().expect("cp runs");
    assert!(cp.status.success(), "{}", text(&cp));
    let out = Command::new(&lone).args(["train", "FR", "--train-sets", "x"]).output().unwrap();
    let msg = text(&out);
    assert!(!out.status.success());
    assert!(msg.contains("trainer-torch") && msg.contains(dir.path().to_str().unwrap()), "{msg}");
    // Data commands still work from the lone binary.
    let ok = Command::new(&lone).arg("--version").output().unwrap();
    assert!(ok.status.success() && text(&ok).contains("trainer"));
}
