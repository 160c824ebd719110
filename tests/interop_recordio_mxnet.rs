//! Cross-check with MXNet itself (`TRAINER_REF_PYTHON` with mxnet 1.9.1): sets written by
//! `mx.recordio.MXIndexedRecordIO` read the same through this reader as through MXNet, and
//! sets written by the test writer read the same through MXNet.

mod common;

use common::hex;
use common::rec::{bytes, pack, Label, RecWriter, MAGIC};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use trainer_data::interop::recordio::{IdxSource, Options, RecordItem, RecordReader};

type Records = BTreeMap<u64, Value>;

/// MXNet's view of each set (`prefixes` without `.rec`): key → {flag, label (a number or
/// the label array), id, id2, image (hex)}. The script also checks that MXNet reads the
/// same records through the idx and front to back.
fn mxnet_records(python: &Path, prefixes: &[&Path]) -> Vec<Records> {
    let mut args = vec!["read"];
    args.extend(prefixes.iter().map(|p| p.to_str().unwrap()));
    let out = common::run_script(python, "mxnet_recordio.py", &args);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |p: &Path| {
        lines
            .iter()
            .filter(|v| v["file"] == p.to_str().unwrap())
            .map(|v| (v["key"].as_u64().unwrap(), v.clone()))
            .collect()
    };
    prefixes.iter().map(|p| of(p)).collect()
}

fn labels(v: &Value) -> Vec<f64> {
    match &v["label"] {
        Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

/// Every record MXNet read must come out of our reader with the same meaning, and nothing else.
fn compare(rec: &Path, mx: &Records, idx: bool) {
    let options = Options { idx: if idx { IdxSource::Beside } else { IdxSource::Ignore }, ..Options::default() };
    let mut reader = RecordReader::open(rec, &options).unwrap();
    let mut seen = 0;
    if let Some(h) = reader.header() {
        assert_eq!(labels(&mx[&0]), vec![h.first_identity_key as f64, h.end_key as f64]);
        seen += 1;
    }
    for item in reader.by_ref() {
        match item.unwrap() {
            RecordItem::Image(r) => {
                let m = &mx[&r.key.unwrap()];
                let want = labels(m);
                let got: Vec<f64> =
                    std::iter::once(r.label).chain(r.extra_labels.iter().copied()).map(f64::from).collect();
                assert_eq!(got, want, "labels of key {:?}", r.key);
                assert_eq!((r.id, r.id2), (m["id"].as_u64().unwrap(), m["id2"].as_u64().unwrap()));
                assert_eq!(hex(&r.image), m["image"].as_str().unwrap(), "image of key {:?}", r.key);
            }
            RecordItem::Identity(r) => {
                let m = &mx[&r.key.unwrap()];
                assert_eq!(labels(m), vec![r.images.start as f64, r.images.end as f64]);
                assert_eq!(m["image"], "");
            }
            RecordItem::Skipped(s) => panic!("{} idx={idx}: skipped {s:?}", rec.display()),
        }
        seen += 1;
    }
    assert_eq!(seen, mx.len(), "{} idx={idx}: every record MXNet read", rec.display());
}

#[test]
fn sets_written_by_mxnet_read_as_mxnet_reads_them() {
    let Some(python) = common::ref_python("mxnet, numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    common::run_script(&python, "mxnet_recordio.py", &["write", dir.path().to_str().unwrap()]);
    let prefixes = [dir.path().join("train"), dir.path().join("plain")];
    let sets = mxnet_records(&python, &[&prefixes[0], &prefixes[1]]);
    for (prefix, mx) in prefixes.iter().zip(&sets) {
        let name = prefix.file_name().unwrap().to_str().unwrap();
        let rec = prefix.with_extension("rec");
        let raw = std::fs::read(&rec).unwrap();
        let split = raw.chunks(4).step_by(1).filter(|w| *w == MAGIC.to_le_bytes()).count() > mx.len();
        assert!(split, "{name}: MXNet was expected to split a record");
        for idx in [true, false] {
            compare(&rec, mx, idx);
        }
    }
    let mut reader = RecordReader::open(&dir.path().join("train.rec"), &Options::default()).unwrap();
    assert_eq!(reader.header().map(|h| (h.first_identity_key, h.end_key)), Some((11, 15)));
    assert_eq!(reader.by_ref().filter(|i| matches!(i, Ok(RecordItem::Image(_)))).count(), 10);
}

#[test]
fn sets_written_by_the_test_writer_read_in_mxnet() {
    let Some(python) = common::ref_python("mxnet, numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecWriter::default();
    let m = MAGIC.to_le_bytes();
    let mut split_image = bytes(1, 16);
    split_image.extend(m);
    split_image.extend(m);
    split_image.extend(bytes(2, 9));
    split_image.extend(m);
    w.write(0, &pack(Label::One(4.0), 1, 2, &split_image));
    w.write(1, &pack(Label::Many(vec![3.0, -0.75]), 3, 4, &bytes(3, 33)));
    w.write(2, &pack(Label::One(1.0), 5, 6, &m));
    let rec = w.save(dir.path(), "ours");
    let mx = mxnet_records(&python, &[&dir.path().join("ours")]).remove(0);
    assert_eq!(mx.len(), 3);
    assert_eq!(mx[&0]["image"].as_str().unwrap(), hex(&split_image));
    assert_eq!(labels(&mx[&1]), vec![3.0, -0.75]);
    for idx in [true, false] {
        compare(&rec, &mx, idx);
    }
}
