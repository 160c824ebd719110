use super::*;

/// Three events as tensorboard 2.21's own `RecordWriter` frames them (Python, protobuf 7):
/// `Event(wall_time=1764400000.25, file_version="brain.Event:2")`,
/// `Event(wall_time=1764400001.5, step=20, summary=[Value(tag="loss", simple_value=21.3)])` and
/// `Event(wall_time=1764400002.75, step=21, session_log=SessionLog(status=START))`.
const REFERENCE: &str = "1800000000000000a37f4b2209000010e0a64ada411a0d627261696e2e4576656e743a32cec102ae\
                         1a00000000000000129bd82d09000060e0a64ada4110142a0d0a0b0a046c6f7373156666aa412af1b1af\
                         0f000000000000006d532b09090000b0e0a64ada4110153a02080149516701";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn scalar(tag: &str, value: f32) -> Scalar {
    Scalar { tag: tag.into(), value }
}

#[test]
fn encoding_matches_tensorboards_own_writer() {
    let mut out = Vec::new();
    for ev in [
        Event { wall_time: 1764400000.25, file_version: Some(FILE_VERSION.into()), ..Event::default() },
        Event { wall_time: 1764400001.5, step: 20, scalars: vec![scalar("loss", 21.3)], ..Event::default() },
        Event { wall_time: 1764400002.75, step: 21, restart: true, ..Event::default() },
    ] {
        let mut data = Vec::new();
        proto::encode_event(&mut data, &ev.head(), ev.scalars.iter().map(|s| (s.tag.as_str(), s.value)));
        record::write_record(&mut out, &data).unwrap();
    }
    assert_eq!(out, unhex(REFERENCE));
}

#[test]
fn round_trip_keeps_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let long_tag = "t".repeat(300); // lengths above 127 take two varint bytes
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.scalar_at("loss", 20, 21.3, 1000.5).unwrap();
    w.scalar_at("lr/backbone", -3, 0.1, 1001.0).unwrap();
    w.scalar_at(&long_tag, i64::MAX, f64::from(f32::MAX), 1002.0).unwrap();
    w.scalars_at(40, &[("a", 1.0), ("b", -2.5)], 1003.0).unwrap();
    w.scalar("élan", 0, 7.0).unwrap();
    w.flush().unwrap();
    let evs = read_events(w.path()).unwrap();
    assert_eq!(evs.len(), 6);
    assert_eq!(evs[0].file_version.as_deref(), Some(FILE_VERSION));
    assert!(evs[0].scalars.is_empty() && evs[0].wall_time > 1.7e9);
    assert_eq!(evs[1], Event { wall_time: 1000.5, step: 20, scalars: vec![scalar("loss", 21.3)], ..Event::default() });
    assert_eq!((evs[2].step, evs[2].scalars[0].tag.as_str()), (-3, "lr/backbone"));
    assert_eq!((evs[3].step, &evs[3].scalars[0]), (i64::MAX, &scalar(&long_tag, f32::MAX)));
    assert_eq!(evs[4].scalars, vec![scalar("a", 1.0), scalar("b", -2.5)]);
    assert_eq!((evs[5].step, &evs[5].scalars[0]), (0, &scalar("élan", 7.0)));
    assert!(evs[5].wall_time >= evs[0].wall_time);
}

#[test]
fn file_version_event_comes_first_even_without_scalars() {
    let dir = tempfile::tempdir().unwrap();
    let path = EventWriter::create(dir.path()).unwrap().path().to_path_buf();
    let evs = read_events(&path).unwrap();
    assert_eq!(evs.len(), 1, "dropping the writer flushes the first event");
    assert_eq!(evs[0].file_version.as_deref(), Some("brain.Event:2"));
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("events.out.tfevents.") && name.contains(&format!(".{}.{}.", hostname(), std::process::id())),
        "{name}"
    );
}

#[test]
fn writers_never_share_or_reuse_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = EventWriter::create(dir.path()).unwrap();
    let b = EventWriter::create(dir.path()).unwrap();
    assert_ne!(a.path(), b.path());
    // Occupy the names the next writer would take (this second and the next), as a
    // file left by an earlier process with the same pid would.
    let next = NEXT_FILE.load(Ordering::Relaxed);
    let secs = now() as u64;
    let taken: Vec<PathBuf> = (secs..secs + 2)
        .map(|s| dir.path().join(format!("events.out.tfevents.{s}.{}.{}.{next}", hostname(), std::process::id())))
        .collect();
    for p in &taken {
        std::fs::write(p, b"earlier run").unwrap();
    }
    let c = EventWriter::create(dir.path()).unwrap();
    assert!(!taken.contains(&c.path().to_path_buf()), "{}", c.path().display());
    for p in &taken {
        assert_eq!(std::fs::read(p).unwrap(), b"earlier run");
    }
    drop((a, b, c));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5);
}

