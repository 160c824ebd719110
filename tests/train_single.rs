//! `trainer train` as one process: learning, resume after a kill, rollback, recipes,
//! seed flags, every task, stop conditions and `trainer eval`.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// Train and validation sets shared by the tests of this file.
fn data(dir: &Path) -> (PathBuf, PathBuf) {
    (packed_synth(dir, "train", 24, 16, 2, 1), packed_synth(dir, "valid", 8, 10, 1, 2))
}

/// This file's tiny run: batch 32, seed 3, lr 0.1.
fn base_args<'a>(task: &'a str, train: &'a Path, out: &'a Path, run: &'a str) -> Vec<&'a str> {
    let tiny = tiny_train(task, out, run).set("--train-sets", s(train)).set("--batch-size", "32");
    tiny.set("--seed", "3").set("--lr", "0.1").args()
}

#[test]
fn fr_loss_falls_and_held_out_identities_beat_chance() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = data(dir.path());
    let out = dir.path().join("Model");
    let mut args = base_args("FR", &train, &out, "fr");
    args.extend([
        "--max-steps",
        "150",
        "--valid-sets",
        s(&valid),
        "--valid-every",
        "150",
        "--save-every",
        "50",
        "--valid-pairs",
        "600",
    ]);
    run_ok(&args);
    let run = out.join("fr");
    let l = losses(&run, "FR");
    assert_eq!(l.len(), 150);
    let (first, last) = (mean(&l[..20]), mean(&l[l.len() - 20..]));
    assert!(last < 0.8 * first, "loss did not fall: first 20 {first:.3}, last 20 {last:.3}");
    let valid_events: Vec<_> = log_lines(&run).into_iter().filter(|e| e["event"] == "valid").collect();
    let acc = valid_events.last().expect("a validation event")["valid_fr_verif_acc"].as_f64().unwrap();
    assert!(acc > 0.65, "held-out verification accuracy {acc} is near chance (0.5)");
    assert!(run.join("best/model.safetensors").exists());
    assert!(run.join("config.json").exists());
    let ev = run_ok(&["eval", s(&run), "--valid-sets", s(&valid), "--device", "cpu", "--pairs", "600"]);
    assert!(text(&ev).contains("valid_fr_verif_acc"), "{}", text(&ev));
}

/// A run killed with SIGKILL and resumed ends with exactly the losses and weights of a
/// run that was never interrupted.
#[test]
fn resume_after_kill_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = base_args("FR", &train, &out, "straight");
    a.extend(["--max-steps", "40", "--save-every", "10"]);
    run_ok(&a);

    let mut b = base_args("FR", &train, &out, "killed");
    b.extend(["--max-steps", "100000", "--save-every", "10"]);
    let mut child = trainer().args(&b).spawn().unwrap();
    wait_for(&out.join("killed/checkpoints/step-000000020/state.json"));
    child.kill().unwrap();
    child.wait().unwrap();
    let run = out.join("killed");
    run_ok(&["train", "--resume", s(&run), "--max-steps", "40"]);

    let (la, lb) = (losses(&out.join("straight"), "FR"), losses(&run, "FR"));
    assert_eq!(la.len(), 40);
    assert_eq!(la, lb, "resumed losses differ from the uninterrupted run");
    let wa = weights(&out.join("straight/checkpoints/step-000000040"));
    let wb = weights(&run.join("checkpoints/step-000000040"));
    assert_eq!(wa.len(), wb.len());
    for ((na, _, ta), (nb, _, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta == tb, "{na} differs after resume");
    }
}

