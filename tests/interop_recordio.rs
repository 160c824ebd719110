mod common;

use common::rec::{bytes, frame, pack, part_header, Label, RecWriter, MAGIC};
use std::path::Path;
use trainer_data::interop::recordio::{Header, IdxSource, ImageRecord, Options, RecordItem, RecordReader};

fn read_all(rec: &Path, idx: bool) -> (Vec<RecordItem>, RecordReader) {
    let options = Options {
        idx: if idx { IdxSource::Beside } else { IdxSource::Ignore },
        buffer_bytes: 64 << 10,
        ..Options::default()
    };
    let mut reader = RecordReader::open(rec, &options).unwrap();
    let items: Vec<RecordItem> = reader.by_ref().map(|r| r.unwrap()).collect();
    (items, reader)
}

fn images(items: &[RecordItem]) -> Vec<&ImageRecord> {
    items.iter().filter_map(|i| if let RecordItem::Image(r) = i { Some(r) } else { None }).collect()
}

fn skipped(items: &[RecordItem]) -> Vec<(Option<u64>, u64, String)> {
    items
        .iter()
        .filter_map(|i| if let RecordItem::Skipped(s) = i { Some((s.key, s.offset, s.reason.clone())) } else { None })
        .collect()
}

/// An image whose bytes hold the magic at 4-aligned payload offsets (the header is 24
/// bytes, so image offset 0 is aligned): at the start, twice in a row, and at the very end,
/// plus once unaligned, which must not split.
fn image_with_magics() -> Vec<u8> {
    let m = MAGIC.to_le_bytes();
    let mut img = m.to_vec();
    img.extend(bytes(7, 40));
    img.extend(m);
    img.extend(m);
    img.extend(bytes(8, 13));
    img.extend(m); // at image offset 65: unaligned
    img.extend(bytes(9, 3)); // now 4-aligned again
    img.extend(m);
    img
}

fn part_flags(rec: &[u8]) -> Vec<u32> {
    let mut flags = Vec::new();
    let mut at = 0;
    while at + 8 <= rec.len() {
        let lrec = u32::from_le_bytes(rec[at + 4..at + 8].try_into().unwrap());
        flags.push(lrec >> 29);
        at += 8 + ((lrec & ((1 << 29) - 1)) as usize).div_ceil(4) * 4;
    }
    flags
}

#[test]
fn plain_records_and_split_records_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecWriter::default();
    let mut expected = Vec::new();
    for k in 0..6u64 {
        let img = if k == 3 { image_with_magics() } else { bytes(k, 50 + k as usize * 37) };
        let label = if k == 4 { Label::Many(vec![11.0, 0.25, -3.5]) } else { Label::One(k as f32 * 2.0) };
        let (class, extra) = if k == 4 { (11.0, vec![0.25, -3.5]) } else { (k as f32 * 2.0, vec![]) };
        let offset = w.write(k, &pack(label, k + 100, 7, &img));
        expected.push(ImageRecord {
            key: Some(k),
            offset,
            label: class,
            extra_labels: extra,
            id: k + 100,
            id2: 7,
            image: img,
            outside_layout: false,
        });
    }
    assert_eq!(part_flags(&w.rec).iter().filter(|&&f| f != 0).count(), 5, "the magic image must be written in 5 parts");
    let rec = w.save(dir.path(), "plain");
    for idx in [true, false] {
        let (items, reader) = read_all(&rec, idx);
        assert_eq!(reader.header(), None);
        assert_eq!(items, expected.iter().cloned().map(RecordItem::Image).collect::<Vec<_>>(), "idx={idx}");
        assert_eq!(reader.summary().images, 6);
    }
}

/// insightface's layout: record 0 = [first identity key, end], images 1..first,
/// identity records first..end holding [first image, end image].
fn insightface_set(dir: &Path) -> (std::path::PathBuf, Vec<(u64, f32, Vec<u8>)>) {
    let mut w = RecWriter::default();
    let per_id = [2u64, 3, 1];
    let n_images: u64 = per_id.iter().sum();
    let first = n_images + 1;
    w.write(0, &pack(Label::Many(vec![first as f32, (first + 3) as f32]), 0, 0, b""));
    let mut expected = Vec::new();
    let mut key = 1;
    for (class, &n) in per_id.iter().enumerate() {
        for _ in 0..n {
            let img = if key == 2 { image_with_magics() } else { bytes(key, 60) };
            w.write(key, &pack(Label::One(class as f32), key, 0, &img));
            expected.push((key, class as f32, img));
            key += 1;
        }
    }
    let mut start = 1;
    for (i, &n) in per_id.iter().enumerate() {
        w.write(first + i as u64, &pack(Label::Many(vec![start as f32, (start + n) as f32]), 0, 0, b""));
        start += n;
    }
    (w.save(dir, "train"), expected)
}

