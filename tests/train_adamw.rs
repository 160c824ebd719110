//! `--optimizer adamw` through the real binary: its state in checkpoints, a run killed and
//! resumed ending where an uninterrupted one does, and Partial FC's centres' moments
//! gathered into a checkpoint and cut again on resume. (Its update rule is checked step by
//! step against `torch.optim.AdamW` in `crates/torch/src/optim/twin_test.rs`.)

mod common;
use common::*;
use std::path::Path;

/// The ViT recipe's optimiser on the tiny model: AdamW, lr 1e-3, weight decay 0.1.
const ADAMW: [&str; 10] =
    ["--optimizer", "adamw", "--lr", "1e-3", "--wd-backbone", "0.1", "--wd-fr", "0.1", "--betas", "0.9,0.99"];

fn optim_names(ckpt: &Path) -> Vec<String> {
    safetensors(&ckpt.join("optimizer.safetensors")).into_iter().map(|(n, _, _)| n).collect()
}

/// A run killed with SIGKILL and resumed (without repeating `--optimizer`: it comes from the
/// run's config.json) ends with exactly the losses and weights of an uninterrupted run.
#[test]
fn adamw_resume_after_kill_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 24, 16, 2, 1);
    let out = dir.path().join("Model");
    let args = |run: &'static str, steps: &'static str| {
        let mut a = tiny_train("FR", &out, run).set("--train-sets", s(&train)).set("--seed", "3").args();
        a.extend(ADAMW);
        a.extend(["--max-steps", steps, "--save-every", "10"]);
        a
    };
    run_ok(&args("straight", "40"));
    let mut child = trainer().args(args("killed", "100000")).spawn().unwrap();
    wait_for(&out.join("killed/checkpoints/step-000000020/state.json"));
    child.kill().unwrap();
    child.wait().unwrap();
    let run = out.join("killed");
    run_ok(&["train", "--resume", s(&run), "--max-steps", "40"]);

    let (la, lb) = (losses(&out.join("straight"), "FR"), losses(&run, "FR"));
    assert_eq!(la.len(), 40);
    assert_eq!(la, lb, "resumed losses differ from the uninterrupted run");
    let ckpt = |run: &str| out.join(run).join("checkpoints/step-000000040");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (wa, wb) = (safetensors(&ckpt("straight").join(file)), safetensors(&ckpt("killed").join(file)));
        assert_eq!(wa.len(), wb.len(), "{file}");
        for ((na, _, ta), (nb, _, tb)) in wa.iter().zip(&wb) {
            assert_eq!(na, nb);
            assert!(ta == tb, "{file}: {na} differs after resume");
        }
    }
    let names = optim_names(&ckpt("straight"));
    assert!(names.iter().any(|n| n == "arcface.0.exp_avg_sq") && !names.iter().any(|n| n == "arcface.0"), "{names:?}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["optim"]["optimizer"].as_str(), &config["optim"]["betas"]),
        (Some("adamw"), &serde_json::json!([0.9, 0.99]))
    );
}

/// A checkpoint written by AdamW does not resume under SGD: the error names the state.
#[test]
fn adamw_state_is_not_resumed_by_sgd() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 4, 1, 1);
    let out = dir.path().join("Model");
    let mut a = tiny_train("FR", &out, "r").set("--train-sets", s(&train)).args();
    a.extend(ADAMW);
    a.extend(["--max-steps", "2", "--save-every", "2"]);
    run_ok(&a);
    let run = out.join("r");
    let res =
        trainer().args(["train", "--resume", s(&run), "--max-steps", "4", "--optimizer", "sgd"]).output().unwrap();
    let msg = text(&res);
    assert!(!res.status.success() && msg.contains("written by --optimizer adamw"), "{msg}");
}

/// Partial FC on 2 ranks with AdamW: 5 steps, a checkpoint (the centres' moments gathered
/// whole), a resume to 10, equal to one rank holding the whole matrix for 10 steps.
#[test]
fn mpi_adamw_partial_fc_checkpoints_and_resumes_like_the_replicated_head() {
    let Some(mpi) = mpi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 61, 4, 1, 1);
    let out = dir.path().join("Model");
    let args = |run: &'static str, batch: &'static str| {
        let tiny = tiny_train("FR", &out, run).set("--train-sets", s(&train)).set("--arch", "tiny-nobn");
        let tiny =
            tiny.set("--batch-size", batch).set("--emb-dim", "16").set("--fr-dropout", "0").set("--log-every", "1");
        let mut a = tiny.args();
        a.extend(["--no-shuffle", "--no-augment", "--stripe-records", "--save-every", "5", "--eps", "1e-3"]);
        a.extend(ADAMW);
        a
    };
    let mut one = args("one", "12");
    one.extend(["--max-steps", "10"]);
    run_ok(&one);
    let mut pfc = args("pfc", "6");
    pfc.extend(["--partial-fc", "--max-steps", "5"]);
    let res = mpi.job(2).args(&pfc).output().unwrap();
    assert!(res.status.success(), "{}", text(&res));
    let run = out.join("pfc");
    let half = optim_names(&run.join("checkpoints/step-000000005"));
    assert!(half.iter().any(|n| n == "arcface.0.exp_avg"), "{half:?}");
    let res = mpi.job(2).args(["train", "--resume", s(&run), "--max-steps", "10"]).output().unwrap();
    assert!(res.status.success(), "{}", text(&res));

    let (want, got) = (losses(&out.join("one"), "FR"), losses(&run, "FR"));
    assert_eq!((want.len(), got.len()), (10, 10));
    for (step, (x, y)) in want.iter().zip(&got).enumerate() {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "step {}: loss {y} vs {x}", step + 1);
    }
    let ckpt = |run: &str, file: &str| safetensors(&out.join(run).join("checkpoints/step-000000010").join(file));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (want, have) = (ckpt("one", file), ckpt("pfc", file));
        assert_eq!(want.iter().map(|t| &t.0).collect::<Vec<_>>(), have.iter().map(|t| &t.0).collect::<Vec<_>>());
        for ((name, dtype, w), (_, _, h)) in want.iter().zip(&have).filter(|(w, _)| w.1 == "F32") {
            assert_eq!(w.len(), h.len(), "{file}, {name}: the whole matrix");
            let d = f32s(w).iter().zip(f32s(h)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(d < 1e-4, "{file}, {name} ({dtype}): max |diff| {d}");
        }
    }
}