/// `--channels-last` changes the memory order, not the model: the losses track the NCHW
/// run's (to rounding, which grows over steps), and its checkpoints hold the usual
/// layout: a resume from one continues bit for bit, and `eval` reads it.
#[test]
fn channels_last_trains_the_same_model_and_saves_the_usual_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = data(dir.path());
    let out = dir.path().join("Model");
    let run_to = |run: &str, steps: &str, nhwc: bool| {
        let mut a = base_args("FR", &train, &out, run);
        a.extend(["--max-steps", steps, "--save-every", "5"]);
        if nhwc {
            a.push("--channels-last");
        }
        run_ok(&a);
    };
    run_to("nchw", "10", false);
    run_to("nhwc", "10", true);
    run_to("nhwc-resumed", "5", true);
    let resumed = out.join("nhwc-resumed");
    run_ok(&["train", "--resume", s(&resumed), "--max-steps", "10"]);
    let (nchw, nhwc) = (losses(&out.join("nchw"), "FR"), losses(&out.join("nhwc"), "FR"));
    assert_eq!(losses(&resumed, "FR"), nhwc, "a resume from a channels-last checkpoint is not exact");
    assert_eq!(nchw.len(), 10);
    for (i, (x, y)) in nchw.iter().zip(&nhwc).enumerate() {
        let tolerance = if i < 3 { 1e-4 } else { 2e-2 };
        assert!((x - y).abs() <= tolerance * x.abs(), "step {}: NCHW {nchw:?}\nNHWC {nhwc:?}", i + 1);
    }
    let layout = |ckpt: &Path| -> Vec<(String, String, usize)> {
        weights(ckpt).into_iter().map(|(name, dtype, data)| (name, dtype, data.len())).collect()
    };
    let last = "checkpoints/step-000000010";
    assert_eq!(layout(&out.join("nchw").join(last)), layout(&resumed.join(last)));
    run_ok(&["eval", s(&resumed), "--valid-sets", s(&valid), "--threads", "1"]);
}

fn weights(ckpt: &Path) -> Vec<(String, String, Vec<u8>)> {
    safetensors(&ckpt.join("model.safetensors"))
}

#[test]
fn a_corrupt_checkpoint_is_named_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = base_args("FR", &train, &out, "c");
    a.extend(["--max-steps", "5", "--save-every", "5"]);
    run_ok(&a);
    let model = out.join("c/checkpoints/step-000000005/model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&model, bytes).unwrap();
    let res = trainer().args(["train", "--resume", s(&out.join("c")), "--max-steps", "10"]).output().unwrap();
    assert!(!res.status.success());
    let msg = text(&res);
    assert!(msg.contains("corrupt") && msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn an_injected_nan_rolls_back_to_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = base_args("FR", &train, &out, "nan");
    a.extend(["--max-steps", "30", "--save-every", "10", "--inject-nan-at", "15"]);
    run_ok(&a);
    let log = log_lines(&out.join("nan"));
    let rb = log.iter().find(|e| e["event"] == "rollback").expect("a rollback event");
    assert_eq!(rb["to_step"], 10);
    let end = log.iter().find(|e| e["event"] == "end").expect("an end event");
    assert_eq!(end["step"], 30);
    let l = losses(&out.join("nan"), "FR");
    assert!(l.last().unwrap().is_finite(), "training did not recover: {:?}", &l[l.len() - 3..]);
}

#[test]
fn seed_flags_and_recipe_resolve_into_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    run_ok(&[
        "train",
        "FR",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/training/demo-tiny.toml"),
        "-train_sets",
        s(&train),
        "-img_w",
        "32",
        "-s",
        "77",
        "-fr_dim",
        "16",
        "--max-steps",
        "3",
        "--out",
        s(&out),
        "--run-id",
        "seed",
        "--threads",
        "1",
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("seed/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model"]["size"], 32);
    assert_eq!(cfg["schedule"]["plateau_steps"], 77);
    assert_eq!(cfg["heads"]["emb_dim"], 16);
    assert_eq!(cfg["model"]["arch"], "tiny", "the recipe's arch is kept");
}

#[test]
fn gender_age_and_multi_train_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = data(dir.path());
    let out = dir.path().join("Model");
    for (task, extra) in [("Gender", vec![]), ("Age", vec![]), ("Multi", vec!["--alternate"])] {
        let mut a = base_args(task, &train, &out, task);
        a.extend(["--max-steps", "12", "--valid-sets", s(&valid), "--valid-every", "12", "--valid-pairs", "200"]);
        a.extend(extra);
        run_ok(&a);
        let log = log_lines(&out.join(task));
        let v = log.iter().find(|e| e["event"] == "valid").unwrap_or_else(|| panic!("{task}: no validation"));
        let keys: &[&str] = match task {
            "Gender" => &["valid_gender_acc"],
            "Age" => &["valid_age_acc", "valid_age_mae"],
            _ => &["valid_fr_verif_acc", "valid_gender_acc", "valid_age_acc"],
        };
        for key in keys {
            let value = v[key].as_f64().unwrap_or_else(|| panic!("{task}: no {key} in {v}"));
            assert!(value.is_finite() && value >= 0.0, "{task}: {key} = {value}");
        }
    }
    let multi = out.join("Multi");
    for task in ["FR", "Gender", "Age"] {
        // Alternating: each task trained on every third step.
        assert_eq!(losses(&multi, task).len(), 4, "{task}");
    }
}