#[test]
fn insightface_header_and_identity_records() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, expected) = insightface_set(dir.path());
    std::fs::write(dir.path().join("property"), "3,112,112\n").unwrap();
    for idx in [true, false] {
        let (items, reader) = read_all(&rec, idx);
        assert_eq!(reader.header(), Some(Header { first_identity_key: 7, end_key: 10 }));
        let got: Vec<_> = images(&items).iter().map(|r| (r.key.unwrap(), r.label, r.image.clone())).collect();
        assert_eq!(got, expected, "idx={idx}");
        let ids: Vec<_> = items
            .iter()
            .filter_map(|i| if let RecordItem::Identity(r) = i { Some((r.identity, r.images.clone())) } else { None })
            .collect();
        assert_eq!(ids, vec![(Some(0), 1..3), (Some(1), 3..6), (Some(2), 6..7)]);
        assert!(skipped(&items).is_empty());
        let warnings = reader.check_property().unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}"); // the test images are not 112x112 images
        assert!(warnings[0].contains("6 images are not 112x112"), "{warnings:?}");
    }
    std::fs::write(dir.path().join("property"), "4,112,112\n").unwrap();
    let err = RecordReader::open(&rec, &Options::default()).err().expect("a class-count mismatch is an error");
    assert!(format!("{err:#}").contains("property declares 4 classes but the header record lists 3"), "{err:#}");
}

#[test]
fn property_errors_and_warnings_for_plain_sets() {
    let dir = tempfile::tempdir().unwrap();
    let png = |h: u32, w: u32| {
        let mut p = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        p.extend(w.to_be_bytes());
        p.extend(h.to_be_bytes());
        p
    };
    let mut w = RecWriter::default();
    w.write(0, &pack(Label::One(0.0), 0, 0, &png(112, 112)));
    w.write(1, &pack(Label::One(2.0), 0, 0, &png(112, 112)));
    let rec = w.save(dir.path(), "plain");
    std::fs::write(dir.path().join("property"), "4,112,112").unwrap();
    let (_, reader) = read_all(&rec, true);
    assert_eq!(
        reader.check_property().unwrap(),
        vec!["property declares 4 classes but only 2 have images".to_string()]
    );
    std::fs::write(dir.path().join("property"), "2,112,112").unwrap();
    let (_, reader) = read_all(&rec, true);
    let err = reader.check_property().unwrap_err();
    assert!(format!("{err:#}").contains("class 2 was read but property declares only 2 classes"), "{err:#}");
}

/// Good records 0, 2, 4, 6; record 1 has a bad magic, 3 an impossible length, 5 is split
/// but lost its last part, 7 is cut off by the end of the file.
fn damaged_set(dir: &Path) -> (std::path::PathBuf, Vec<u64>, Vec<u64>) {
    let mut w = RecWriter::default();
    let mut offsets = Vec::new();
    for k in 0..8u64 {
        offsets.push(w.rec.len() as u64);
        w.idx.push((k, w.rec.len() as u64));
        let payload = pack(Label::One(k as f32), k, 0, &bytes(k, 30 + 4 * k as usize));
        match k {
            1 => {
                frame(&mut w.rec, &payload);
                let at = offsets[1] as usize;
                w.rec[at] ^= 0xff;
            }
            3 => {
                part_header(&mut w.rec, 0, (1 << 29) - 4);
                w.rec.extend(&payload);
                w.rec.resize(w.rec.len().div_ceil(4) * 4, 0);
            }
            5 => {
                let mut split = payload.clone();
                split.resize(split.len().div_ceil(4) * 4, 0);
                split.extend(MAGIC.to_le_bytes());
                split.extend(bytes(99, 8));
                let mut parts = Vec::new();
                frame(&mut parts, &split);
                assert_eq!(part_flags(&parts), vec![1, 3]);
                w.rec.extend(&parts[..parts.len() - 16]); // without the last part (header + 8 bytes)
            }
            _ => frame(&mut w.rec, &payload),
        }
    }
    let cut = w.rec.len() - 6;
    w.rec.truncate(cut);
    (w.save(dir, "damaged"), offsets, vec![0, 2, 4, 6])
}

#[test]
fn damaged_records_are_skipped_and_reported_with_idx() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, offsets, good) = damaged_set(dir.path());
    let (items, reader) = read_all(&rec, true);
    let keys: Vec<u64> = images(&items).iter().map(|r| r.key.unwrap()).collect();
    assert_eq!(keys, good);
    for r in images(&items) {
        assert_eq!(r.image, bytes(r.key.unwrap(), 30 + 4 * r.key.unwrap() as usize));
    }
    let bad = skipped(&items);
    let where_: Vec<_> = bad.iter().map(|(k, o, _)| (*k, *o)).collect();
    assert_eq!(where_, [1, 3, 5, 7].iter().map(|&k| (Some(k), offsets[k as usize])).collect::<Vec<_>>(), "{bad:#?}");
    assert!(bad[0].2.contains("bad magic"), "{}", bad[0].2);
    assert!(bad[1].2.contains("claims 536870908 bytes"), "{}", bad[1].2);
    assert!(bad[2].2.contains("without its last part") || bad[2].2.contains("next indexed record"), "{}", bad[2].2);
    assert!(bad[3].2.contains("end of the file"), "{}", bad[3].2);
    assert_eq!(reader.summary().skipped, 4);
}

