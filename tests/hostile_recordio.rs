//! Issue 26, cases 9–15: a RecordIO set's side files are read within limits, damage never
//! shifts a record's name, a bad label is a skipped record, and the class limit, `--shards`,
//! a contradicting record 0 and a list table's columns and rows are checked before anything
//! is written (docs/hostile-input.md).

mod common;

use common::rec::{frame, pack, part_header, Label, RecWriter};
use common::shards::{fails, idx_rows, manifest, ok, tree};
use common::{image_bytes, lossy, output, s};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const IMAGES: u64 = 12;
const CLASSES: u64 = 4;

/// How `set` deviates from a clean insightface set.
#[derive(Default)]
struct Twist {
    /// Image key → label written instead of its class.
    labels: BTreeMap<u64, f32>,
    /// This image is written as a part flagged 1 followed by a part flagged 0.
    split: Option<u64>,
    /// Record 0's `[first identity key, end]` instead of the true one.
    header: Option<(u64, u64)>,
}

/// 12 images of 4 classes (3 each, keys 1..=12), record 0 the header `[13, 17]`, identity
/// records 13..=16, `property` 4,112,112. Returns the `.rec` and each key's image bytes.
fn set(dir: &Path, twist: &Twist) -> (PathBuf, BTreeMap<u64, Vec<u8>>) {
    let (first, end) = twist.header.unwrap_or((IMAGES + 1, IMAGES + 1 + CLASSES));
    let mut w = RecWriter::default();
    w.write(0, &pack(Label::Many(vec![first as f32, end as f32]), 0, 0, b""));
    let mut images = BTreeMap::new();
    for key in 1..=IMAGES {
        let class = (key - 1) / 3;
        let img = image_bytes(class as u32, key as u32, false);
        let label = twist.labels.get(&key).copied().unwrap_or(class as f32);
        let payload = pack(Label::One(label), key, 0, &img);
        if twist.split == Some(key) {
            let half = payload.len() / 2 / 4 * 4;
            w.idx.push((key, w.rec.len() as u64));
            part_header(&mut w.rec, 1, half);
            w.rec.extend_from_slice(&payload[..half]);
            let mut tail = Vec::new();
            frame(&mut tail, &payload[half..]);
            w.rec.extend_from_slice(&tail);
        } else {
            w.write(key, &payload);
        }
        images.insert(key, img);
    }
    for c in 0..CLASSES {
        w.write(IMAGES + 1 + c, &pack(Label::Many(vec![(1 + 3 * c) as f32, (4 + 3 * c) as f32]), 0, 0, b""));
    }
    let rec = w.save(dir, "train");
    std::fs::write(dir.join("property"), format!("{CLASSES},112,112\n")).unwrap();
    (rec, images)
}

/// Unpacked records by name.
fn unpacked(tmp: &Path, ds: &Path) -> BTreeMap<String, Vec<u8>> {
    let back = tmp.join(format!("back-{}", ds.file_name().unwrap().to_string_lossy()));
    ok(&["unpack", s(ds), "--out", s(&back)]);
    tree(&back).into_iter().collect()
}

