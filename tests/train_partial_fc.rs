//! Partial FC under `mpirun -n 2/3` on CPU: equal to the replicated head on the same global
//! batches, checkpoints that hold the whole centre matrix, resume on another rank count,
//! and a rank killed while the others wait in the all-gather.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn mpi_train(np: usize, args: &[&str]) -> Option<Output> {
    let mpirun = mpirun()?;
    let out = Command::new(mpirun).arg("-n").arg(np.to_string()).arg(env!("CARGO_BIN_EXE_trainer")).args(args).env("RUST_LOG", "warn").output().expect("spawn mpirun");
    Some(out)
}

/// 61 identities: slices of 31/30 over 2 ranks and 21/20/20 over 3.
fn data(dir: &Path) -> std::path::PathBuf {
    packed_synth(dir, "train", 61, 4, 1, 1)
}

/// Settings under which every rank count sees the same global batches: no BatchNorm, no
/// shuffle, no augmentation, no dropout, records striped over ranks.
fn common_args<'a>(train: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "--arch", "tiny-nobn", "--size", "32", "--train-sets", s(train), "--out", s(out), "--threads", "1", "--workers", "1", "--emb-dim", "16",
        "--arc-s", "16", "--arc-m", "0.2", "--no-shuffle", "--no-augment", "--fr-dropout", "0", "--stripe-records", "--lr", "0.05", "--log-every", "1",
    ]
}

type Tensors = BTreeMap<String, Vec<f32>>;

fn tensors(path: &Path) -> Tensors {
    safetensors(path).into_iter().filter(|(_, dtype, _)| dtype == "F32").map(|(n, _, bytes)| (n, f32s(&bytes))).collect()
}

fn checkpoint(out: &Path, run: &str, step: u64, file: &str) -> Tensors {
    tensors(&out.join(run).join(format!("checkpoints/step-{step:09}/{file}")))
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

/// `run` matches the replicated run `reference`: every step's loss within 1e-5 relative,
/// and at the last step every weight (the whole centre matrix included) and the centres'
/// momentum within 1e-4.
fn assert_same_run(out: &Path, reference: &str, run: &str, steps: u64) {
    let want = losses(&out.join(reference), "FR");
    let got = losses(&out.join(run), "FR");
    assert_eq!((want.len(), got.len()), (steps as usize, steps as usize), "{run}");
    for (step, (x, y)) in want.iter().zip(&got).enumerate() {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{run}, step {}: loss {y} vs {x}", step + 1);
    }
    let (want, have) = (checkpoint(out, reference, steps, "model.safetensors"), checkpoint(out, run, steps, "model.safetensors"));
    assert_eq!(want.keys().collect::<Vec<_>>(), have.keys().collect::<Vec<_>>(), "{run}: tensor names");
    assert_eq!(have["arcface.weight"].len(), 61 * 16, "{run}: the whole matrix");
    for (name, w) in &want {
        let d = max_diff(w, &have[name]);
        assert!(d < 1e-4, "{run}, {name}: max |diff| {d}");
    }
    let (want, have) = (checkpoint(out, reference, steps, "optimizer.safetensors"), checkpoint(out, run, steps, "optimizer.safetensors"));
    let d = max_diff(&want["arcface.0"], &have["arcface.0"]);
    assert!(d < 1e-4, "{run}, centres' momentum: max |diff| {d}");
}

/// With --sample-rate 1, 2 and 3 ranks of Partial FC equal one rank with the whole matrix
/// at the same global batch: losses within 1e-5 relative for 10 steps, every weight (the
/// whole centre matrix in the checkpoint included) and the centres' momentum within 1e-4.
#[test]
fn two_and_three_ranks_equal_the_replicated_head() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = common_args(&train, &out);
    a.extend(["--max-steps", "10", "--save-every", "10"]);
    let mut one = vec!["train", "FR", "--batch-size", "12", "--run-id", "one"];
    one.extend(&a);
    run_ok(&one);
    for (np, batch) in [(2, "6"), (3, "4")] {
        let run = format!("pfc{np}");
        let mut pfc = vec!["train", "FR", "--batch-size", batch, "--run-id", &run, "--partial-fc"];
        pfc.extend(&a);
        let Some(res) = mpi_train(np, &pfc) else { return };
        assert!(res.status.success(), "{np} ranks: {}", text(&res));
        assert_same_run(&out, "one", &run, 10);
        let log = log_lines(&out.join(&run));
        let line = log.iter().find(|e| e.get("allgather_bytes").is_some()).expect("a progress line");
        // 12 gathered rows of 16 floats and one label each.
        assert_eq!(line["allgather_bytes"], 12 * (16 * 4 + 8), "{np} ranks");
        let head = if np == 2 { 31 } else { 21 } * 16 * 4 * 3;
        assert_eq!(line["head_bytes_per_rank"], head, "rank 0's slice: weight, gradient, momentum");
    }
    let replicated = log_lines(&out.join("one"));
    let line = replicated.iter().find(|e| e.get("allgather_bytes").is_some()).unwrap();
    assert_eq!((line["allgather_bytes"].as_u64(), line["head_bytes_per_rank"].as_u64()), (Some(0), Some(61 * 16 * 4 * 3)));
}