#[test]
fn time_limit_and_sigterm_stop_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = base_args("FR", &train, &out, "timed");
    a.extend(["--max-steps", "1000000", "--time-limit", "3", "--save-every", "1000000"]);
    run_ok(&a);
    let end = log_lines(&out.join("timed")).into_iter().find(|e| e["event"] == "end").unwrap();
    assert_eq!(end["reason"], "TimeLimit");
    let step = end["step"].as_u64().unwrap();
    assert!(out.join(format!("timed/checkpoints/step-{step:09}/model.safetensors")).exists());

    let mut b = base_args("FR", &train, &out, "term");
    b.extend(["--max-steps", "1000000", "--save-every", "10"]);
    let mut child = trainer().args(&b).spawn().unwrap();
    wait_for(&out.join("term/checkpoints/step-000000010/state.json"));
    send_signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM should stop cleanly, got {status}");
    let end = log_lines(&out.join("term")).into_iter().find(|e| e["event"] == "end").unwrap();
    assert_eq!(end["reason"], "Signal");
    let step = end["step"].as_u64().unwrap();
    assert!(out.join(format!("term/checkpoints/step-{step:09}/state.json")).exists());
}

fn send_signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    assert!(st.success());
}

/// `--amp`'s loss scaling (on CPU it is the only part of --amp that runs): with a power-of-
/// two scale the weights end bit-identical to an unscaled run; a scale that overflows makes
/// the steps skip and the scale back off until training proceeds.
#[test]
fn amp_loss_scaling_is_exact_and_backs_off_on_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    for (run, extra) in
        [("plain", vec![]), ("amp", vec!["--amp"]), ("overflow", vec!["--amp", "--amp-init-scale", "1e38"])]
    {
        let mut a = base_args("FR", &train, &out, run);
        a.extend(["--max-steps", "30", "--save-every", "30"]);
        a.extend(extra);
        run_ok(&a);
    }
    let (plain, amp) =
        (weights(&out.join("plain/checkpoints/step-000000030")), weights(&out.join("amp/checkpoints/step-000000030")));
    for ((name, _, a), (_, _, b)) in plain.iter().zip(&amp) {
        assert!(a == b, "{name} differs between the unscaled and the loss-scaled run");
    }
    let steps: Vec<serde_json::Value> =
        log_lines(&out.join("overflow")).into_iter().filter(|e| e.get("loss_scale").is_some()).collect();
    let (first, last) = (&steps[0], steps.last().unwrap());
    assert!(first["amp_skipped_steps"].as_u64().unwrap() >= 1, "{first}");
    let skipped = last["amp_skipped_steps"].as_u64().unwrap();
    assert!((1..30).contains(&skipped), "{skipped} of 30 steps skipped");
    assert!(last["loss_scale"].as_f64().unwrap() < 1e38 / 2.0, "{last}");
    let (l, o) = (losses(&out.join("plain"), "FR"), losses(&out.join("overflow"), "FR"));
    assert!(o.iter().all(|v| v.is_finite()), "losses stay finite: {o:?}");
    assert_ne!(l, o, "skipped steps must change the trajectory");
    // --amp given on resume starts scaling from there.
    run_ok(&["train", "--resume", s(&out.join("plain")), "--max-steps", "35", "--amp"]);
    let resumed = log_lines(&out.join("plain"));
    let scaled: Vec<_> = resumed.iter().filter(|e| e.get("loss_scale").is_some()).collect();
    assert!(!scaled.is_empty() && scaled.iter().all(|e| e["step"].as_u64().unwrap() > 30), "{resumed:?}");
}
