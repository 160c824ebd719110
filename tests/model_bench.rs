//! `trainer bench train` as a user runs it: small model, few steps, parseable output.

mod common;
use common::{mpi, output, text};

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

/// Under mpirun the benchmark all-reduces as training does, each step overlapped or not,
/// and rank 0 ends with one JSON line naming the setting and the two medians.
#[test]
fn mpi_bench_train_reports_step_and_exposed_communication() {
    let mpi = mpi().expect("mpirun");
    for overlap in ["on", "off"] {
        let args = ["bench", "train", "--arch", "tiny", "--size", "32", "--batch-size", "4", "--steps", "3"];
        let res = mpi
            .job(2)
            .env("TRAINER_COMM_DELAY_MS", "1")
            .args(args)
            .args(["--warmup", "1", "--bucket-mb", "0.01", "--overlap", overlap])
            .output()
            .expect("spawn mpirun");
        assert!(res.status.success(), "{}", text(&res));
        let stdout = String::from_utf8_lossy(&res.stdout);
        let lines: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(lines.len(), 1, "one JSON line, from rank 0 only:\n{stdout}");
        let j = &lines[0];
        assert_eq!((j["ranks"].as_u64(), j["overlap"].as_str()), (Some(2), Some(overlap)), "{j}");
        assert_eq!(j["comm_delay_ms"], "1", "{j}");
        let (step, exposed) = (j["step_ms"].as_f64().unwrap(), j["exposed_comm_ms"].as_f64().unwrap());
        assert!(step > 0.0 && (0.0..step).contains(&exposed), "{j}");
    }
}
