//! Partial FC under `mpirun -n 2/3` on CPU: equal to the replicated head on the same global
//! batches, checkpoints that hold the whole centre matrix, resume on another rank count,
//! and a rank killed while the others wait in the all-gather.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

fn mpi_train(np: usize, args: &[&str]) -> Option<Output> {
    let out = mpi()?.job(np).args(args).output().expect("spawn mpirun");
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
        "--arch",
        "tiny-nobn",
        "--size",
        "32",
        "--train-sets",
        s(train),
        "--out",
        s(out),
        "--threads",
        "1",
        "--workers",
        "1",
        "--emb-dim",
        "16",
        "--arc-s",
        "16",
        "--arc-m",
        "0.2",
        "--no-shuffle",
        "--no-augment",
        "--fr-dropout",
        "0",
        "--stripe-records",
        "--lr",
        "0.05",
        "--log-every",
        "1",
    ]
}

type Tensors = BTreeMap<String, Vec<f32>>;

fn tensors(path: &Path) -> Tensors {
    safetensors(path)
        .into_iter()
        .filter(|(_, dtype, _)| dtype == "F32")
        .map(|(n, _, bytes)| (n, f32s(&bytes)))
        .collect()
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
    let (want, have) =
        (checkpoint(out, reference, steps, "model.safetensors"), checkpoint(out, run, steps, "model.safetensors"));
    assert_eq!(want.keys().collect::<Vec<_>>(), have.keys().collect::<Vec<_>>(), "{run}: tensor names");
    assert_eq!(have["arcface.weight"].len(), 61 * 16, "{run}: the whole matrix");
    for (name, w) in &want {
        let d = max_diff(w, &have[name]);
        assert!(d < 1e-4, "{run}, {name}: max |diff| {d}");
    }
    let (want, have) = (
        checkpoint(out, reference, steps, "optimizer.safetensors"),
        checkpoint(out, run, steps, "optimizer.safetensors"),
    );
    let d = max_diff(&want["arcface.0"], &have["arcface.0"]);
    assert!(d < 1e-4, "{run}, centres' momentum: max |diff| {d}");
}

/// With --sample-rate 1, 2 and 3 ranks of Partial FC equal one rank with the whole matrix
/// at the same global batch: losses within 1e-5 relative for 10 steps, every weight (the
/// whole centre matrix in the checkpoint included) and the centres' momentum within 1e-4.
#[test]
fn mpi_two_and_three_ranks_equal_the_replicated_head() {
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
    assert_eq!(
        (line["allgather_bytes"].as_u64(), line["head_bytes_per_rank"].as_u64()),
        (Some(0), Some(61 * 16 * 4 * 3))
    );
}

/// Gradient accumulation: 2 ranks × 3 rows × 2 batches per step equal one rank × 6 × 2.
#[test]
fn mpi_accumulation_matches_the_replicated_head() {
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
fn mpi_a_two_rank_checkpoint_resumes_on_three_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = vec![
        "train",
        "FR",
        "--batch-size",
        "4",
        "--run-id",
        "r",
        "--partial-fc",
        "--max-steps",
        "4",
        "--save-every",
        "4",
    ];
    a.extend(common_args(&train, &out));
    let Some(res) = mpi_train(2, &a) else { return };
    assert!(res.status.success(), "{}", text(&res));
    let run = out.join("r");
    let resume =
        ["train", "--resume", s(&run), "--max-steps", "5", "--lr", "1e-30", "--wd-fr", "0", "--sample-rate", "0.05"];
    let res = mpi_train(3, &resume).unwrap();
    assert!(res.status.success(), "{}", text(&res));
    let (before, after) =
        (checkpoint(&out, "r", 4, "model.safetensors"), checkpoint(&out, "r", 5, "model.safetensors"));
    assert_eq!(max_diff(&before["arcface.weight"], &after["arcface.weight"]), 0.0, "centres changed at lr 1e-30");
    let (before, after) =
        (checkpoint(&out, "r", 4, "optimizer.safetensors"), checkpoint(&out, "r", 5, "optimizer.safetensors"));
    let (m0, m1) = (&before["arcface.0"], &after["arcface.0"]);
    assert_eq!(m1.len(), 61 * 16);
    let decayed = (0..61)
        .filter(|&c| {
            (0..16).all(|k| (m1[c * 16 + k] - 0.9 * m0[c * 16 + k]).abs() <= 1e-7 * m0[c * 16 + k].abs().max(1e-3))
        })
        .count();
    // Scored per rank: at most the 12 labels of the global batch, plus ceil(0.05 × 21) = 1.
    assert!(decayed >= 61 - 15, "only {decayed} of 61 centres kept their momentum ×0.9: re-slicing lost them");
    assert!(decayed < 61, "no centre was scored");
    let log = std::fs::read_to_string(run.join("rank2.log")).unwrap();
    assert!(log.contains("identities 41..61 of 61"), "{log}");
}