/// Writes a file with three records and returns it with the offset of the second record.
fn three_records(dir: &Path) -> (PathBuf, usize) {
    let mut w = EventWriter::create(dir).unwrap();
    w.scalar_at("loss", 1, 2.0, 10.0).unwrap();
    w.scalar_at("loss", 2, 1.5, 11.0).unwrap();
    w.flush().unwrap();
    let bytes = std::fs::read(w.path()).unwrap();
    let first_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (w.path().to_path_buf(), first_len + record::OVERHEAD)
}

fn error_after_flipping(byte_in_record: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (path, second) = three_records(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[second + byte_in_record] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let err = format!("{:#}", read_events(&path).unwrap_err());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(&format!("record 1 at byte offset {second}")), "{err}");
    err
}

#[test]
fn a_flipped_byte_in_the_length_its_crc_or_the_data_is_reported() {
    for (byte, kind) in [(0, "length"), (9, "length"), (14, "data")] {
        let err = error_after_flipping(byte);
        assert!(err.contains(&format!("{kind} CRC mismatch")), "byte {byte}: {err}");
    }
}

#[test]
fn a_flipped_data_crc_byte_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (path, second) = three_records(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let len = u64::from_le_bytes(bytes[second..second + 8].try_into().unwrap()) as usize;
    bytes[second + 12 + len + 2] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let err = format!("{:#}", read_events(&path).unwrap_err());
    assert!(err.contains("record 1 at byte offset") && err.contains("data CRC mismatch"), "{err}");
}

#[test]
fn a_truncated_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three_records(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = format!("{:#}", read_events(&path).unwrap_err());
    assert!(err.contains("record 2 at byte offset") && err.contains("truncated data"), "{err}");
    let last = record::split_records(&bytes).unwrap()[2].offset;
    std::fs::write(&path, &bytes[..last + 5]).unwrap();
    let err = format!("{:#}", read_events(&path).unwrap_err());
    assert!(err.contains("truncated header"), "{err}");
}

/// Protobuf bytes a newer writer might produce: fields this reader does not know, and a
/// summary value that is not a simple scalar.
#[test]
fn unknown_fields_are_skipped() {
    let mut data = Vec::new();
    data.extend_from_slice(&[0x09]); // wall_time
    data.extend_from_slice(&2.5f64.to_le_bytes());
    data.extend_from_slice(&[0x10, 0x07]); // step 7
    data.extend_from_slice(&[0x22, 0x03, 1, 2, 3]); // field 4 (graph_def), bytes
    data.extend_from_slice(&[0xb8, 0x06, 0x96, 0x01]); // field 103, varint 150
    data.extend_from_slice(&[0x45, 0, 0, 0, 0]); // field 8, fixed32
    let image = [0x0a, 0x01, b'i', 0x22, 0x02, 9, 9]; // Value{tag "i", image}
    let scalar = [0x0a, 0x01, b's', 0x4a, 0x00, 0x15, 0, 0, 0x80, 0x3f]; // Value{tag "s", metadata {}, 1.0}
    data.extend_from_slice(&[0x2a, (2 + image.len() + 2 + scalar.len()) as u8, 0x0a, image.len() as u8]);
    data.extend_from_slice(&image);
    data.extend_from_slice(&[0x0a, scalar.len() as u8]);
    data.extend_from_slice(&scalar);
    let ev = proto::decode_event(&data).unwrap();
    assert_eq!(ev, Event { wall_time: 2.5, step: 7, scalars: vec![self::scalar("s", 1.0)], ..Event::default() });
}