#[test]
fn side_files_are_read_within_limits_and_messages_quote_200_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, _) = set(tmp.path(), &Twist::default());
    let out = tmp.path().join("o");
    let pack_args = ["pack", s(&rec), "--name", "x", "--out", s(&out)];
    let idx = rec.with_extension("idx");
    let kept_idx = std::fs::read(&idx).unwrap();

    // A sparse 1 GB idx costs no disk; it must cost no memory either.
    std::fs::File::create(&idx).unwrap().set_len(1 << 30).unwrap();
    let err = fails(&pack_args);
    assert!(err.contains("more than the") && err.contains("train.idx") && err.len() < 2000, "{err}");
    std::fs::remove_file(&idx).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &idx).unwrap();
    let err = fails(&pack_args);
    assert!(err.contains("is a device") && err.len() < 2000, "{err}");
    // A 30 MB line in an idx of plausible size is refused where it starts, quoted short.
    std::fs::remove_file(&idx).unwrap();
    let mut long = kept_idx.clone();
    long.extend(std::iter::repeat_n(b'7', 600));
    std::fs::write(&idx, &long).unwrap();
    let err = fails(&pack_args);
    assert!(err.contains("longer than the") && err.len() < 2000, "{err}");
    std::fs::write(&idx, &kept_idx).unwrap();

    let property = tmp.path().join("property");
    std::fs::File::create(&property).unwrap().set_len(1 << 30).unwrap();
    let err = fails(&pack_args);
    assert!(err.contains("property file") && err.contains("more than the") && err.len() < 2000, "{err}");
    std::fs::write(&property, format!("{CLASSES},112,112\n")).unwrap();

    // A 10 MB list line is neither echoed whole nor written into skipped.tsv.
    let list = tmp.path().join("list.tsv");
    let huge = "x".repeat(10 << 20);
    std::fs::write(&list, format!("path\tgender\ntrain.rec#1\t{huge}\n")).unwrap();
    let err = fails(&["pack", s(&rec), "--name", "x", "--out", s(&out), "--list", s(&list)]);
    assert!(err.contains("line 2") && err.len() < 2000, "{} bytes: {}", err.len(), &err[..err.len().min(500)]);
    assert!(!out.join("x.skipped.tsv").exists());
    std::fs::write(&list, format!("path\tgender\ntrain.rec#1\t{}\n", "y".repeat(5000))).unwrap();
    let err = fails(&["pack", s(&rec), "--name", "x", "--out", s(&out), "--list", s(&list)]);
    assert!(err.contains("line 2") && err.len() < 2000, "{} bytes: {}", err.len(), &err[..err.len().min(500)]);
}

#[test]
fn a_split_record_without_idx_never_renames_the_records_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, images) = set(tmp.path(), &Twist { split: Some(2), ..Twist::default() });
    std::fs::remove_file(rec.with_extension("idx")).unwrap();
    let out = tmp.path().join("o");
    ok(&["pack", s(&rec), "--name", "x", "--out", s(&out)]);
    let back = unpacked(tmp.path(), &out.join("x"));
    for (name, bytes) in &back {
        if let Some(key) = name.strip_prefix("train.rec#") {
            let key: u64 = key.parse().unwrap();
            assert_eq!(Some(bytes), images.get(&key), "{name} holds another record's image");
        }
    }
    for key in (1..=IMAGES).filter(|k| *k != 2) {
        assert!(back.values().any(|b| *b == images[&key]), "image {key} was lost");
    }
    // A list naming records by key may only attach to the images it names.
    let list = tmp.path().join("list.tsv");
    let rows: String = (1..=IMAGES).map(|k| format!("train.rec#{k}\t{}\n", k % 2)).collect();
    std::fs::write(&list, format!("path\tgender\n{rows}")).unwrap();
    let listed = output(&["pack", s(&rec), "--name", "y", "--out", s(&out), "--list", s(&list)]);
    if listed.status.success() {
        let back = unpacked(tmp.path(), &out.join("y"));
        let rows: Vec<Vec<String>> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("y-") && p.extension().unwrap() == "idx")
            .flat_map(|p| idx_rows(&p))
            .collect();
        assert!(!rows.is_empty());
        for row in rows.iter().filter(|r| r[4] != "-1") {
            let key = images.iter().find(|(_, b)| **b == back[&row[0]]).map(|(k, _)| *k).unwrap();
            assert_eq!(row[4], (key % 2).to_string(), "{row:?}: gender of another image");
        }
    } else {
        let err = lossy(&listed.stderr);
        assert!(err.contains("list table line") && err.contains("names no record"), "{err}");
    }
}

