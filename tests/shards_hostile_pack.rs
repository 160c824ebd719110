//! `trainer pack` and `synth` under hostile input: an existing dataset of the same name,
//! symlink loops, FIFOs, damaged images, duplicate list rows, leftovers of a killed pack,
//! and values too large to honour.

mod common;
use common::shards::*;
use common::*;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs trainer (at its default log level, as `output`), killing it (and failing the test)
/// if it has not finished after two minutes: a hang must fail the suite, not stall it.
fn bounded(args: &[&str]) -> std::process::Output {
    let child = spawn_piped(trainer().env("RUST_LOG", "info").args(args));
    wait_within(child, Duration::from_secs(120), &format!("trainer {args:?}"))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Exit status 1 or 2 (clap's usage errors), never a crash, with `want` on stderr.
fn refused(args: &[&str], want: &str) {
    let out = bounded(args);
    let err = lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(1 | 2)), "trainer {args:?} should be refused:\n{err}");
    assert!(err.contains(want), "trainer {args:?}: want {want:?} in:\n{err}");
}

#[test]
fn repacking_a_name_needs_force_and_force_replaces_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (big, small) = (class_folders(tmp.path(), 4, 6), tmp.path().join("small"));
    std::fs::create_dir_all(small.join("only")).unwrap();
    std::fs::write(small.join("only/a.jpg"), image_bytes(0, 0, false)).unwrap();
    std::fs::write(small.join("only/b.png"), image_bytes(0, 1, true)).unwrap();
    let out = tmp.path().join("ow");
    ok(&["pack", s(&big), "--name", "f", "--shards", "4", "--out", s(&out)]);
    let before = tree(&out);

    let err = fails(&["pack", s(&small), "--name", "f", "--shards", "2", "--out", s(&out)]);
    assert!(err.contains("already holds a dataset named \"f\"") && err.contains("--force"), "{err}");
    assert_eq!(tree(&out), before, "a refused pack leaves the old dataset byte for byte");
    assert!(ok(&["verify", s(&out.join("f"))]).contains("OK: 24 records in 4 shards"));

    ok(&["pack", s(&small), "--name", "f", "--shards", "2", "--out", s(&out), "--force"]);
    assert!(ok(&["verify", s(&out.join("f"))]).contains("OK: 2 records in 2 shards"));
    let names = files_in(&out);
    assert!(names.iter().all(|n| !n.contains("-of-00004") && !n.ends_with(".partial")), "{names:?}");
    assert_eq!(names.len(), 2 * 2 + 3, "{names:?}");
}

#[test]
fn a_legacy_pair_of_the_same_name_is_not_shadowed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 3);
    let dir = tmp.path().join("seed");
    std::fs::create_dir_all(&dir).unwrap();
    let jpeg = image_bytes(0, 1, false);
    std::fs::write(dir.join("gender_test.bin"), &jpeg).unwrap();
    std::fs::write(
        dir.join("gender_test.idx"),
        format!("__gender_test/0_male/enroll (1).jpg\t0\t0\t{}\r\n", jpeg.len()),
    )
    .unwrap();
    let err = fails(&["pack", s(&src), "--name", "gender_test", "--out", s(&dir)]);
    assert!(err.contains("gender_test.bin") || err.contains("gender_test.idx"), "{err}");
    assert!(ok(&["inspect", s(&dir.join("gender_test.idx"))]).contains("records 1 "));

    ok(&["pack", s(&src), "--name", "gender_test", "--out", s(&dir), "--force"]);
    assert!(
        !dir.join("gender_test.bin").exists() && !dir.join("gender_test.idx").exists(),
        "the replaced pair is removed: {:?}",
        files_in(&dir)
    );
    assert!(ok(&["inspect", s(&dir.join("gender_test"))]).contains("records 6 "));
}

