//! The rollback safeguard over a long run, past the first save points where it judges
//! the trend: a loss that levels off after a fast fall is not a divergence. (dlib's rule
//! read it as "rising", reloaded the step-600 state eight times, shrank the lr to 1e-7 and
//! stopped the run at step 601 of 4000 with `MinLr`.)

mod common;
use common::*;
use std::path::Path;

/// The set the failing run used: `synth --identities 16 --per-identity 8 --size 48 --seed 4`,
/// packed into 6 shards.
fn the_issues_set(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("img");
    run_ok(&["synth", "--out", s(&img), "--identities", "16", "--per-identity", "8", "--size", "48", "--seed", "4"]);
    let shards = dir.join("shards");
    let list = img.join("list.tsv");
    run_ok(&["pack", s(&img), "--list", s(&list), "--name", "train", "--shards", "6", "--out", s(&shards)]);
    shards.join("train")
}

#[test]
fn mpi_a_loss_that_levels_off_after_a_fast_fall_trains_to_max_steps_with_the_safeguard_on() {
    let Some(mpi) = mpi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = the_issues_set(dir.path());
    let out = dir.path().join("Model");
    let args = ["train", "FR", "--arch", "tiny", "--size", "48", "--batch-size", "8", "--max-steps", "1200"];
    let rest = ["--save-every", "100", "--log-every", "50", "--threads", "1", "--workers", "1", "--run-id", "long"];
    let job = mpi.job(2).args(args).args(rest).args(["--train-sets", s(&train), "--out", s(&out)]).output();
    let job = job.expect("spawn mpirun");
    assert!(job.status.success(), "{}", text(&job));
    let log = log_lines(&out.join("long"));
    let end = log.iter().find(|e| e["event"] == "end").expect("an end event");
    assert_eq!((end["reason"].as_str(), end["step"].as_u64()), (Some("MaxSteps"), Some(1200)), "{end}");
    let progress = log.iter().filter(|e| e.get("event").is_none());
    let lrs: Vec<f64> = progress.filter_map(|e| e["lr"].as_f64()).collect();
    assert!(lrs.len() >= 20, "progress lines with an lr: {lrs:?}");
    assert!(lrs.iter().all(|&lr| lr >= 1e-3), "the lr fell below 1e-3: {lrs:?}");
    // Whatever the safeguard did, each of its events says what it compared.
    for e in log.iter().filter(|e| e["event"] == "rollback" && e["reason"] == "rising loss") {
        let t = &e["rise_test"];
        assert!(t["rise"].as_f64() > t["rise_threshold"].as_f64() && t["p_increasing"].as_f64().is_some(), "{e}");
    }
}
