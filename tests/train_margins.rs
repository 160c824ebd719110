//! The adaptive margins (`--margin adaface|magface|curricularface`) in real runs: the same
//! losses and weights, running statistics included, on one rank with the whole batch, on 2
//! ranks with the replicated head and on 2 ranks with Partial FC; their statistics resumed
//! from a checkpoint exactly; and the kind kept on resume.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// 61 identities, as tests/train_partial_fc.rs.
fn data(dir: &Path) -> std::path::PathBuf {
    packed_synth(dir, "train", 61, 4, 1, 1)
}

/// Settings under which every rank count sees the same global batches (no BatchNorm, no
/// shuffle, no augmentation, no dropout, records striped over ranks), AdaFace's statistics
/// moving fast enough to see.
fn common_args<'a>(train: &'a Path, out: &'a Path, kind: &'a str) -> Vec<&'a str> {
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
        "--margin",
        kind,
        "--adaface-alpha",
        "0.5",
        "--magface-norms",
        "0.5,8",
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

fn checkpoint(out: &Path, run: &str, step: u64) -> Tensors {
    let file = out.join(run).join(format!("checkpoints/step-{step:09}/model.safetensors"));
    safetensors(&file).into_iter().filter(|(_, d, _)| d == "F32").map(|(n, _, b)| (n, f32s(&b))).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

/// `run`'s losses within 1e-5 relative of `reference`'s and, at the last step, every
/// tensor (the margin's statistics and the whole centre matrix included) within 1e-4.
fn assert_same_run(out: &Path, reference: &str, run: &str, steps: u64) {
    let (want, got) = (losses(&out.join(reference), "FR"), losses(&out.join(run), "FR"));
    assert_eq!((want.len(), got.len()), (steps as usize, steps as usize), "{run}");
    for (step, (x, y)) in want.iter().zip(&got).enumerate() {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{run}, step {}: loss {y} vs {x}", step + 1);
    }
    let (want, have) = (checkpoint(out, reference, steps), checkpoint(out, run, steps));
    assert_eq!(want.keys().collect::<Vec<_>>(), have.keys().collect::<Vec<_>>(), "{run}: tensor names");
    for (name, w) in &want {
        let d = max_diff(w, &have[name]);
        assert!(d < 1e-4, "{run}, {name}: max |diff| {d}");
    }
}

/// The statistics a kind keeps, and their starting values.
fn statistics(kind: &str) -> &'static [(&'static str, f32)] {
    match kind {
        "adaface" => &[("margin.batch_mean", 20.0), ("margin.batch_std", 100.0)],
        "curricularface" => &[("margin.t", 0.0)],
        _ => &[],
    }
}

/// For each kind, 4 steps of one rank × 12 images equal 2 ranks × 6 with the replicated
/// head and with Partial FC: the statistics come from the global batch on every rank.
#[test]
fn mpi_adaptive_margins_match_across_rank_counts_and_partial_fc() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    for kind in ["adaface", "magface", "curricularface"] {
        let mut a = common_args(&train, &out, kind);
        a.extend(["--max-steps", "4", "--save-every", "4"]);
        let one = format!("{kind}-one");
        let mut args = vec!["train", "FR", "--batch-size", "12", "--run-id", &one];
        args.extend(&a);
        run_ok(&args);
        let saved = checkpoint(&out, &one, 4);
        for (name, start) in statistics(kind) {
            let v = saved.get(*name).unwrap_or_else(|| panic!("{kind}: no {name} in the checkpoint"));
            assert!(v.len() == 1 && v[0] != *start, "{kind}: {name} = {v:?} never moved");
        }
        for pfc in [false, true] {
            let run = format!("{kind}-two-{}", if pfc { "pfc" } else { "replicated" });
            let mut args = vec!["train", "FR", "--batch-size", "6", "--run-id", &run];
            if pfc {
                args.push("--partial-fc");
            }
            args.extend(&a);
            let Some(mpi) = mpi() else { return };
            let res = mpi.job(2).args(&args).output().expect("spawn mpirun");
            assert!(res.status.success(), "{run}: {}", text(&res));
            assert_same_run(&out, &one, &run, 4);
        }
    }
}

/// A run stopped at step 2 and resumed to 4 ends where an unbroken 4-step run does, its
/// statistics bit for bit; a resume with another --margin is refused.
#[test]
fn adaptive_statistics_resume_exactly_and_the_kind_stays() {
    let dir = tempfile::tempdir().unwrap();
    let train = data(dir.path());
    let out = dir.path().join("Model");
    for kind in ["adaface", "curricularface"] {
        let (whole, halves) = (format!("{kind}-whole"), format!("{kind}-halves"));
        let mut a = vec!["train", "FR", "--batch-size", "8", "--save-every", "2"];
        a.extend(common_args(&train, &out, kind));
        run_ok(&[&a[..], &["--run-id", &whole, "--max-steps", "4"]].concat());
        run_ok(&[&a[..], &["--run-id", &halves, "--max-steps", "2"]].concat());
        let run = out.join(&halves);
        let refused = output(&["train", "--resume", s(&run), "--max-steps", "4", "--margin", "arcface"]);
        let msg = text(&refused);
        assert!(!refused.status.success() && msg.contains(&format!("--margin arcface (the run has {kind})")), "{msg}");
        run_ok(&["train", "--resume", s(&run), "--max-steps", "4"]);
        let (want, got) = (checkpoint(&out, &whole, 4), checkpoint(&out, &halves, 4));
        for (name, _) in statistics(kind) {
            assert_eq!(want[*name], got[*name], "{kind}: {name} after the resume");
        }
        assert_eq!(losses(&out.join(&whole), "FR"), losses(&run, "FR"), "{kind}: losses");
    }
}