#[test]
fn symlink_loops_fifos_and_hidden_files_are_listed_not_packed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 3);
    let a = src.join("0_person (é0)");
    symlink("..", a.join("loop")).unwrap();
    symlink("ping", a.join("pong")).unwrap();
    symlink("pong", a.join("ping")).unwrap();
    std::fs::write(a.join(".hidden.jpg"), image_bytes(0, 9, false)).unwrap();
    assert!(Command::new("mkfifo").arg(a.join("pipe.jpg")).status().unwrap().success());
    let out = tmp.path().join("o");
    for follow in [false, true] {
        let mut args = vec!["pack", s(&src), "--name", "d", "--out", s(&out), "--force"];
        args.extend(follow.then_some("--follow-links"));
        let run = bounded(&args);
        assert!(run.status.success(), "{}", lossy(&run.stderr));
        let back = tmp.path().join(format!("back{follow}"));
        ok(&["unpack", s(&out.join("d")), "--out", s(&back)]);
        assert_eq!(tree(&back), tree_without_specials(&src), "each image exactly once (follow {follow})");
        let skipped = std::fs::read_to_string(out.join("d.skipped.tsv")).unwrap();
        for (name, why) in [
            ("loop", if follow { "symlink loop" } else { "--follow-links" }),
            ("ping", "broken symlink"),
            ("pipe.jpg", "FIFO"),
            (".hidden.jpg", "hidden"),
        ] {
            let line = skipped
                .lines()
                .find(|l| l.starts_with(&format!("0_person (é0)/{name}\t")))
                .unwrap_or_else(|| panic!("{name} not listed:\n{skipped}"));
            assert!(line.contains(why), "{line}");
        }
    }
    let err = fails(&["pack", s(&src), "--name", "d", "--out", s(&tmp.path().join("strict")), "--strict"]);
    assert!(err.contains("FIFO") || err.contains("broken symlink"), "a FIFO is a bad input under --strict: {err}");
}

