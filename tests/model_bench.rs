//! `trainer bench train` as a user runs it: small model, few steps, parseable output.

mod common;
use common::output;

#[test]
fn bench_train_reports_images_per_second() {
    let out = output(&[
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
    let out = output(&["bench", "train", "--arch", "tiny", "--device", "gpu7"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not auto, cpu, cuda or cuda:N"));
    let out = output(&["bench", "train", "--arch", "resnet9"]);
    assert!(!out.status.success());
    let out = output(&["bench", "train", "--arch", "tiny", "--steps", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps"));
}