#[test]
fn bad_labels_are_skipped_records_with_or_without_property_and_2_pow_24_is_no_class() {
    let tmp = tempfile::tempdir().unwrap();
    let labels: BTreeMap<u64, f32> = [(2, f32::NAN), (4, -1.0), (6, 1e30), (8, 1.5)].into();
    let (rec, _) = set(tmp.path(), &Twist { labels, ..Twist::default() });
    let out = tmp.path().join("o");
    let stdout = ok(&["pack", s(&rec), "--name", "x", "--out", s(&out)]);
    assert!(stdout.contains("packed 8 records"), "{stdout}");
    let skipped = std::fs::read_to_string(out.join("x.skipped.tsv")).unwrap();
    for key in [2, 4, 6, 8] {
        assert!(skipped.contains(&format!("train.rec#{key}\t")), "{skipped}");
    }
    assert_eq!(skipped.matches("not a class number").count(), 4, "{skipped}");

    let tmp2 = tempfile::tempdir().unwrap();
    let (rec, _) = set(tmp2.path(), &Twist { labels: [(5, 16777216.0)].into(), ..Twist::default() });
    std::fs::remove_file(tmp2.path().join("property")).unwrap();
    let out = tmp2.path().join("o");
    ok(&["pack", s(&rec), "--name", "x", "--out", s(&out)]);
    assert_eq!(manifest(&out, "x")["num_classes"], CLASSES);
    assert!(std::fs::read_to_string(out.join("x.skipped.tsv")).unwrap().contains("train.rec#5"));
    assert!(ok(&["verify", s(&out.join("x"))]).contains("OK"));
}

#[test]
fn shards_beyond_the_records_and_a_contradicting_record_0_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, images) = set(tmp.path(), &Twist { header: Some((3, 3 + CLASSES)), ..Twist::default() });
    let out = tmp.path().join("o");
    let err = fails(&["pack", s(&rec), "--name", "x", "--out", s(&out), "--shards", "100"]);
    assert!(err.contains("--shards 100") && err.contains("12 records"), "{err}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0, "nothing written");

    let err = fails(&["pack", s(&rec), "--name", "x", "--out", s(&out), "--strict"]);
    assert!(err.contains("record 0 announces images 1..3") && err.contains("key 3"), "{err}");
    let done = output(&["pack", s(&rec), "--name", "x", "--out", s(&out)]);
    let said = lossy(&done.stderr);
    assert!(done.status.success() && said.contains("record 0 announces") && said.contains("kept"), "{said}");
    let back = unpacked(tmp.path(), &out.join("x"));
    assert_eq!(back.len(), IMAGES as usize, "every image is kept: {:?}", back.keys());
    assert!(images.values().all(|img| back.values().any(|b| b == img)));
}

#[test]
fn duplicate_list_columns_and_rows_naming_no_record_are_errors_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, _) = set(tmp.path(), &Twist::default());
    let out = tmp.path().join("o");
    let list = tmp.path().join("list.tsv");
    let pack_list = ["pack", s(&rec), "--name", "x", "--out", s(&out), "--list", s(&list)];
    std::fs::write(&list, "path\tgender\tgender\ntrain.rec#1\t0\t1\n").unwrap();
    let err = fails(&pack_list);
    assert!(err.contains("line 1") && err.contains("\"gender\" is named twice"), "{err}");
    let lm = "x1\ty1\tx2\ty2\tx3\ty3\tx4\ty4\tx5\ty5\tx1";
    std::fs::write(&list, format!("path\t{lm}\ntrain.rec#1\t1\t1\t2\t2\t3\t3\t4\t4\t5\t5\t9\n")).unwrap();
    let err = fails(&pack_list);
    assert!(err.contains("\"x1\" is named twice"), "{err}");
    std::fs::write(&list, "path\tgender\ntrain.rec#1\t1\ntrain.rec#999\t0\n").unwrap();
    let err = fails(&pack_list);
    assert!(err.contains("list table line 3") && err.contains("train.rec#999"), "{err}");
    assert!(!out.join("x.manifest.json").exists());
    // A folder pack's table refuses a column named twice as well.
    let folder = tmp.path().join("f");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.jpg"), image_bytes(0, 0, false)).unwrap();
    let table = tmp.path().join("t.tsv");
    std::fs::write(&table, "path\tlabel\tlabel\na.jpg\t0\t1\n").unwrap();
    let err = fails(&["pack", s(&folder), "--list", s(&table), "--name", "f", "--out", s(&out)]);
    assert!(err.contains("\"label\" is named twice"), "{err}");
}