/// `tree` of the source without the links, FIFO and hidden file the test planted.
fn tree_without_specials(src: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for class in std::fs::read_dir(src).unwrap().flatten() {
        for f in std::fs::read_dir(class.path()).unwrap().flatten() {
            let kind = f.file_type().unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            if kind.is_file() && !name.starts_with('.') {
                out.push((format!("{}/{name}", class.file_name().to_string_lossy()), std::fs::read(f.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_truncated_jpeg_is_skipped_in_both_modes_and_trailing_bytes_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 3);
    let good = large_jpeg(7);
    let class = src.join("1_person (é1)");
    std::fs::write(class.join("cut.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(class.join("tail.jpg"), [good.as_slice(), b"\0\0trailer written by a camera"].concat()).unwrap();
    for extra in [&[][..], &["--size", "48"][..]] {
        let out = tmp.path().join(format!("o{}", extra.len()));
        let mut args = vec!["pack", s(&src), "--name", "d", "--out", s(&out)];
        args.extend_from_slice(extra);
        let stderr = lossy(&bounded(&args).stderr);
        assert!(stderr.contains("cut.jpg") && stderr.contains("truncated"), "{extra:?}: {stderr}");
        let skipped = std::fs::read_to_string(out.join("d.skipped.tsv")).unwrap();
        assert!(skipped.contains("cut.jpg\t") && !skipped.contains("tail.jpg"), "{extra:?}: {skipped}");
        assert_eq!(manifest(&out, "d")["num_records"], 7, "{extra:?}");
    }
}

#[test]
fn duplicate_list_paths_are_an_error_naming_both_lines_and_paths_are_normalised() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 3);
    let table = tmp.path().join("list.tsv");
    std::fs::write(&table, "path\tlabel\r\n0_person (é0)/enroll (1).jpg\t0\r\n1_person (é1)/enroll (2).jpg\t1\r\n./0_person (é0)//enroll (1).jpg\t1\r\n").unwrap();
    let out = tmp.path().join("o");
    let err = fails(&["pack", s(&src), "--list", s(&table), "--name", "t", "--out", s(&out)]);
    assert!(err.contains("lines 2 and 4") && err.contains("0_person (é0)/enroll (1).jpg"), "{err}");
    assert!(!out.join("t-00000-of-00001.idx").exists());

    std::fs::write(&table, "path\tlabel\n./0_person (é0)//enroll (1).jpg\t0\n1_person (é1)/./enroll (2).jpg\t1\n")
        .unwrap();
    ok(&["pack", s(&src), "--list", s(&table), "--name", "t", "--out", s(&out)]);
    let mut paths: Vec<String> =
        idx_rows(&out.join("t-00000-of-00001.idx")).into_iter().map(|r| r[0].clone()).collect();
    paths.sort();
    assert_eq!(paths, ["0_person (é0)/enroll (1).jpg", "1_person (é1)/enroll (2).jpg"]);
}

#[test]
fn a_pack_that_writes_nothing_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("junk");
    std::fs::create_dir_all(src.join("c")).unwrap();
    std::fs::write(src.join("c/a.jpg"), b"not an image").unwrap();
    std::fs::write(src.join("c/b.jpg"), b"").unwrap();
    let out = tmp.path().join("o");
    let err = fails(&["pack", s(&src), "--name", "d", "--out", s(&out)]);
    assert!(err.contains("none of the 2 inputs could be packed"), "{err}");
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
}

#[test]
fn leftovers_of_a_killed_pack_are_removed_by_the_next_pack_and_a_running_one_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 3);
    let out = tmp.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    // What SIGKILL leaves: partial shards of two datasets, their unlocked manifest partials.
    for f in [
        "old-00000-of-00002.bin.partial",
        "old-00001-of-00002.idx.partial",
        "old.manifest.json.partial",
        "d-00000-of-00003.bin.partial",
        "notes.partial",
    ] {
        std::fs::write(out.join(f), b"half written").unwrap();
    }
    // A pack of "busy" still running: it holds the lock on its manifest partial.
    let busy = std::fs::File::create(out.join("busy.manifest.json.partial")).unwrap();
    busy.lock().unwrap();
    std::fs::write(out.join("busy-00000-of-00001.bin.partial"), b"being written").unwrap();
    let run = bounded(&["pack", s(&src), "--name", "d", "--out", s(&out)]);
    assert!(run.status.success(), "{}", lossy(&run.stderr));
    assert!(lossy(&run.stderr).contains("interrupted pack of \"old\""), "{}", lossy(&run.stderr));
    let left: Vec<String> = files_in(&out).into_iter().filter(|n| n.ends_with(".partial")).collect();
    assert_eq!(left, ["busy-00000-of-00001.bin.partial", "busy.manifest.json.partial", "notes.partial"]);

    let err = fails(&["pack", s(&src), "--name", "busy", "--out", s(&out)]);
    assert!(err.contains("another `trainer pack` is writing \"busy\""), "{err}");
    drop(busy);
}

#[test]
fn values_too_large_to_honour_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 5);
    let out = tmp.path().join("o");
    let (src_s, out_s) = (s(&src), s(&out));
    refused(
        &["pack", src_s, "--name", "d", "--out", out_s, "--shards", "99999999999"],
        "--shards 99999999999 is more than the 10 inputs",
    );
    refused(&["pack", src_s, "--name", "d", "--out", out_s, "--shards", "100000"], "use --shards 10 or fewer");
    refused(&["pack", src_s, "--name", "d", "--out", out_s, "--size", "100000"], "1..=4096");
    refused(&["pack", src_s, "--name", "d", "--out", out_s, "--workers", "99999999"], "1..=1024");
    refused(&["pack", src_s, "--name", "d.idx", "--out", out_s], "plain file name");
    assert!(!out.exists() || files_in(&out).is_empty());
    let table = tmp.path().join("list.tsv");
    std::fs::write(&table, "path\tlabel\n0_person (é0)/enroll (1).jpg\t4294967295\n").unwrap();
    refused(
        &["pack", src_s, "--list", s(&table), "--name", "d", "--out", out_s],
        "line 2: label \"4294967295\" is not an integer in 0..16777216",
    );

    let img = tmp.path().join("synth");
    refused(&["synth", "--out", s(&img), "--identities", "99999999999999", "--per-identity", "1"], "1..=16777216");
    refused(
        &["synth", "--out", s(&img), "--identities", "16000000", "--per-identity", "1000000", "--size", "64"],
        "GB are free",
    );
    assert!(!img.exists(), "nothing is written when the disk cannot hold it");
}
