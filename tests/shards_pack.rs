//! `trainer pack` end to end: round trip, determinism, balance, bad inputs, transcoding.

mod common;
use common::shards::*;
use common::*;
use std::collections::BTreeMap;

#[test]
fn pack_then_unpack_is_byte_identical_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 4, 9);
    let out = tmp.path().join("shards");
    let stdout = ok(&["pack", s(&src), "--name", "faces", "--shards", "3", "--out", s(&out)]);
    assert!(stdout.contains("packed 36 records of 4 classes into 3 shards"), "{stdout}");
    let spec = out.join("faces");
    assert!(ok(&["verify", s(&spec), "--decode"]).contains("OK: 36 records in 3 shards"));
    let inspect = ok(&["inspect", s(&spec)]);
    assert!(inspect.contains("records 36  classes 4") && inspect.contains("trainer-shard v1"), "{inspect}");
    let back = tmp.path().join("back");
    ok(&["unpack", s(&spec), "--out", s(&back)]);
    assert_eq!(tree(&back), tree(&src));
    let labels = std::fs::read_to_string(out.join("faces.labels.tsv")).unwrap();
    assert_eq!(labels.lines().nth(1), Some("0\t0_person (é0)"));
}

#[test]
fn same_inputs_and_seed_give_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 3, 7);
    let pack = |dir: &str, seed: &str| {
        let out = tmp.path().join(dir);
        ok(&["pack", s(&src), "--name", "d", "--shards", "2", "--out", s(&out), "--seed", seed, "--workers", "2"]);
        tree(&out)
    };
    let (a, b, c) = (pack("a", "5"), pack("b", "5"), pack("c", "6"));
    assert_eq!(a.len(), 2 * 2 + 3);
    assert_eq!(a, b);
    let shard_files =
        |t: &[(String, Vec<u8>)]| t.iter().filter(|(p, _)| p.ends_with(".idx")).cloned().collect::<Vec<_>>();
    assert_ne!(shard_files(&a), shard_files(&c), "another seed should deal records differently");
}

#[test]
fn shards_are_balanced_and_labels_spread_or_grouped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 5, 11);
    let out = tmp.path().join("o");
    for (name, extra) in [("spread", None), ("grouped", Some("--group-by-label"))] {
        let mut args = vec!["pack", s(&src), "--name", name, "--shards", "4", "--out", s(&out)];
        args.extend(extra);
        ok(&args);
        let per_shard: Vec<BTreeMap<String, usize>> = (0..4)
            .map(|k| {
                let mut m = BTreeMap::new();
                for row in idx_rows(&out.join(format!("{name}-0000{k}-of-00004.idx"))) {
                    *m.entry(row[1].clone()).or_insert(0) += 1;
                }
                m
            })
            .collect();
        let sizes: Vec<usize> = per_shard.iter().map(|m| m.values().sum()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 55);
        for label in 0..5 {
            let counts: Vec<usize> = per_shard.iter().map(|m| *m.get(&label.to_string()).unwrap_or(&0)).collect();
            if extra.is_none() {
                assert!(counts.iter().all(|&c| c == 2 || c == 3), "label {label} spread {counts:?}");
            } else {
                assert_eq!(counts.iter().filter(|&&c| c > 0).count(), 1, "label {label} grouped {counts:?}");
            }
        }
        let spread = sizes.iter().max().unwrap() - sizes.iter().min().unwrap();
        assert!(spread <= if extra.is_none() { 1 } else { 11 }, "{name}: {sizes:?}");
        assert_eq!(manifest(&out, name)["num_records"], 55);
    }
}

#[test]
fn bad_inputs_are_skipped_and_reported_and_strict_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 4);
    let good = image_bytes(0, 0, false);
    let class = src.join("0_person (é0)");
    std::fs::write(class.join("empty.jpg"), b"").unwrap();
    std::fs::write(class.join("notes.jpg"), b"this is text, not a picture").unwrap();
    std::fs::write(class.join("cut.jpg"), &good[..good.len() * 2 / 3]).unwrap();
    let out = tmp.path().join("o");
    let run = output(&["pack", s(&src), "--name", "d", "--out", s(&out)]);
    assert!(run.status.success(), "{}", lossy(&run.stderr));
    let stderr = lossy(&run.stderr);
    for bad in ["empty.jpg", "notes.jpg", "cut.jpg"] {
        assert!(stderr.contains(bad), "stderr should name {bad}: {stderr}");
    }
    let skipped = std::fs::read_to_string(out.join("d.skipped.tsv")).unwrap();
    assert_eq!(skipped.lines().count(), 4, "{skipped}");
    assert!(skipped.contains("0_person (é0)/cut.jpg\t"), "{skipped}");
    assert_eq!(manifest(&out, "d")["skipped"], 3);
    assert_eq!(manifest(&out, "d")["num_records"], 8);

    let strict_out = tmp.path().join("strict");
    let err = fails(&["pack", s(&src), "--name", "d", "--out", s(&strict_out), "--strict"]);
    assert!(err.contains("--strict"), "{err}");
    let left: Vec<_> =
        std::fs::read_dir(&strict_out).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "strict failure left files behind: {left:?}");
}

#[test]
fn list_table_carries_gender_and_age() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 3);
    let table = tmp.path().join("list.tsv");
    std::fs::write(
        &table,
        "path\tlabel\tgender\tage\n0_person (é0)/enroll (1).jpg\t4\t1\t3\n1_person (é1)/enroll (2).jpg\t2\t0\t\n",
    )
    .unwrap();
    let out = tmp.path().join("o");
    ok(&["pack", s(&src), "--list", s(&table), "--name", "t", "--out", s(&out)]);
    let mut rows = idx_rows(&out.join("t-00000-of-00001.idx"));
    rows.sort();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0][1].as_str(), rows[0][4].as_str(), rows[0][5].as_str()), ("4", "1", "3"));
    assert_eq!((rows[1][1].as_str(), rows[1][4].as_str(), rows[1][5].as_str()), ("2", "0", "-1"));
    assert!(ok(&["inspect", s(&out.join("t"))]).contains("classes 5"));
}

#[test]
fn size_resizes_and_reencodes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 3);
    let out = tmp.path().join("o");
    ok(&["pack", s(&src), "--name", "r", "--out", s(&out), "--size", "16"]);
    let back = tmp.path().join("back");
    ok(&["unpack", s(&out.join("r")), "--out", s(&back)]);
    for (path, bytes) in tree(&back) {
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16), "{path}");
        assert_eq!(image::guess_format(&bytes).unwrap(), image::ImageFormat::Jpeg, "{path}");
    }
}

#[test]
fn repacking_with_fewer_shards_replaces_the_old_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 4);
    let out = tmp.path().join("o");
    ok(&["pack", s(&src), "--name", "d", "--shards", "4", "--out", s(&out)]);
    ok(&["pack", s(&src), "--name", "d", "--shards", "2", "--out", s(&out), "--force"]);
    assert!(ok(&["verify", s(&out.join("d"))]).contains("OK: 8 records in 2 shards"));
    let partial = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .count();
    assert_eq!(partial, 0);
}
