//! Rollback and run history: a NaN never loops forever, a rollback returns to the latest
//! good state, and log.txt, loss_debug/ and best/ tell the path training actually took,
//! through rollbacks and kill -9 + resume.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn data(dir: &Path) -> (PathBuf, PathBuf) {
    (packed_synth(dir, "train", 24, 16, 2, 1), packed_synth(dir, "valid", 8, 10, 1, 2))
}

fn args<'a>(train: &'a Path, out: &'a Path, run: &'a str) -> Vec<&'a str> {
    let tiny = tiny_train("FR", out, run).set("--train-sets", s(train)).set("--batch-size", "32");
    tiny.set("--seed", "3").set("--log-every", "1").args()
}

fn events<'a>(log: &'a [Value], name: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["event"] == name).collect()
}

/// Every step from 1 to `last` has exactly one progress line and one loss, in order.
fn assert_one_history(run: &Path, last: u64) {
    let log = log_lines(run);
    let steps: Vec<u64> =
        log.iter().filter(|e| e.get("event").is_none()).map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=last).collect::<Vec<_>>(), "progress lines of {}", run.display());
    assert_eq!(losses(run, "FR").len() as u64, last, "loss_debug of {}", run.display());
}

#[test]
fn a_nan_that_never_goes_away_ends_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = args(&train, &out, "stuck");
    a.extend([
        "--lr",
        "0.1",
        "--max-steps",
        "60",
        "--save-every",
        "5",
        "--inject-nan-at",
        "7",
        "--inject-nan-times",
        "1000",
        "--max-rollbacks",
        "4",
    ]);
    let res = trainer().args(&a).output().unwrap();
    let msg = text(&res);
    assert!(!res.status.success(), "{msg}");
    assert!(
        msg.contains("gave up after 4 rollbacks without getting past step 7 (the last failure: NaN at step 7)"),
        "{msg}"
    );
    assert!(msg.contains("lr ") && msg.contains("checkpoints/step-000000005"), "{msg}");
    let log = log_lines(&out.join("stuck"));
    assert_eq!(events(&log, "rollback").len(), 4, "--max-rollbacks bounds the reloads");
    assert_eq!(events(&log, "give_up")[0]["step"], 7);
}

/// Between log lines the losses stay on the device: a NaN at step 7 is judged (and rolled
/// back) when the ranks settle at step 10, and the history is cut back all the same.
#[test]
fn a_nan_between_log_lines_rolls_back_at_the_next_settle() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = tiny_train("FR", &out, "late").set("--train-sets", s(&train)).set("--batch-size", "32").args();
    a.extend(["--seed", "3", "--max-steps", "20", "--save-every", "5", "--inject-nan-at", "7"]);
    let res = trainer().args(&a).output().unwrap();
    let msg = text(&res);
    assert!(res.status.success(), "{msg}");
    assert!(msg.contains("rolled back to step 5 (NaN at step 7); lr unchanged (1st reload)"), "{msg}");
    let run = out.join("late");
    let log = log_lines(&run);
    let rollback = events(&log, "rollback")[0];
    assert_eq!((rollback["step"].as_u64(), rollback["to_step"].as_u64()), (Some(7), Some(5)), "{rollback}");
    // Steps 6 to 10 ran before the settle at 10 judged them.
    assert_eq!(rollback["discarded_losses"]["FR"].as_array().map(Vec::len), Some(5), "{rollback}");
    assert_eq!(losses(&run, "FR").len(), 20);
    let progress: Vec<u64> =
        log.iter().filter(|e| e.get("event").is_none()).map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(progress, vec![5, 10, 15, 20]);
}

#[test]
fn an_exploding_lr_shrinks_on_the_third_reload_and_trains_on() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = args(&train, &out, "hot");
    a.extend(["--lr", "1e6", "--max-steps", "60", "--save-every", "5"]);
    let res = trainer().args(&a).output().unwrap();
    let msg = text(&res);
    assert!(res.status.success(), "{msg}");
    assert!(msg.contains("rolled back to step 5 (NaN at step 7); lr unchanged (1st reload)"), "{msg}");
    assert!(msg.contains("lr 1.000e6 → 1.000e5 (3rd reload)"), "{msg}");
    let run = out.join("hot");
    let log = log_lines(&run);
    let lrs: Vec<f64> = events(&log, "rollback").iter().map(|e| e["lr"].as_f64().unwrap()).collect();
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "a shrink is never undone by a later reload: {lrs:?}");
    let end = events(&log, "end")[0];
    assert_eq!(end["step"], 60);
    let changes = end["lr_changes"].as_array().unwrap();
    assert!(!changes.is_empty() && changes.iter().all(|c| c["cause"] == "rollback"), "{end}");
    assert_one_history(&run, 60);
}

#[test]
fn a_nan_after_a_better_validation_returns_to_its_checkpoint_once() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = args(&train, &out, "v");
    a.extend([
        "--lr",
        "0.1",
        "--max-steps",
        "40",
        "--save-every",
        "20",
        "--valid-every",
        "10",
        "--valid-sets",
        s(&valid),
        "--valid-pairs",
        "200",
        "--inject-nan-at",
        "15",
    ]);
    run_ok(&a);
    let run = out.join("v");
    let log = log_lines(&run);
    let best_steps: Vec<u64> = events(&log, "best").iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert!(best_steps.contains(&10), "the test needs step 10's validation to be the first best: {best_steps:?}");
    let rb = events(&log, "rollback");
    assert_eq!(rb.len(), 1, "one NaN, one rollback (no second one from a stale window)");
    assert_eq!((rb[0]["step"].as_u64(), rb[0]["to_step"].as_u64()), (Some(15), Some(10)));
    assert_one_history(&run, 40);
}

#[test]
fn best_only_improves_and_history_survives_rollback_plus_kill_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = data(dir.path());
    let out = dir.path().join("Model");
    let mut a = args(&train, &out, "k");
    a.extend([
        "--lr",
        "0.1",
        "--max-steps",
        "100000",
        "--save-every",
        "10",
        "--valid-every",
        "5",
        "--valid-sets",
        s(&valid),
        "--valid-pairs",
        "200",
        "--inject-nan-at",
        "17",
    ]);
    let mut child = trainer().args(&a).spawn().unwrap();
    wait_for(&out.join("k/checkpoints/step-000000030/state.json"));
    child.kill().unwrap();
    child.wait().unwrap();
    let run = out.join("k");
    run_ok(&["train", "--resume", s(&run), "--max-steps", "45"]);
    assert_one_history(&run, 45);
    let log = log_lines(&run);
    assert_eq!(events(&log, "rollback").len(), 1);
    // Every "best" beats every validation recorded before it, and best/ holds the last.
    let mut seen = f64::NEG_INFINITY;
    for e in &log {
        match e["event"].as_str() {
            Some("valid") => seen = seen.max(e["valid_fr_verif_acc"].as_f64().unwrap()),
            Some("best") => assert!(e["metric"].as_f64().unwrap() >= seen, "best {e} below an earlier {seen}"),
            _ => {}
        }
    }
    let bests = events(&log, "best");
    let best_file: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best/state.json")).unwrap()).unwrap();
    assert_eq!(best_file["state"]["best_metric"], bests.last().unwrap()["metric"]);
}
