//! `launch/doc-check.sh`, which keeps the commands the docs show true to the CLI: it passes
//! on the real docs, and on a page that drifted it fails naming the file and line.

mod common;
use common::{s, text, trainer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn doc_check(pages: &[&Path], run_blocks: bool) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new(root.join("launch/doc-check.sh"))
        .args(pages)
        .env("TRAINER_BIN", env!("CARGO_BIN_EXE_trainer"))
        .env("DOC_CHECK_RUN", if run_blocks { "1" } else { "0" })
        .env("RUST_LOG", "warn")
        .output()
        .expect("run launch/doc-check.sh")
}

fn page(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("page.md");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_real_docs_pass() {
    let out = doc_check(&[], false);
    assert!(out.status.success(), "doc-check fails on README.md and docs/:\n{}", text(&out));
}

#[test]
fn a_command_that_no_longer_parses_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let md = "# Page\n\n```sh\n\
trainer pack /data/faces --name faces --shards 8\n\
trainer pack /data/faces --name faces --no-such-flag 3\n\
trainer train FR --train-sets /data/shards/faces --max-steps 10 \\\n    --lr 0.05\n\
launch/mpirun.sh 2 train FR --train-sets /data/shards/faces --no-such-train-flag\n\
mpirun -n 2 trainer eval Model/run --checkpoint latest --bogus\n\
```\n";
    let path = page(dir.path(), md);
    let out = doc_check(&[&path], false);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    // Lines 5, 8 and 9 hold bad flags; 4 and 6-7 (a continued command) parse.
    for (line, flag) in [(5, "--no-such-flag"), (8, "--no-such-train-flag"), (9, "--bogus")] {
        let at = format!("{}:{line}: does not parse", s(&path));
        assert!(said.contains(&at), "expected {at:?}:\n{said}");
        assert!(said.contains(flag), "clap's message should name {flag}:\n{said}");
    }
    for line in [4, 6, 7] {
        assert!(!said.contains(&format!("{}:{line}:", s(&path))), "line {line} parses:\n{said}");
    }
    assert!(said.contains("3 problem(s)"), "{said}");
}

#[test]
fn missing_scripts_broken_links_and_failing_examples_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let md = "See [nowhere](nowhere.md) and [the format](../nope/FORMAT.md#x).\n\n\
```sh\nlaunch/no-such-script.sh 2\n```\n\n\
```sh run\ntrainer synth --out ids --identities 2 --per-identity 2 --size 32\ntrainer inspect no/such/dataset\n```\n";
    let path = page(dir.path(), md);
    let out = doc_check(&[&path], true);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let p = s(&path);
    for expected in [
        format!("{p}:1: broken link: nowhere.md"),
        format!("{p}:1: broken link: ../nope/FORMAT.md#x"),
        format!("{p}:4: launch/no-such-script.sh does not exist"),
        format!("{p}:9: failed: trainer inspect no/such/dataset"),
    ] {
        assert!(said.contains(&expected), "expected {expected:?}:\n{said}");
    }
    assert!(!said.contains(&format!("{p}:8:")), "synth runs:\n{said}");
}

/// The mode doc-check relies on parses with the real definitions and runs nothing, in both
/// binaries.
#[test]
fn parse_only_runs_nothing_and_still_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids");
    let model = dir.path().join("Model");
    let parse = |args: &[&str]| trainer().env("TRAINER_PARSE_ONLY", "1").args(args).output().unwrap();
    let out = parse(&["synth", "--out", s(&ids), "--identities", "2", "--per-identity", "2"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out));
    let out = parse(&["train", "FR", "--train-sets", "/no/such/set", "--max-steps", "1", "--out", s(&model)]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out));
    assert!(!ids.exists() && !model.exists(), "parse-only wrote something");
    for bad in
        [&["synth", "--out", "x", "--identities", "0", "--per-identity", "2"][..], &["train", "FR", "--lr", "nan"]]
    {
        let out = parse(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
    }
}
