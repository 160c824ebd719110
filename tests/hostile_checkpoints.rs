//! Issue 26, cases 5–8: a tampered checkpoint, NaN weights, impossible counters and
//! validation sets that cannot be validated on are errors naming what is wrong, before a
//! step is trained or a file written, and never a panic (docs/hostile-input.md).

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A `steps`-step run of the tiny network (FR, 16-dim embeddings) in `dir/Model/<id>`, with
/// `extra` flags.
fn tiny_run(dir: &Path, id: &str, steps: &str, extra: &[&str]) -> std::process::Output {
    let train = dir.join("shards/train");
    if !train.with_extension("manifest.json").exists() {
        packed_synth(dir, "train", 6, 4, 1, 1);
    }
    let out = dir.join("Model");
    let tiny = tiny_train("FR", &out, id).bare().set("--batch-size", "8").set("--emb-dim", "16");
    let mut args = tiny.set("--train-sets", s(&train)).set("--max-steps", steps).args();
    args.extend_from_slice(extra);
    trainer().args(&args).output().unwrap()
}

fn checkpoint(run: &Path) -> PathBuf {
    run.join("checkpoints/step-000000002")
}

/// Rewrites tensor `name` of `ckpt`'s model file with `edit(header entry, data bytes)`,
/// then records the file's new CRC in `state.json`, as a careful forger would.
fn tamper(ckpt: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value, &mut [u8])) {
    let file = ckpt.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = &mut header[name];
    let off = &entry["data_offsets"];
    let (a, b) = (off[0].as_u64().unwrap() as usize + 8 + n, off[1].as_u64().unwrap() as usize + 8 + n);
    let mut data = bytes[a..b].to_vec();
    edit(entry, &mut data);
    bytes[a..b].copy_from_slice(&data);
    let mut text = serde_json::to_vec(&header).unwrap();
    assert!(text.len() <= n, "the edited header must fit");
    text.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&text);
    std::fs::write(&file, &bytes).unwrap();
    let state_path = ckpt.join("state.json");
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["checksums"]["model.safetensors"] = format!("{:08x}", crc32c::crc32c(&bytes)).into();
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
}

/// Runs `trainer args`: exit 1 (not a panic's 101) with `needle` in the message.
fn refused(args: &[&str], needle: &str) -> String {
    let out = trainer().args(args).output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "trainer {args:?}:\n{t}");
    assert!(t.contains(needle), "trainer {args:?}: expected {needle:?} in:\n{t}");
    assert!(!t.contains("panicked") && !t.contains("frame #"), "{t}");
    t
}

fn pair_set(dir: &Path, name: &str, images: &[Vec<u8>], issame: &[bool]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pair_set_py2(images, issame)).unwrap();
    p
}

fn png(shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(32, 32, image::Rgb([shade, 90, 120]));
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

#[test]
fn a_relabelled_tensor_is_refused_by_name_everywhere_and_never_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = tiny_run(dir.path(), "r", "2", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let run = dir.path().join("Model/r");
    tamper(&checkpoint(&run), "backbone.conv1.weight", |entry, _| entry["dtype"] = "I32".into());
    let set = pair_set(dir.path(), "p.bin", &[png(1), png(2), png(3), png(4)], &[true, false]);
    let o = dir.path().join("o");
    std::fs::create_dir_all(&o).unwrap();
    let needle = "backbone.conv1.weight: dtype";
    refused(&["eval", s(&run), "--valid-sets", s(&set), "--device", "cpu"], needle);
    refused(&["embed", s(&run), "--sets", s(&set), "--out", s(&o.join("e.npy")), "--device", "cpu"], needle);
    refused(&["export", s(&run), "--out", s(&o.join("m.pt"))], needle);
    refused(&["train", "--resume", s(&run), "--max-steps", "4"], needle);
    assert!(!run.join("checkpoints/step-000000004").exists() && !run.join("best").exists());
    assert_eq!(std::fs::read_dir(&o).unwrap().count(), 0, "nothing written");
}

#[test]
fn nan_weights_give_no_embeddings_and_impossible_counters_no_resume() {
    let dir = tempfile::tempdir().unwrap();
    assert!(tiny_run(dir.path(), "r", "2", &[]).status.success());
    let run = dir.path().join("Model/r");
    tamper(&checkpoint(&run), "backbone.conv1.weight", |_, data| {
        data.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&f32::NAN.to_le_bytes()))
    });
    let set = pair_set(dir.path(), "p.bin", &[png(1), png(2), png(3), png(4)], &[true, false]);
    let o = dir.path().join("o");
    std::fs::create_dir_all(&o).unwrap();
    refused(&["embed", s(&run), "--sets", s(&set), "--out", s(&o.join("e.npy")), "--device", "cpu"], "not finite");
    let t = trainer().args(["export", s(&run), "--out", s(&o.join("m.pt"))]).output().unwrap();
    assert!(!t.status.success(), "{}", text(&t));
    assert_eq!(std::fs::read_dir(&o).unwrap().count(), 0, "no array, no table, no .partial");

    assert!(tiny_run(dir.path(), "s", "2", &[]).status.success());
    let run = dir.path().join("Model/s");
    let state_path = checkpoint(&run).join("state.json");
    let text_now = std::fs::read_to_string(&state_path).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&text_now).unwrap();
    state["state"]["step"] = serde_json::json!(u64::MAX);
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    refused(&["train", "--resume", s(&run), "--max-steps", "4"], "past 2^53");
    let left: Vec<String> =
        std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|n| n.ends_with(".tmp")), "{left:?}");
    assert!(!run.join("checkpoints/step-000000000").exists());
    std::fs::write(&state_path, &text_now).unwrap();
    refused(&["train", "--resume", s(&run), "--max-steps", "1"], "past --max-steps 1");
}

#[test]
fn validation_sets_are_decoded_before_step_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = pair_set(dir.path(), "bad.bin", &[png(1), b"not an image".to_vec(), png(3), png(4)], &[true, false]);
    let out = tiny_run(dir.path(), "bad", "20", &["--valid-sets", s(&bad)]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("bad") && t.contains("image 1") && t.contains("does not decode"), "{t}");
    let ckpts = dir.path().join("Model/bad/checkpoints");
    assert!(!ckpts.exists() || std::fs::read_dir(&ckpts).unwrap().count() == 0, "no step was trained");
    let losses = dir.path().join("Model/bad/log.txt");
    let steps = std::fs::read_to_string(&losses).unwrap_or_default().matches("\"loss\"").count();
    assert_eq!(steps, 0, "no step was trained");

    let empty = pair_set(dir.path(), "empty.bin", &[], &[]);
    let out = tiny_run(dir.path(), "empty", "20", &["--valid-sets", s(&empty)]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("0 pairs") && !t.contains("dimension 0"), "{t}");
}
