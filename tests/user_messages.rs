//! Messages that lead a user somewhere real: a foreign flag's tip, `inspect`'s rates and the
//! tasks a dataset can serve, and every `docs/…` pointer in the binaries' messages.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// arcface_torch's `fp16 = True` is mixed precision: `--fp16` is pointed to `--amp`, not
/// only to clap's nearest spelling, `--fp16-allreduce`.
#[test]
fn fp16_is_pointed_to_amp() {
    let out = trainer().args(["train", "FR", "--train-sets", "shards/faces", "--fp16"]).output().unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("use '--amp'") && msg.contains("'--fp16-allreduce'"), "{msg}");
}

/// An identity-only set (class folders, no gender or age column) serves FR alone: its 40
/// identity labels are not offered as Gender or Age classes. The index loads in well under
/// /proc's CPU clock, so no records-per-CPU-second figure is made up from a zero.
#[test]
fn inspect_names_the_tasks_a_set_serves_and_rates_only_what_it_measured() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    run_ok(&["synth", "--out", s(&img), "--identities", "40", "--per-identity", "2", "--size", "32", "--seed", "3"]);
    std::fs::remove_file(img.join("list.tsv")).ok();
    let shards = dir.path().join("shards");
    run_ok(&["pack", s(&img), "--name", "ids", "--out", s(&shards)]);
    let shown = text(&run_ok(&["inspect", s(&shards.join("ids"))]));
    assert!(shown.contains("tasks it can serve: FR ("), "{shown}");
    assert!(shown.contains("  FR      label  80 of 80 known, classes 0..=39"), "{shown}");
    for task in ["Gender", "Age"] {
        let line = shown.lines().find(|l| l.trim_start().starts_with(task)).unwrap_or_default();
        assert!(line.contains("cannot:") && !line.contains("label  80 of 80"), "{task}: {shown}");
    }
    let index = shown.lines().find(|l| l.starts_with("index load:")).expect("an index load line");
    if let Some(ms) = index.split(", ").nth(1).and_then(|c| c.strip_suffix(" records per CPU-second")) {
        let cpu_ms: f64 = ms.split(" ms CPU").next().unwrap().parse().unwrap();
        assert!(cpu_ms >= 100.0, "a CPU rate from {cpu_ms} ms of 10 ms ticks: {index}");
    }
}

/// Every `docs/PAGE.md[#anchor]` a message of the binaries names (in a string of the
/// source) is a page of the repository, and the anchor one of its headings.
#[test]
fn every_docs_pointer_in_a_message_leads_somewhere_real() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![];
    for dir in ["src", "crates"] {
        rust_files(&root.join(dir), &mut sources);
    }
    let mut checked = 0;
    for file in &sources {
        let code = std::fs::read_to_string(file).unwrap();
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for pointer in docs_pointers(line) {
                let (page, anchor) = pointer.split_once('#').map_or((pointer.as_str(), None), |(p, a)| (p, Some(a)));
                let path = root.join(page);
                let at = format!("{}:{}", file.strip_prefix(root).unwrap().display(), n + 1);
                assert!(path.is_file(), "{at}: {pointer}: no such page");
                if let Some(anchor) = anchor {
                    let page_text = std::fs::read_to_string(&path).unwrap();
                    assert!(anchors(&page_text).iter().any(|a| a == anchor), "{at}: {pointer}: no such heading");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "only {checked} pointers found: is the scan reading the sources?");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.ends_with("target") {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `docs/NAME.md` and `README.md`, with an `#anchor` when one follows.
fn docs_pointers(line: &str) -> Vec<String> {
    let mut found = vec![];
    for start in ["docs/", "README.md"] {
        let mut rest = line;
        while let Some(i) = rest.find(start) {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || "/._#-".contains(c))).unwrap_or(tail.len());
            let pointer = tail[..end].trim_end_matches('.');
            if pointer.ends_with(".md") || pointer.contains(".md#") {
                found.push(pointer.to_string());
            }
            rest = &tail[end.max(1)..];
        }
    }
    found
}

/// GitHub's anchors of a page's headings (as launch/doc-check.sh makes them).
fn anchors(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| l.trim_start_matches('#'))
        .filter(|l| l.starts_with(' '))
        .map(|l| {
            l.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || " _-".contains(*c))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}
