//! `trainer pack DIR/train.rec`: an insightface-layout RecordIO set written by the test
//! (header record, images, one split around the magic, identity records, one damaged
//! record, a `property` file) packs, and `unpack` gives back exactly the images with their
//! labels, with and without the `.idx`.

mod common;

use common::rec::{pack, Label, RecWriter, MAGIC};
use common::shards::{fails, idx_rows, manifest, ok, tree};
use common::{image_bytes, s};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A JPEG with the RecordIO magic at a 4-aligned offset inside a comment segment, so its
/// record is written in parts and must be joined with the magic put back.
fn jpeg_with_magic() -> Vec<u8> {
    let jpeg = image_bytes(1, 99, false);
    // SOI, then COM (FF FE, length 8: the length field, 2 pad bytes, the magic), then the rest.
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x08, b'x', b'x'];
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&jpeg[2..]);
    out
}

struct Set {
    rec: PathBuf,
    /// Image key → (class, image bytes), the records that must come back.
    images: BTreeMap<u64, (u32, Vec<u8>)>,
    damaged_key: u64,
}

/// Identities of 3, 2 and 2 images; key 0 is the header `[first identity key, end]`
/// (flag 2), identity records `[first image, end image]` follow the images. Image key 4
/// holds the magic; key 7, the last image, is damaged (its magic overwritten).
fn insightface_set(dir: &Path) -> Set {
    let per_id = [3u64, 2, 2];
    let n: u64 = per_id.iter().sum();
    let first_identity = n + 1;
    let mut w = RecWriter::default();
    w.write(
        0,
        &pack(Label::Many(vec![first_identity as f32, (first_identity + per_id.len() as u64) as f32]), 0, 0, b""),
    );
    let mut images = BTreeMap::new();
    let mut key = 1;
    let mut damaged_at = 0;
    for (class, &count) in per_id.iter().enumerate() {
        for i in 0..count {
            let img = if key == 4 { jpeg_with_magic() } else { image_bytes(class as u32, i as u32, key % 3 == 0) };
            // One record with a label array (flag > 0), the class first.
            let label = if key == 2 { Label::Many(vec![class as f32, 0.5]) } else { Label::One(class as f32) };
            let offset = w.write(key, &pack(label, key, 0, &img));
            if key == 7 {
                damaged_at = offset as usize;
            } else {
                images.insert(key, (class as u32, img));
            }
            key += 1;
        }
    }
    let mut start = 1;
    for &count in &per_id {
        w.write(key, &pack(Label::Many(vec![start as f32, (start + count) as f32]), 0, 0, b""));
        start += count;
        key += 1;
    }
    w.rec[damaged_at..damaged_at + 4].copy_from_slice(b"JUNK");
    let rec = w.save(dir, "train");
    std::fs::write(dir.join("property"), format!("{},112,112\n", per_id.len())).unwrap();
    Set { rec, images, damaged_key: 7 }
}

/// Packs `rec`, unpacks it, and checks that exactly the expected images come back with
/// their labels and list columns.
fn pack_and_compare(tmp: &Path, set: &Set, name: &str, extra: &[&str]) {
    let out = tmp.join(format!("shards-{name}"));
    let mut args = vec!["pack", s(&set.rec), "--name", name, "--shards", "2", "--out", s(&out)];
    args.extend_from_slice(extra);
    let stdout = ok(&args);
    assert!(stdout.contains(&format!("packed {} records of 3 classes into 2 shards", set.images.len())), "{stdout}");
    assert!(stdout.contains("skipped 1 bad inputs"), "{stdout}");
    let skipped = std::fs::read_to_string(out.join(format!("{name}.skipped.tsv"))).unwrap();
    assert_eq!(skipped.lines().count(), 2, "{skipped}");
    assert!(skipped.contains("bad magic"), "{skipped}");
    let back = tmp.join(format!("back-{name}"));
    ok(&["unpack", s(&out.join(name)), "--out", s(&back)]);
    let want: Vec<(String, Vec<u8>)> =
        set.images.iter().map(|(k, (_, img))| (format!("train.rec#{k}"), img.clone())).collect();
    assert_eq!(tree(&back), want);
    let mut labels = BTreeMap::new();
    let mut per_shard = Vec::new();
    for k in 0..2 {
        let rows = idx_rows(&out.join(format!("{name}-0000{k}-of-00002.idx")));
        per_shard.push(rows.len());
        for row in rows {
            labels.insert(row[0].clone(), (row[1].parse::<u32>().unwrap(), row[4].clone(), row[5].clone()));
        }
    }
    assert!(per_shard[0].abs_diff(per_shard[1]) <= 1, "{per_shard:?}");
    for (k, (class, _)) in &set.images {
        let (label, gender, age) = &labels[&format!("train.rec#{k}")];
        assert_eq!(label, class, "key {k}");
        let listed = *k == 1 || *k == 5;
        assert_eq!((gender.as_str(), age.as_str()), if listed { ("1", "4") } else { ("-1", "-1") }, "key {k}");
    }
    assert_eq!(manifest(&out, name)["num_classes"], 3);
    assert!(ok(&["verify", s(&out.join(name)), "--decode"]).contains("OK"));
}

#[test]
fn recordio_packs_and_unpacks_exactly_with_and_without_idx() {
    let tmp = tempfile::tempdir().unwrap();
    let set = insightface_set(tmp.path());
    assert!(!set.images.contains_key(&set.damaged_key));
    let list = tmp.path().join("attrs.tsv");
    std::fs::write(&list, "path\tgender\tage\ntrain.rec#1\t1\t4\ntrain.rec#5\t1\t4\n").unwrap();
    pack_and_compare(tmp.path(), &set, "indexed", &["--list", s(&list)]);
    std::fs::remove_file(set.rec.with_extension("idx")).unwrap();
    pack_and_compare(tmp.path(), &set, "scanned", &["--list", s(&list), "--group-by-label"]);
}

#[test]
fn recordio_strict_and_property_mismatch_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let set = insightface_set(tmp.path());
    let out = tmp.path().join("o");
    let err = fails(&["pack", s(&set.rec), "--name", "x", "--out", s(&out), "--strict"]);
    assert!(err.contains("train.rec#7") && err.contains("--strict"), "{err}");
    std::fs::write(tmp.path().join("property"), "5,112,112\n").unwrap();
    let err = fails(&["pack", s(&set.rec), "--name", "x", "--out", s(&out)]);
    assert!(err.contains("property declares 5 classes"), "{err}");
    assert!(!out.join("x.manifest.json").exists());
}
