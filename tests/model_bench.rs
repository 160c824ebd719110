//! `trainer bench train` as a user runs it: small model, few steps, parseable output.

use std::process::Command;

fn trainer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("run trainer")
}

#[test]
fn bench_train_reports_images_per_second() {
    let out = trainer(&[
        "bench",
        "train",
        "--arch",
        "tiny",
        "--size",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--classes",
        "10",
        "--threads",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rate: f64 = stdout
        .split(", ")
        .find_map(|part| part.strip_suffix(" images/s"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no images/s in {stdout}"));
    assert!(rate > 0.0 && rate.is_finite(), "{stdout}");
    let loss: f64 =
        stdout.split("last loss ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{stdout}");
    assert!(stdout.contains("arch=Tiny size=32 batch=4 classes=10"), "{stdout}");
    assert!(stdout.contains("images per cpu-second") && stdout.contains("median forward"), "{stdout}");
}

#[test]
fn bench_train_rejects_bad_device_and_arch() {
    let out = trainer(&["bench", "train", "--arch", "tiny", "--device", "gpu7"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not auto, cpu, cuda or cuda:N"));
    let out = trainer(&["bench", "train", "--arch", "resnet9"]);
    assert!(!out.status.success());
    let out = trainer(&["bench", "train", "--arch", "tiny", "--steps", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps"));
}