/// kill -9 of one rank while the others wait for it in Partial FC's all-gather ends the
/// whole job within the collective timeout.
#[test]
fn mpi_a_rank_killed_during_the_all_gather_ends_the_job() {
    let Some(mpi) = mpi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = vec![
        "train",
        "FR",
        "--batch-size",
        "4",
        "--run-id",
        "dies",
        "--partial-fc",
        "--max-steps",
        "1000000",
        "--save-every",
        "1000000",
        "--collective-timeout",
        "10",
    ];
    a.extend(common_args(&train, &out));
    // Rank 0 keeps stepping; each step starts with the all-gather of the embeddings, where
    // it then waits for the dead rank.
    let (res, took) = kill_rank_one(&mpi, &a, &out.join("dies"));
    let failed = !res.status.success();
    assert!(failed);
    assert!(took < Duration::from_secs(10 + 15), "took {took:?} with a 10 s collective timeout");
}

/// `--amp` (its loss scaling on CPU, overflowing or not) and a NaN rollback keep 2-rank
/// Partial FC equal to one rank with the whole matrix: the ranks skip the same steps, and
/// a rollback restores every rank's slice of the centres and their momentum.
#[test]
fn mpi_amp_and_rollback_under_partial_fc_match_the_replicated_head() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = common_args(&train, &out);
    a.extend(["--max-steps", "10", "--save-every", "5"]);
    let variants: [(&str, &[&str]); 3] = [
        ("amp", &["--amp"]),
        ("overflow", &["--amp", "--amp-init-scale", "1e38"]),
        ("nan", &["--inject-nan-at", "7", "--inject-nan-times", "1"]),
    ];
    for (name, extra) in variants {
        let one = format!("{name}-one");
        let mut args = vec!["train", "FR", "--batch-size", "12", "--run-id", &one];
        args.extend(&a);
        args.extend(extra);
        run_ok(&args);
        let pfc = format!("{name}-pfc");
        let mut args = vec!["train", "FR", "--batch-size", "6", "--run-id", &pfc, "--partial-fc"];
        args.extend(&a);
        args.extend(extra);
        let Some(res) = mpi_train(2, &args) else { return };
        assert!(res.status.success(), "{name}: {}", text(&res));
        assert_same_run(&out, &one, &pfc, 10);
        let log = log_lines(&out.join(&pfc));
        match name {
            "overflow" => {
                let last = log.iter().rev().find(|e| e.get("amp_skipped_steps").is_some()).expect("an amp step line");
                assert!(last["amp_skipped_steps"].as_u64().unwrap() >= 1, "{last}");
            }
            "nan" => assert!(
                log.iter().any(|e| e["event"] == "rollback" && e["to_step"] == 5),
                "no rollback to step 5: {log:?}"
            ),
            _ => {}
        }
    }
}

