//! inspect / verify / unpack on the seed's format and on damaged datasets.

mod common;
use common::shards::*;
use common::*;
use std::path::Path;

/// Writes a seed-format pair (4 columns, no header) as the seed's packer did.
fn seed_pair(dir: &Path, name: &str, records: &[(&str, u32, Vec<u8>)]) {
    let (mut bin, mut idx) = (Vec::new(), String::new());
    for (path, label, bytes) in records {
        let start = bin.len();
        bin.extend_from_slice(bytes);
        idx.push_str(&format!("{path}\t{label}\t{start}\t{}\n", bin.len()));
    }
    std::fs::write(dir.join(format!("{name}.bin")), bin).unwrap();
    std::fs::write(dir.join(format!("{name}.idx")), idx).unwrap();
}

fn seed_records() -> Vec<(&'static str, u32, Vec<u8>)> {
    vec![
        ("__gender_test/0_male/enroll (10).jpg", 0, image_bytes(0, 10, false)),
        ("__gender_test/0_male/enroll (2).jpg", 0, image_bytes(0, 2, false)),
        ("__gender_test/1_female/été (1).png", 1, image_bytes(1, 1, true)),
    ]
}

#[test]
fn seed_format_reads_verifies_and_unpacks() {
    let tmp = tempfile::tempdir().unwrap();
    seed_pair(tmp.path(), "gender_test", &seed_records());
    let spec = tmp.path().join("gender_test");
    let inspect = ok(&["inspect", s(&spec), "--head", "3"]);
    assert!(inspect.contains("records 3  classes 2") && inspect.contains("legacy"), "{inspect}");
    assert!(inspect.contains("__gender_test/0_male/enroll (10).jpg\tlabel 0"), "{inspect}");
    assert!(ok(&["verify", s(&spec)]).contains("OK: 3 records in 1 shards"));
    let out = tmp.path().join("out");
    ok(&["unpack", s(&spec), "--out", s(&out)]);
    let expected: Vec<(String, Vec<u8>)> = {
        let mut v: Vec<_> = seed_records().into_iter().map(|(p, _, b)| (p.to_string(), b)).collect();
        v.sort();
        v
    };
    assert_eq!(tree(&out), expected);
}

#[test]
fn seed_format_record_that_does_not_decode_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let mut records = seed_records();
    records[1].2 = b"definitely not a jpeg".to_vec();
    seed_pair(tmp.path(), "g", &records);
    let err = fails(&["verify", s(&tmp.path().join("g"))]);
    assert!(err.contains("g.bin: record 1 (__gender_test/0_male/enroll (2).jpg): does not decode"), "{err}");
}

#[test]
fn flipped_payload_byte_is_reported_with_shard_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 5);
    let out = tmp.path().join("o");
    ok(&["pack", s(&src), "--name", "d", "--shards", "2", "--out", s(&out)]);
    let idx = out.join("d-00001-of-00002.idx");
    let rows = idx_rows(&idx);
    let (path, start): (&str, usize) = (&rows[2][0], rows[2][2].parse().unwrap());
    let bin = out.join("d-00001-of-00002.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes[start + 7] ^= 0x40;
    std::fs::write(&bin, bytes).unwrap();
    let err = fails(&["verify", s(&out.join("d"))]);
    let want = format!("d-00001-of-00002.bin: record 2 ({path}): crc32c mismatch");
    assert!(err.contains(&want), "want {want:?} in:\n{err}");
    assert_eq!(err.matches("FAIL").count(), 1, "{err}");
    let unpack = fails(&["unpack", s(&out.join("d")), "--out", s(&tmp.path().join("u"))]);
    assert!(unpack.contains("record 2") && unpack.contains("crc32c mismatch"), "{unpack}");
}

#[test]
fn truncated_bin_gives_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = class_folders(tmp.path(), 2, 3);
    let out = tmp.path().join("o");
    ok(&["pack", s(&src), "--name", "d", "--out", s(&out)]);
    let bin = out.join("d-00000-of-00001.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() - 10]).unwrap();
    let last = idx_rows(&out.join("d-00000-of-00001.idx")).len() - 1;
    let err = fails(&["inspect", s(&out.join("d"))]);
    assert!(err.contains(&format!("d-00000-of-00001.bin is {} bytes but record {last}", bytes.len() - 10)), "{err}");
    assert!(err.contains("truncated"), "{err}");
    let err = fails(&["verify", s(&out.join("d"))]);
    assert!(
        err.contains(&format!("record {last}")) && err.contains(&format!("only {} bytes", bytes.len() - 10)),
        "{err}"
    );
}

#[test]
fn idx_offsets_out_of_range_give_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    seed_pair(tmp.path(), "g", &seed_records());
    let idx = tmp.path().join("g.idx");
    let text = std::fs::read_to_string(&idx).unwrap();
    let bad = text.replacen("\t0\t0\t", "\t0\t0\t999999", 1);
    std::fs::write(&idx, bad).unwrap();
    let err = fails(&["inspect", s(&tmp.path().join("g"))]);
    assert!(
        err.contains("record 0 (__gender_test/0_male/enroll (10).jpg)") && err.contains("ends at byte 999999"),
        "{err}"
    );
    std::fs::write(&idx, text.replacen("\t0\t0\t", "\t0\t900\t", 1)).unwrap();
    let err = fails(&["verify", s(&tmp.path().join("g"))]);
    assert!(err.contains("line 1") && err.contains("start 900 is after end"), "{err}");
}

#[test]
fn garbage_idx_is_an_error_naming_file_and_line_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    seed_pair(tmp.path(), "g", &seed_records());
    let idx = tmp.path().join("g.idx");
    let mut text = std::fs::read_to_string(&idx).unwrap();
    text.push_str("\u{1}\u{2}garbage\twith\ttoo many\tcolumns\t-5\n");
    std::fs::write(&idx, text).unwrap();
    let err = fails(&["verify", s(&tmp.path().join("g"))]);
    assert!(err.contains("g.idx") && err.contains("line 4"), "{err}");
}

#[test]
fn unpack_refuses_paths_that_escape_the_output_dir() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, path) in [("up", "../escaped.jpg"), ("abs", "/tmp/absolute.jpg")] {
        seed_pair(
            tmp.path(),
            name,
            &[("ok/fine.jpg", 0, image_bytes(0, 0, false)), (path, 0, image_bytes(0, 1, false))],
        );
        let out = tmp.path().join(format!("out_{name}"));
        let err = fails(&["unpack", s(&tmp.path().join(name)), "--out", s(&out)]);
        assert!(err.contains("refusing") && err.contains(path), "{err}");
        assert!(!out.exists(), "nothing may be written when a path is refused");
    }
    assert!(!tmp.path().join("escaped.jpg").exists());
}

#[test]
fn missing_dataset_names_what_was_expected() {
    let tmp = tempfile::tempdir().unwrap();
    seed_pair(tmp.path(), "present", &seed_records());
    let err = fails(&["inspect", s(&tmp.path().join("absent"))]);
    assert!(err.contains("no dataset at") && err.contains("present"), "{err}");
}
