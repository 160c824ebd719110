//! `trainer synth` and `trainer bench data` driven as a user types them.

mod common;
use common::output;
use std::collections::BTreeMap;
use std::path::Path;

/// Runs and asserts success, returning stdout and the logs.
fn ok(args: &[&str]) -> String {
    let out = output(args);
    let text = common::text(&out);
    assert!(out.status.success(), "trainer {args:?} failed:\n{text}");
    text
}

fn synth(dir: &Path, seed: &str, extra: &[&str]) {
    let d = dir.to_str().unwrap();
    let mut args =
        vec!["synth", "--out", d, "--identities", "6", "--per-identity", "4", "--size", "32", "--seed", seed];
    args.extend_from_slice(extra);
    ok(&args);
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for class in std::fs::read_dir(dir).unwrap() {
        let class = class.unwrap().path();
        if class.is_dir() {
            for f in std::fs::read_dir(&class).unwrap() {
                let f = f.unwrap().path();
                out.insert(f.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&f).unwrap());
            }
        }
    }
    out
}

#[test]
fn synth_is_deterministic_per_seed_and_writes_the_list_table() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    synth(&a, "7", &[]);
    synth(&b, "7", &[]);
    synth(&c, "8", &[]);
    let (fa, fb, fc) = (files(&a), files(&b), files(&c));
    assert_eq!(fa.len(), 24);
    assert!(fa.contains_key("id_00000/00000.jpg") && fa.contains_key("id_00005/00003.jpg"));
    assert_eq!(fa, fb);
    assert_ne!(fa, fc);
    let list = std::fs::read_to_string(a.join("list.tsv")).unwrap();
    let mut lines = list.lines();
    assert_eq!(lines.next(), Some("path\tlabel\tgender\tage"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 24);
    let mut per_label: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for r in &rows {
        assert!(fa.contains_key(r[0]), "{} listed but not written", r[0]);
        assert!(["0", "1"].contains(&r[2]) && ("0".."7").contains(&r[3]), "{r:?}");
        let prev = per_label.entry(r[1]).or_insert((r[2], r[3]));
        assert_eq!(*prev, (r[2], r[3]), "an identity keeps its gender and age");
    }
    assert_eq!(per_label.len(), 6);
}

#[test]
fn synth_images_of_one_identity_are_closer_than_others() {
    let t = tempfile::tempdir().unwrap();
    synth(t.path(), "3", &["--format", "png"]);
    let img = |id: usize, k: usize| {
        image::open(t.path().join(format!("id_{id:05}/{k:05}.png"))).unwrap().into_rgb8().into_raw()
    };
    let dist =
        |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64;
    let imgs: Vec<Vec<Vec<u8>>> = (0..6).map(|i| (0..4).map(|k| img(i, k)).collect()).collect();
    let (mut same, mut diff) = (Vec::new(), Vec::new());
    for i in 0..6 {
        for j in i..6 {
            for a in 0..4 {
                for b in 0..4 {
                    if i == j && a < b {
                        same.push(dist(&imgs[i][a], &imgs[j][b]));
                    } else if i < j {
                        diff.push(dist(&imgs[i][a], &imgs[j][b]));
                    }
                }
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&same) * 1.5 < mean(&diff), "same {:.1} vs different {:.1}", mean(&same), mean(&diff));
}

#[test]
fn synth_gender_layout_uses_gender_folders() {
    let t = tempfile::tempdir().unwrap();
    synth(t.path(), "1", &["--gender"]);
    let f = files(t.path());
    assert_eq!(f.len(), 24);
    assert!(f.keys().all(|k| k.starts_with("0_male/") || k.starts_with("1_female/")), "{:?}", f.keys());
    let list = std::fs::read_to_string(t.path().join("list.tsv")).unwrap();
    for row in list.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols[0].starts_with("1_female/"), cols[2] == "1", "{row}");
    }
}

fn packed(t: &Path, shards: &str) -> String {
    synth(&t.join("img"), "2", &[]);
    let out = t.join("packed");
    ok(&["pack", t.join("img").to_str().unwrap(), "--name", "s", "--shards", shards, "--out", out.to_str().unwrap()]);
    out.join("s").display().to_string()
}

#[test]
fn bench_data_reads_the_rank_shards_and_refuses_too_few() {
    let t = tempfile::tempdir().unwrap();
    let spec = packed(t.path(), "3");
    let small = ["--size", "16", "--batch-size", "4", "--batches", "3", "--reps", "2", "--workers", "2"];
    let mut args = vec!["bench", "data", "--train-sets", &spec, "--world", "2", "--rank", "1", "--json"];
    args.extend_from_slice(&small);
    let text = ok(&args);
    assert!(text.contains("s-00001-of-00003.bin") && !text.contains("s-00000-of-00003.bin"), "{text}");
    assert!(text.contains("median:") && text.contains("\"images_per_s\""), "{text}");

    let mut too_many = vec!["bench", "data", "--train-sets", &spec, "--world", "4", "--rank", "0"];
    too_many.extend_from_slice(&small);
    let out = output(&too_many);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("3 shard") && err.contains("4 ranks") && err.contains("--stripe-records"), "{err}");
    too_many.push("--stripe-records");
    ok(&too_many);
}

#[test]
fn a_corrupt_record_is_skipped_and_counted_not_a_crash() {
    let t = tempfile::tempdir().unwrap();
    let spec = packed(t.path(), "1");
    let bin = t.path().join("packed/s-00000-of-00001.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&bin, bytes).unwrap();
    // 12 batches of 4 from 24 records: the uniform sampler meets every record twice.
    let text = ok(&[
        "bench",
        "data",
        "--train-sets",
        &spec,
        "--size",
        "16",
        "--batch-size",
        "4",
        "--batches",
        "12",
        "--reps",
        "1",
        "--workers",
        "1",
    ]);
    assert!(text.contains("corrupt skipped"), "{text}");
    assert!(text.contains("s-00000-of-00001.bin record") && text.contains("crc32c"), "{text}");
}