/// `--fp16-allreduce` under Partial FC halves the backbone's all-reduce and leaves the
/// centres (never all-reduced) in f32: the run stays within fp16 rounding of the f32 one.
#[test]
fn mpi_fp16_allreduce_under_partial_fc() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    for (run, extra) in [("f32", None), ("f16", Some("--fp16-allreduce"))] {
        let mut args = vec![
            "train",
            "FR",
            "--batch-size",
            "6",
            "--run-id",
            run,
            "--partial-fc",
            "--max-steps",
            "10",
            "--save-every",
            "10",
        ];
        args.extend(common_args(&train, &out));
        args.extend(extra);
        let Some(res) = mpi_train(2, &args) else { return };
        assert!(res.status.success(), "{run}: {}", text(&res));
    }
    let bytes = |run: &str| {
        log_lines(&out.join(run)).iter().find_map(|e| e.get("allreduce_bytes")?.as_u64()).expect("allreduce_bytes")
    };
    // The softmax's all-reduces stay f32: the gathered rows' gradient (12 × 16 floats) and
    // the per-row maximum, sum and target logit (3 × 12).
    let softmax = (12 * 16 + 3 * 12) * 4;
    assert_eq!((bytes("f16") - softmax) * 2, bytes("f32") - softmax);
    let (want, got) = (losses(&out.join("f32"), "FR"), losses(&out.join("f16"), "FR"));
    for (step, (x, y)) in want.iter().zip(&got).enumerate() {
        assert!((x - y).abs() <= 1e-2 * x.abs(), "step {}: loss {y} with fp16 all-reduce vs {x}", step + 1);
    }
    let (want, have) =
        (checkpoint(&out, "f32", 10, "model.safetensors"), checkpoint(&out, "f16", 10, "model.safetensors"));
    for (name, w) in &want {
        let d = max_diff(w, &have[name]);
        assert!(d < 1e-2, "{name}: max |diff| {d} between the fp16 and f32 all-reduce");
    }
    let rounded = want.iter().any(|(name, w)| max_diff(w, &have[name]) > 0.0);
    assert!(rounded, "--fp16-allreduce changed nothing: was it applied?");
}

/// `--init` from a replicated run loads its whole centre matrix as each rank's slice: at a
/// learning rate of 1e-30 the first checkpoint holds exactly the initial centres.
#[test]
fn mpi_init_gives_each_rank_its_slice_of_the_centres() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let mut one = vec!["train", "FR", "--batch-size", "12", "--run-id", "src", "--max-steps", "3", "--save-every", "3"];
    one.extend(common_args(&train, &out));
    run_ok(&one);
    let init = out.join("src/checkpoints/step-000000003");
    let mut pfc = vec![
        "train",
        "FR",
        "--batch-size",
        "6",
        "--run-id",
        "dst",
        "--partial-fc",
        "--max-steps",
        "1",
        "--save-every",
        "1",
    ];
    pfc.extend(common_args(&train, &out));
    let lr = pfc.iter().position(|a| *a == "--lr").unwrap() + 1;
    pfc[lr] = "1e-30";
    pfc.extend(["--init", s(&init), "--wd-fr", "0", "--wd-backbone", "0"]);
    let Some(res) = mpi_train(2, &pfc) else { return };
    assert!(res.status.success(), "{}", text(&res));
    assert!(!text(&res).contains("arcface.weight (shape"), "the centres were skipped: {}", text(&res));
    let (src, dst) = (checkpoint(&out, "src", 3, "model.safetensors"), checkpoint(&out, "dst", 1, "model.safetensors"));
    for (name, w) in &src {
        assert_eq!(max_diff(w, &dst[name]), 0.0, "{name} did not load from --init");
    }
}

/// With `--sample-rate 0.2` (drawn on the device, keyed by seed, step and rank) a 2-rank
/// run stopped at step 4 and resumed to 8 ends bit for bit where the straight run does:
/// the resumed steps draw the same classes.
#[test]
fn mpi_sampled_centres_are_the_same_after_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    let base = ["train", "FR", "--batch-size", "4", "--partial-fc", "--sample-rate", "0.2", "--save-every", "4"];
    for (run, steps) in [("straight", "8"), ("resumed", "4")] {
        let mut a = base.to_vec();
        a.extend(["--run-id", run, "--max-steps", steps]);
        a.extend(common_args(&train, &out));
        let Some(res) = mpi_train(2, &a) else { return };
        assert!(res.status.success(), "{run}: {}", text(&res));
    }
    let res = mpi_train(2, &["train", "--resume", s(&out.join("resumed")), "--max-steps", "8"]).unwrap();
    assert!(res.status.success(), "{}", text(&res));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (a, b) = (checkpoint(&out, "straight", 8, file), checkpoint(&out, "resumed", 8, file));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{file}");
        for (name, w) in &a {
            assert!(w == &b[name], "{file}: {name} differs after the resume");
        }
    }
}