#[test]
fn damaged_records_are_skipped_and_resynchronised_without_idx() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, offsets, good) = damaged_set(dir.path());
    let (items, _) = read_all(&rec, false);
    let got: Vec<(f32, Vec<u8>)> = images(&items).iter().map(|r| (r.label, r.image.clone())).collect();
    let want: Vec<(f32, Vec<u8>)> = good.iter().map(|&k| (k as f32, bytes(k, 30 + 4 * k as usize))).collect();
    assert_eq!(got, want);
    assert_eq!(images(&items)[0].key, Some(0), "keys are ordinals until the first scan");
    assert_eq!(images(&items)[1].key, None, "and unknown after it");
    let bad = skipped(&items);
    let at: Vec<u64> = bad.iter().map(|(_, o, _)| *o).collect();
    assert_eq!(at, vec![offsets[1], offsets[3], offsets[5], offsets[7]], "{bad:#?}");
    assert!(bad[2].2.contains("without its last part"), "{}", bad[2].2);
}

#[test]
fn idx_entries_that_cannot_be_records_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecWriter::default();
    for k in 0..4 {
        w.write(k, &pack(Label::One(k as f32), 0, 0, &bytes(k, 20)));
    }
    let len = w.rec.len() as u64;
    w.idx[1].1 += 2; // unaligned
    w.idx[3].1 -= 8; // inside record 2
    w.idx.push((9, len + 64)); // past the end
    let rec = w.save(dir.path(), "badidx");
    let (items, _) = read_all(&rec, true);
    let bad = skipped(&items);
    let reasons: Vec<(Option<u64>, &str)> = bad.iter().map(|(k, _, r)| (*k, r.as_str())).collect();
    let expect = [
        (Some(1), "not 4-aligned"),
        (None, "52 bytes before the record with key 2 are not in the idx"),
        (Some(2), "before the next indexed record"),
        (Some(3), "bad magic"),
        (Some(9), "past the end of the file"),
    ];
    assert_eq!(reasons.len(), expect.len(), "{bad:#?}");
    for ((key, reason), (want_key, want)) in reasons.iter().zip(expect) {
        assert!(*key == want_key && reason.contains(want), "{key:?} {reason:?} should be {want_key:?} {want:?}");
    }
    assert_eq!(images(&items).iter().map(|r| r.key).collect::<Vec<_>>(), vec![Some(0)]);

    std::fs::write(rec.with_extension("idx"), "0\t0\n1\tnope\n").unwrap();
    let err = RecordReader::open(&rec, &Options::default()).err().expect("a broken idx line is an error");
    let text = format!("{err:#}");
    assert!(text.contains("badidx.idx") && text.contains("line 2"), "{text}");
}

/// Truncating a valid set anywhere yields a prefix of its images, exactly, and reports the rest.
#[test]
fn every_truncation_yields_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, expected) = insightface_set(dir.path());
    let full = std::fs::read(&rec).unwrap();
    for cut in (0..full.len()).step_by(3) {
        std::fs::write(&rec, &full[..cut]).unwrap();
        for idx in [true, false] {
            let (items, _) = read_all(&rec, idx);
            let got: Vec<_> = images(&items).iter().map(|r| (r.label, r.image.clone())).collect();
            let want: Vec<_> = expected.iter().take(got.len()).map(|(_, l, i)| (*l, i.clone())).collect();
            assert_eq!(got, want, "cut at {cut}, idx={idx}");
            assert!(items.len() <= expected.len() + 5, "cut at {cut}: {} items", items.len());
        }
    }
}

/// Corrupted bytes anywhere never panic, never loop, and never yield more items than the
/// file could hold.
#[test]
fn corruption_never_panics_or_loops() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, _) = insightface_set(dir.path());
    let full = std::fs::read(&rec).unwrap();
    for seed in 0..300u64 {
        let noise = bytes(seed + 1000, 16);
        let mut data = full.clone();
        for j in 0..4 {
            let at = (u32::from_le_bytes(noise[4 * j..4 * j + 4].try_into().unwrap()) as usize) % data.len();
            data[at] = noise[j + 8];
        }
        std::fs::write(&rec, &data).unwrap();
        for idx in [true, false] {
            let options =
                Options { idx: if idx { IdxSource::Beside } else { IdxSource::Ignore }, ..Options::default() };
            let Ok(reader) = RecordReader::open(&rec, &options) else { continue };
            let items: Vec<_> = reader.take(10_000).collect::<Result<Vec<_>, _>>().unwrap();
            assert!(items.len() <= data.len() / 4 + 12, "seed {seed}: {} items", items.len());
        }
    }
    let garbage: Vec<u8> = MAGIC.to_le_bytes().iter().copied().cycle().take(4096).collect();
    std::fs::write(&rec, &garbage).unwrap();
    std::fs::remove_file(rec.with_extension("idx")).unwrap();
    let items: Vec<_> =
        RecordReader::open(&rec, &Options::default()).unwrap().take(10_000).collect::<Result<Vec<_>, _>>().unwrap();
    assert!(
        !items.is_empty() && items.len() < 10_000 && items.iter().all(|i| matches!(i, RecordItem::Skipped(_))),
        "{}",
        items.len()
    );
}
