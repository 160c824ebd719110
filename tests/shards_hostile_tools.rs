//! unpack, verify, inspect and the loader under hostile input: links inside `--out`,
//! existing files, damaged images in hand-made shards, a labels table that disagrees with
//! the shards, and a stdout closed by `| head`.

mod common;
use common::shards::*;
use common::*;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use trainer_data::format::idx::{format_v1, header_line};

/// A one-shard v1 dataset written by hand (valid checksums), so a damaged payload reaches
/// the readers exactly as given.
fn v1_dataset(dir: &Path, name: &str, records: &[(&str, u32, Vec<u8>)]) -> PathBuf {
    let (mut bin, mut idx) = (Vec::new(), header_line() + "\n");
    for (path, label, bytes) in records {
        let start = bin.len() as u64;
        bin.extend_from_slice(bytes);
        idx.push_str(&format_v1(path, *label, start, bin.len() as u64, -1, -1, crc32c::crc32c(bytes)));
    }
    std::fs::write(dir.join(format!("{name}-00000-of-00001.bin")), bin).unwrap();
    std::fs::write(dir.join(format!("{name}-00000-of-00001.idx")), idx).unwrap();
    dir.join(name)
}

fn packed(tmp: &Path) -> PathBuf {
    let src = class_folders(tmp, 2, 3);
    let out = tmp.join("shards");
    ok(&["pack", s(&src), "--name", "d", "--out", s(&out)]);
    out.join("d")
}

