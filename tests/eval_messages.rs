//! `trainer eval`'s refusals: a run folder that does not exist is named as such (not taken
//! for a run without validation), and a set too small for 10-fold verification is refused
//! instead of printing NaN.

mod common;
use common::*;

#[test]
fn eval_tells_a_missing_run_from_one_without_validation_and_refuses_a_tiny_set() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 6, 4, 1, 1);
    let out = dir.path().join("Model");
    let tiny = tiny_train("FR", &out, "r").set("--train-sets", s(&train)).set("--batch-size", "8");
    run_ok(&tiny.set("--emb-dim", "16").set("--max-steps", "2").args());
    let run = out.join("r");

    let missing = trainer().args(["eval", s(&out.join("typo")), "--device", "cpu"]).output().unwrap();
    let err = text(&missing);
    assert!(!missing.status.success() && err.contains("does not exist") && !err.contains("validation set"), "{err}");

    let img = dir.path().join("one-img");
    run_ok(&["synth", "--out", s(&img), "--identities", "1", "--per-identity", "1", "--size", "32"]);
    run_ok(&["pack", s(&img), "--name", "one", "--out", s(&dir.path().join("shards"))]);
    let one = dir.path().join("shards/one");
    let tiny = trainer().args(["eval", s(&run), "--valid-sets", s(&one), "--device", "cpu"]).output().unwrap();
    let err = text(&tiny);
    assert!(
        !tiny.status.success() && err.contains("0 verification pairs (1 records)") && err.contains("10-fold"),
        "{err}"
    );
    assert!(!err.contains("NaN"), "{err}");
}