/// Gradient accumulation: 2 ranks × 3 rows × 2 batches per step equal one rank × 6 × 2.
#[test]
fn accumulation_matches_the_replicated_head() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = common_args(&train, &out);
    a.extend(["--max-steps", "4", "--save-every", "4", "--accum", "2"]);
    let mut one = vec!["train", "FR", "--batch-size", "6", "--run-id", "one"];
    one.extend(&a);
    run_ok(&one);
    let mut two = vec!["train", "FR", "--batch-size", "3", "--run-id", "two", "--partial-fc"];
    two.extend(&a);
    let Some(res) = mpi_train(2, &two) else { return };
    assert!(res.status.success(), "{}", text(&res));
    assert_same_run(&out, "one", "two", 4);
}

/// A 2-rank checkpoint resumed on 3 ranks continues from the same centres and momentum.
/// The resumed step runs at lr 1e-30 (far below the centres' f32 resolution; 0 is no learning
/// rate) without weight decay, with a sample rate that leaves most
/// centres unscored: every centre must be exactly the saved one, and every unscored
/// centre's momentum exactly 0.9 × the saved momentum.
#[test]
fn a_two_rank_checkpoint_resumes_on_three_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = vec!["train", "FR", "--batch-size", "4", "--run-id", "r", "--partial-fc", "--max-steps", "4", "--save-every", "4"];
    a.extend(common_args(&train, &out));
    let Some(res) = mpi_train(2, &a) else { return };
    assert!(res.status.success(), "{}", text(&res));
    let run = out.join("r");
    let resume = ["train", "--resume", s(&run), "--max-steps", "5", "--lr", "1e-30", "--wd-fr", "0", "--sample-rate", "0.05"];
    let res = mpi_train(3, &resume).unwrap();
    assert!(res.status.success(), "{}", text(&res));
    let (before, after) = (checkpoint(&out, "r", 4, "model.safetensors"), checkpoint(&out, "r", 5, "model.safetensors"));
    assert_eq!(max_diff(&before["arcface.weight"], &after["arcface.weight"]), 0.0, "centres changed at lr 1e-30");
    let (before, after) = (checkpoint(&out, "r", 4, "optimizer.safetensors"), checkpoint(&out, "r", 5, "optimizer.safetensors"));
    let (m0, m1) = (&before["arcface.0"], &after["arcface.0"]);
    assert_eq!(m1.len(), 61 * 16);
    let decayed = (0..61).filter(|&c| (0..16).all(|k| (m1[c * 16 + k] - 0.9 * m0[c * 16 + k]).abs() <= 1e-7 * m0[c * 16 + k].abs().max(1e-3))).count();
    // Scored per rank: at most the 12 labels of the global batch, plus ceil(0.05 × 21) = 1.
    assert!(decayed >= 61 - 15, "only {decayed} of 61 centres kept their momentum ×0.9: re-slicing lost them");
    assert!(decayed < 61, "no centre was scored");
    let log = std::fs::read_to_string(run.join("rank2.log")).unwrap();
    assert!(log.contains("identities 41..61 of 61"), "{log}");
}

/// kill -9 of one rank while the others wait for it in Partial FC's all-gather ends the
/// whole job within the collective timeout.
#[test]
fn a_rank_killed_during_the_all_gather_ends_the_job() {
    let Some(mpirun) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = vec!["train", "FR", "--batch-size", "4", "--run-id", "dies", "--partial-fc", "--max-steps", "1000000", "--save-every", "1000000", "--collective-timeout", "10"];
    a.extend(common_args(&train, &out));
    // Rank 0 keeps stepping; each step starts with the all-gather of the embeddings, where
    // it then waits for the dead rank.
    let (res, took) = kill_rank_one(&mpirun, &a, &out.join("dies"));
    let failed = !res.status.success();
    assert!(failed);
    assert!(took < Duration::from_secs(10 + 15), "took {took:?} with a 10 s collective timeout");
}
