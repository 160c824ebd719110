//! One stored config per run: a flag given with `--resume` is recorded, and is what the
//! next resume and `trainer eval` use (it used to reach neither).

mod common;
use common::*;
use std::path::Path;

fn train(out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["train", "FR", "--out", s(out), "--threads", "1", "--workers", "1"];
    args.extend(extra);
    text(&run_ok(&args))
}

fn last_event(run: &Path, kind: &str) -> serde_json::Value {
    log_lines(run).into_iter().rev().find(|e| e["event"] == kind).unwrap_or_else(|| panic!("no {kind} event"))
}

#[test]
fn settings_changed_on_resume_are_recorded_and_used_by_later_resumes_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let set = packed_synth(dir.path(), "train", 8, 10, 1, 1);
    let out = dir.path().join("Model");
    let run = out.join("r");
    let tiny = ["--arch", "tiny", "--size", "32", "--batch-size", "16", "--emb-dim", "16", "--arc-s", "16"];
    let mut first = vec!["--train-sets", s(&set), "--run-id", "r", "--max-steps", "10", "--save-every", "10"];
    first.extend(tiny);
    train(&out, &first);

    let changed = ["--max-steps", "20", "--lr", "0.05", "--valid-sets", s(&set), "--valid-every", "20"];
    let mut second = vec!["--resume", s(&run), "--valid-pairs", "200"];
    second.extend(changed);
    train(&out, &second);
    let resumed = last_event(&run, "resume");
    let overrides: Vec<&str> = resumed["overrides"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    for want in ["schedule.max_steps: 10 → 20", "optim.lr: 0.1 → 0.05", "valid.valid_pairs: 3000 → 200"] {
        assert!(overrides.contains(&want), "{want} not in {overrides:?}");
    }
    assert!(overrides.iter().any(|o| o.starts_with("valid.valid_sets: [] → [")), "{overrides:?}");
    assert_eq!(last_event(&run, "end")["step"], 20);

    // Again with no flags: the run is finished at the recorded --max-steps 20, with the
    // recorded lr, and says so instead of training on.
    let events = log_lines(&run).len();
    let said = train(&out, &["--resume", s(&run)]);
    assert!(said.contains("the run is finished: step 20 of --max-steps 20"), "{said}");
    assert_eq!(log_lines(&run).len(), events, "a finished run logs nothing");
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (stored["schedule"]["max_steps"].as_u64(), stored["optim"]["lr"].as_f64()),
        (Some(20), Some(0.05)),
        "the resume's settings are the run's"
    );
    assert_eq!(losses(&run, "FR").len(), 20, "a finished run takes no step");

    // eval with no --valid-sets uses the validation set given at the resume.
    let eval = text(&run_ok(&["eval", s(&run)]));
    assert!(eval.contains("\"step\":20") && eval.contains("verif_acc"), "{eval}");
}