#[test]
fn unpack_never_writes_through_a_link_and_keeps_existing_files_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = packed(tmp.path());
    let (out, elsewhere) = (tmp.path().join("out"), tmp.path().join("elsewhere"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let victim = elsewhere.join("enroll (1).jpg");
    std::fs::write(&victim, b"precious").unwrap();
    symlink(&elsewhere, out.join("0_person (é0)")).unwrap();
    for force in [false, true] {
        let mut args = vec!["unpack", s(&spec), "--out", s(&out)];
        args.extend(force.then_some("--force"));
        let err = fails(&args);
        assert!(err.contains("0_person (é0) is a symlink"), "{err}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "nothing was written beside the link");

    // A link in a file's place: refused, and with --force replaced by the file, not followed.
    std::fs::remove_file(out.join("0_person (é0)")).unwrap();
    std::fs::create_dir_all(out.join("0_person (é0)")).unwrap();
    symlink(&victim, out.join("0_person (é0)/enroll (1).jpg")).unwrap();
    let err = fails(&["unpack", s(&spec), "--out", s(&out)]);
    assert!(err.contains("already exist") && err.contains("--force"), "{err}");
    ok(&["unpack", s(&spec), "--out", s(&out), "--force"]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let src = tmp.path().join("src");
    assert_eq!(tree(&out), tree(&src));
    let err = fails(&["unpack", s(&spec), "--out", s(&out)]);
    assert!(err.contains("6 of the files already exist"), "{err}");
}

#[test]
fn a_truncated_jpeg_is_damaged_for_verify_and_the_loader_and_trailing_bytes_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let good = large_jpeg(3);
    let cut = good[..good.len() / 2].to_vec();
    let tail = [good.as_slice(), &[0u8; 64]].concat();
    let records: Vec<(&str, u32, Vec<u8>)> = (0..8)
        .map(|i| ("c/ok.jpg", i % 2, good.clone()))
        .chain([("c/cut.jpg", 0, cut.clone()), ("c/tail.jpg", 1, tail.clone())])
        .collect();
    let spec = v1_dataset(tmp.path(), "d", &records);
    for decode in [false, true] {
        let mut args = vec!["verify", s(&spec)];
        args.extend(decode.then_some("--decode"));
        let err = fails(&args);
        assert!(err.contains("record 8 (c/cut.jpg)") && err.contains("truncated"), "{err}");
        assert_eq!(err.matches("FAIL").count(), 1, "trailing bytes are fine: {err}");
    }
    // The seed's format always decodes: the same file fails there too.
    let (mut bin, mut idx) = (Vec::new(), String::new());
    for (path, bytes) in [("a/cut.jpg", &cut), ("a/tail.jpg", &tail)] {
        idx.push_str(&format!("{path}\t0\t{}\t{}\r\n", bin.len(), bin.len() + bytes.len()));
        bin.extend_from_slice(bytes);
    }
    std::fs::write(tmp.path().join("seed.bin"), bin).unwrap();
    std::fs::write(tmp.path().join("seed.idx"), idx).unwrap();
    let err = fails(&["verify", s(&tmp.path().join("seed"))]);
    assert!(err.contains("a/cut.jpg") && err.contains("truncated") && !err.contains("a/tail.jpg"), "{err}");
    // The loader replaces the cut record and keeps the one with a tail.
    let run = output(&[
        "bench",
        "data",
        "--train-sets",
        s(&spec),
        "--size",
        "16",
        "--batch-size",
        "5",
        "--batches",
        "8",
        "--reps",
        "1",
        "--workers",
        "1",
    ]);
    let (stdout, logs) = (lossy(&run.stdout), lossy(&run.stderr));
    assert!(run.status.success() && stdout.contains("corrupt skipped"), "{stdout}{logs}");
    assert!(logs.contains("c/cut.jpg") && logs.contains("truncated") && !logs.contains("c/tail.jpg"), "{logs}");
}

#[test]
fn a_short_labels_table_fails_verify_shows_in_inspect_and_stops_training_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = packed(tmp.path());
    let labels = tmp.path().join("shards/d.labels.tsv");
    std::fs::write(&labels, "label\tname\n0\t0_person (é0)\n").unwrap();
    let err = fails(&["verify", s(&spec)]);
    assert!(
        err.contains("d.labels.tsv: no entry for label 1, which 3 records use (first ") && err.contains(".idx line "),
        "{err}"
    );
    assert!(err.contains("manifest.json: says 2 classes"), "{err}");
    let inspect = ok(&["inspect", s(&spec)]);
    assert!(inspect.contains("WARNING: 3 records carry 1 labels outside the 1 classes"), "{inspect}");
    let bench = fails(&[
        "bench",
        "data",
        "--train-sets",
        s(&spec),
        "--size",
        "16",
        "--batch-size",
        "2",
        "--batches",
        "1",
        "--reps",
        "1",
    ]);
    assert!(
        bench.contains("d-00000-of-00001.idx line ")
            && bench.contains("label 1 is outside the 1 classes")
            && bench.contains("d.labels.tsv"),
        "{bench}"
    );
    let run = tmp.path().join("run");
    let train = output(&[
        "train",
        "FR",
        "--train-sets",
        s(&spec),
        "--arch",
        "tiny",
        "--size",
        "16",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--out",
        s(&run),
    ]);
    let err = lossy(&train.stderr);
    assert!(!train.status.success() && err.contains(".idx line ") && err.contains("label 1 is outside"), "{err}");
}

#[test]
fn a_manifest_that_disagrees_with_the_shards_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = packed(tmp.path());
    let path = tmp.path().join("shards/d.manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["num_records"] = 7.into();
    m["label_counts"]["1"] = 4.into();
    std::fs::write(&path, m.to_string()).unwrap();
    let err = fails(&["verify", s(&spec)]);
    assert!(
        err.contains("says 7 records, the shards hold 6")
            && err.contains("says label 1 has 4 records, the shards hold 3"),
        "{err}"
    );
}

/// Runs trainer with its stdout a pipe whose reader is already gone, as `| head -1` leaves it.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    trainer().env("RUST_LOG", "info").args(args).stdout(writer).stderr(Stdio::piped()).output().unwrap()
}

#[test]
fn every_data_command_exits_quietly_when_stdout_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = packed(tmp.path());
    let losses = tmp.path().join("loss.txt");
    std::fs::write(&losses, "3,2,1,1,1,").unwrap();
    let (src, u, p) = (tmp.path().join("src"), tmp.path().join("u"), tmp.path().join("p"));
    let commands: Vec<Vec<&str>> = vec![
        vec!["inspect", s(&spec), "--head", "100"],
        vec!["verify", s(&spec), "--decode"],
        vec!["unpack", s(&spec), "--out", s(&u)],
        vec!["pack", s(&src), "--name", "again", "--out", s(&p)],
        vec!["plateau", s(&losses), "--threshold", "3"],
        vec!["bench", "plateau", "--n", "300", "--runs", "1"],
        vec![
            "bench",
            "data",
            "--train-sets",
            s(&spec),
            "--size",
            "16",
            "--batch-size",
            "2",
            "--batches",
            "2",
            "--reps",
            "1",
        ],
        vec!["--help"],
    ];
    for args in commands {
        let out = with_closed_stdout(&args);
        let err = lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked") && !err.contains("error"),
            "trainer {args:?}: {:?}\n{err}",
            out.status
        );
    }
}
