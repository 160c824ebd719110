//! A run directory is one run: a fresh `train` on it is refused (or replaced with
//! `--force`), a run that fails while being set up leaves nothing, a finished run resumed
//! does nothing, a resume cannot change what the weights are, and a checkpoint's
//! `state.json` names the world that wrote it.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn data(dir: &Path) -> PathBuf {
    packed_synth(dir, "train", 6, 8, 2, 1)
}

/// `train FR` of the tiny model on `train` into `out/run`, with `extra` flags ("": a switch).
fn tiny<'a>(train: &'a Path, out: &'a Path, run: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    let mut t = tiny_train("FR", out, run).set("--train-sets", s(train)).set("--batch-size", "8");
    for &(flag, value) in extra {
        t = if value.is_empty() { t.set_all(flag, &[]) } else { t.set(flag, value) };
    }
    t.args()
}

/// Every file under `dir` with its bytes: what "nothing changed" compares.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    common::shards::tree(dir).into_iter().filter(|(name, _)| !name.ends_with("trainer.lock")).collect()
}

fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_fresh_train_on_a_run_directory_is_refused_and_force_replaces_it_after_its_first_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (train, out) = (data(dir.path()), dir.path().join("Model"));
    let run = out.join("r");
    run_ok(&tiny(&train, &out, "r", &[("--max-steps", "4"), ("--save-every", "4")]));
    let before = snapshot(&run);

    let again = output(&tiny(&train, &out, "r", &[("--max-steps", "2")]));
    let msg = text(&again);
    assert!(!again.status.success(), "a second run merged into the first: {msg}");
    assert!(
        msg.contains(&format!("{} already holds a run", run.display()))
            && msg.contains(&format!("--resume {}", run.display()))
            && msg.contains("--run-id")
            && msg.contains("--force"),
        "{msg}"
    );
    assert!(snapshot(&run) == before, "the refused run changed the directory");

    // --force whose new run fails before its first step: the old run stays as it was.
    let failed = output(&tiny(&train, &out, "r", &[("--force", ""), ("--init", "/nonexistent.safetensors")]));
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(snapshot(&run) == before, "a failed --force lost or changed the old run");

    let forced = run_ok(&tiny(&train, &out, "r", &[("--force", ""), ("--max-steps", "2"), ("--save-every", "2")]));
    assert!(text(&forced).contains("replaced"), "{}", text(&forced));
    assert_eq!(checkpoints(&run), ["step-000000002"], "the old run's checkpoints outlived the new run's first one");
    assert!(!run.join("replaced-run").exists(), "the replaced run was kept after the new checkpoint");
    let starts = log_lines(&run).iter().filter(|e| e["event"] == "start").count();
    assert_eq!(starts, 1, "log.txt holds two runs");
    assert_eq!(losses(&run, "FR").len(), 2, "loss_debug holds two runs");
}

#[test]
fn a_run_that_fails_before_its_first_step_leaves_no_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (train, out) = (data(dir.path()), dir.path().join("Model"));
    let bad = output(&tiny(&train, &out, "bad", &[("--init", "/nonexistent.safetensors")]));
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(text(&bad).contains("--init"), "{}", text(&bad));
    assert!(!out.join("bad").exists(), "an empty run directory was left: {:?}", snapshot(&out.join("bad")));
}

#[test]
fn resuming_a_finished_run_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (train, out) = (data(dir.path()), dir.path().join("Model"));
    let run = out.join("r");
    run_ok(&tiny(&train, &out, "r", &[("--max-steps", "4"), ("--save-every", "2")]));
    let before = snapshot(&run);
    for extra in [&["--resume", s(&run)][..], &["--resume", s(&run), "--lr", "0.01"]] {
        let mut args = vec!["train"];
        args.extend(extra);
        let said = text(&run_ok(&args));
        assert!(said.contains("the run is finished: step 4 of --max-steps 4"), "{said}");
        assert!(snapshot(&run) == before, "a finished run was touched by {extra:?}");
    }
    let auto = tiny(&train, &out, "r", &[("--max-steps", "4"), ("--auto-resume", "")]);
    let said = text(&run_ok(&auto));
    assert!(said.contains("the run is finished: step 4 of --max-steps 4"), "{said}");
    assert!(snapshot(&run) == before, "--auto-resume touched a finished run");
}

#[test]
fn a_resume_that_changes_what_the_weights_are_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (train, out) = (data(dir.path()), dir.path().join("Model"));
    let run = out.join("r");
    run_ok(&tiny(&train, &out, "r", &[("--max-steps", "2"), ("--save-every", "2")]));
    let before = snapshot(&run);
    let cases: [(&[&str], &str); 3] = [
        (&["--size", "48"], "--size 48 (the run has 32)"),
        (&["--emb-dim", "16"], "--emb-dim 16 (the run has 32)"),
        (&["--arch", "tiny-nobn"], "--arch tiny-nobn (the run has tiny)"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["train", "--resume", s(&run), "--max-steps", "4"];
        args.extend(flags);
        let res = output(&args);
        assert_eq!(res.status.code(), Some(2), "{flags:?} was not refused as a setting: {}", text(&res));
        assert!(text(&res).contains(says), "{}", text(&res));
        assert!(snapshot(&run) == before, "{flags:?}: the refused resume did work");
    }
    // A change that leaves the weights what they are is honoured and recorded.
    run_ok(&["train", "--resume", s(&run), "--max-steps", "4", "--lr", "0.05"]);
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["schedule"]["max_steps"].as_u64(), config["optim"]["lr"].as_f64()), (Some(4), Some(0.05)));
    assert_eq!(losses(&run, "FR").len(), 4);
}

fn world_of(run: &Path, step: u64) -> u64 {
    let path = run.join(format!("checkpoints/step-{step:09}/state.json"));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    state["state"]["world_size"].as_u64().unwrap()
}

#[test]
fn mpi_state_json_records_the_world_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let (train, out) = (data(dir.path()), dir.path().join("Model"));
    let run = out.join("r");
    let Some(mpi) = mpi() else { return };
    let first = tiny(&train, &out, "r", &[("--max-steps", "2"), ("--save-every", "2")]);
    let res = mpi.job(2).args(&first).output().unwrap();
    assert!(res.status.success(), "{}", text(&res));
    run_ok(&["train", "--resume", s(&run), "--max-steps", "3", "--save-every", "1"]);
    assert_eq!([world_of(&run, 2), world_of(&run, 3)], [2, 1]);
}