#[test]
fn a_bad_protobuf_names_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.out.tfevents.bad");
    let mut bytes = Vec::new();
    record::write_record(&mut bytes, &[0x09, 0, 0]).unwrap(); // wall_time cut short
    std::fs::write(&path, &bytes).unwrap();
    let err = format!("{:#}", read_events(&path).unwrap_err());
    assert!(err.contains("record 0 at byte offset 0: bad Event protobuf") && err.contains("wants 8 bytes"), "{err}");
    for bad in [&[0x08u8, 0x80][..], &[0x0b][..], &[0x11, 0, 0, 0, 0, 0, 0, 0, 0][..]] {
        assert!(proto::decode_event(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let err = format!("{:#}", read_events(Path::new("/nonexistent/events.out.tfevents.1")).unwrap_err());
    assert!(err.contains("/nonexistent/events.out.tfevents.1"), "{err}");
}

#[test]
fn progress_keys_get_grouped_tags() {
    let cases = [
        ("loss", "loss"),
        ("loss_FR", "loss/FR"),
        ("loss_scale", "amp/loss_scale"),
        ("amp_skipped_steps", "amp/skipped_steps"),
        ("lr", "lr"),
        ("lr_backbone", "lr/backbone"),
        ("images_per_s", "speed/images_per_s"),
        ("data_wait_frac", "speed/data_wait_frac"),
        ("host_syncs", "speed/host_syncs"),
        ("steps_without_decrease", "plateau/steps_without_decrease"),
        ("steps_without_decrease_Gender", "plateau/steps_without_decrease/Gender"),
        ("steps_without_decrease_robust", "plateau/steps_without_decrease_robust"),
        ("steps_without_decrease_robust_FR", "plateau/steps_without_decrease_robust/FR"),
        ("allreduce_bytes", "comm/allreduce_bytes"),
        ("allgather_bytes", "comm/allgather_bytes"),
        ("head_bytes_per_rank", "comm/head_bytes_per_rank"),
        ("epoch", "run/epoch"),
        ("skipped_records", "run/skipped_records"),
        ("lrx", "lrx"),
        ("something_new", "something_new"),
    ];
    for (key, tag) in cases {
        assert_eq!(tag_of(key), tag, "{key}");
    }
}

#[test]
fn each_kind_of_log_event_gives_its_scalars() {
    use scalars::scalars_of;
    use serde_json::json;
    let of = |v: serde_json::Value| {
        let mut got: Vec<(String, f64)> = scalars_of(v.as_object().unwrap());
        got.sort_by(|a, b| a.0.cmp(&b.0));
        got
    };
    let want = |pairs: &[(&str, f64)]| pairs.iter().map(|&(t, v)| (t.to_string(), v)).collect::<Vec<_>>();
    let progress =
        json!({"step": 20, "time": 5.5, "loss": 2.5, "loss_FR": null, "lr_fr": 0.1, "note": "text", "world_size": 2});
    assert_eq!(of(progress), want(&[("loss", 2.5), ("lr/fr", 0.1), ("run/world_size", 2.0)]));
    let valid = json!({"event": "valid", "step": 20, "time": 1.0, "valid_verif_acc": 0.9, "valid_gap_lfw": 2.0});
    assert_eq!(of(valid), want(&[("valid/gap_lfw", 2.0), ("valid/verif_acc", 0.9)]));
    let ijb = json!({"event": "valid", "step": 20, "time": 1.0, "ijbc_tar_far_1e-4": 0.5, "ijbc_auc": 0.75});
    assert_eq!(of(ijb), want(&[("valid/ijbc_auc", 0.75), ("valid/ijbc_tar_far_1e-4", 0.5)]));
    let decay = json!({"event": "decay", "step": 8, "head": "Gender", "factor": 0.1, "lr": 0.01});
    assert_eq!(of(decay), want(&[("events/decay/Gender", 0.01)]));
    let rollback = json!({"event": "rollback", "step": 18, "to_step": 10, "loss": null});
    assert_eq!(of(rollback), want(&[("events/rollback", 10.0)]));
    for other in ["start", "resume", "checkpoint", "best", "end"] {
        assert!(of(json!({"event": other, "step": 3, "metric": 0.5})).is_empty(), "{other}");
    }
}

/// A rollback from step 18 to 10 and a resume at 30: a restart marker at the first step
/// run again, written before the rollback's own point so that TensorBoard keeps it.
#[test]
fn rollbacks_and_resumes_mark_the_restart() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = RunScalars::create(dir.path()).unwrap();
    for v in [
        json!({"step": 15, "loss": 3.0, "time": 1.0}),
        json!({"event": "rollback", "step": 18, "to_step": 10, "time": 2.0}),
        json!({"step": 15, "loss": 2.0, "time": 3.0}),
        json!({"event": "resume", "step": 30, "time": 4.0}),
        json!({"event": "start", "time": 5.0}),
        json!([1, 2]),
    ] {
        sink.event(&v).unwrap();
    }
    let evs = read_events(sink.path()).unwrap();
    let summary: Vec<(i64, f64, bool, Vec<Scalar>)> =
        evs[1..].iter().map(|e| (e.step, e.wall_time, e.restart, e.scalars.clone())).collect();
    assert_eq!(
        summary,
        [
            (15, 1.0, false, vec![scalar("loss", 3.0)]),
            (11, 2.0, true, vec![]),
            (18, 2.0, false, vec![scalar("events/rollback", 10.0)]),
            (15, 3.0, false, vec![scalar("loss", 2.0)]),
            (31, 4.0, true, vec![]),
        ]
    );
}
