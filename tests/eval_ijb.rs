//! `trainer eval --ijb` against benches/ijb_twin.py, eval_ijbc.py's pipeline in NumPy, OpenCV,
//! scikit-image and scikit-learn, on a generated IJB-style folder: the twin aligns the images
//! itself, embeds them with the run's TorchScript export (benches/ijb_twin_embed.py in the
//! PyTorch venv), pools, scores and reads the ROC. The scores must agree within float
//! tolerance, and the TAR table read from trainer's saved scores must be identical.
//! Then every bad input the issue lists, each an error naming the file and the line.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// Largest score difference accepted between trainer and the twin: the same model on the
/// same pixels, up to float summation order (measured here: 3e-8).
const SCORE_TOLERANCE: f64 = 1e-5;

fn twin() -> String {
    format!("{}/benches/ijb_twin.py", env!("CARGO_MANIFEST_DIR"))
}

/// An IJB-style folder: synth faces of 8 identities placed into noisy pictures.
fn ijb_folder(python: &Path, dir: &Path) -> PathBuf {
    let faces = dir.join("faces");
    run_ok(&["synth", "--out", s(&faces), "--identities", "8", "--per-identity", "3", "--size", "112", "--seed", "5"]);
    let ijb = dir.join("IJBC");
    let made = std::process::Command::new(python)
        .args([&twin(), "make", s(&ijb), "--faces", s(&faces), "--seed", "3"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    ijb
}

/// A tiny FR model trained for a few steps at 112 px (eval_ijbc.py's crop size).
fn tiny_run(dir: &Path) -> PathBuf {
    let train = packed_synth(dir, "train", 8, 4, 1, 1);
    let out = dir.join("Model");
    let tiny = tiny_train("FR", &out, "r").bare().set("--size", "112").set("--batch-size", "8");
    run_ok(&tiny.set("--emb-dim", "16").set("--train-sets", s(&train)).set("--max-steps", "3").args());
    out.join("r")
}

fn py(python: &Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(python).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn f64s(path: &Path) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(std::str::from_utf8(&bytes[10..10 + len]).unwrap().contains("'descr': '<f8'"));
    bytes[10 + len..].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
}

const KEYS: [&str; 6] = ["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1"];

#[test]
fn ijb_matches_the_eval_ijbc_twin_and_refuses_bad_input() {
    let Some(python) = ref_python("cv2, skimage, sklearn, tensorboard") else { return };
    let dir = tempfile::tempdir().unwrap();
    let ijb = ijb_folder(&python, dir.path());
    let run = tiny_run(dir.path());
    let saved = dir.path().join("scores");
    let eval = text(&run_ok(&[
        "eval",
        s(&run),
        "--ijb",
        s(&ijb),
        "--save-scores",
        s(&saved),
        "--device",
        "cpu",
        "--batch-size",
        "7",
        "--workers",
        "2",
    ]));
    let line: serde_json::Value = eval.lines().find_map(|l| serde_json::from_str(l).ok()).expect("a JSON line");
    let scores = f64s(&saved.join("ijbc.npy"));
    let pairs = std::fs::read_to_string(ijb.join("meta/ijbc_template_pair_label.txt")).unwrap().lines().count();
    assert_eq!((scores.len(), line["ijbc_pairs"].as_f64()), (pairs, Some(pairs as f64)), "{eval}");
    assert!(std::fs::metadata(saved.join("ijbc_roc.png")).unwrap().len() > 1000);

    // The twin's own end-to-end scores: alignment, TorchScript model, pooling, scoring.
    if let Some(torch) = torch_python("torch, numpy") {
        let model = dir.path().join("model.pt");
        run_ok(&["export", s(&run), "--out", s(&model)]);
        let crops = dir.path().join("crops.npy");
        py(&python, &[&twin(), "align", s(&ijb), "--out", s(&crops)]);
        let feats = dir.path().join("feats.npy");
        let embed = format!("{}/benches/ijb_twin_embed.py", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(&torch).args([&embed, s(&model), s(&crops), s(&feats)]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let twin_scores = dir.path().join("twin.npy");
        py(&python, &[&twin(), "score", s(&ijb), "--features", s(&feats), "--out", s(&twin_scores)]);
        let theirs = f64s(&twin_scores);
        let worst = scores.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < SCORE_TOLERANCE, "scores differ from the twin's by up to {worst}");
        notice(&format!("IJB twin: {} pair scores agree within {worst:.2e}", scores.len()));
    }

    // The table read from trainer's scores by scikit-learn, eval_ijbc.py's way: identical.
    let table = py(&python, &[&twin(), "table", s(&ijb), "--scores", s(&saved.join("ijbc.npy"))]);
    for (k, key) in KEYS.iter().enumerate() {
        let ours = line[format!("ijbc_tar_far_{key}")].as_f64().unwrap();
        assert_eq!(ours, table["far_tar"][k][1].as_f64().unwrap(), "TAR at FAR {key}: {eval}\n{table}");
        assert!(eval.contains(&format!(" {} ", table["tar_pct"][k].as_str().unwrap())), "{eval}\n{table}");
    }
    assert!((line["ijbc_auc"].as_f64().unwrap() - table["auc"].as_f64().unwrap()).abs() < 1e-12);

    valid_ijb_during_training(&python, dir.path(), &ijb);
    bad_inputs(dir.path(), &ijb, &run);
}

/// `--valid-ijb`: the same keys at each validation of a training run, in log.txt and, read
/// back by TensorBoard's own loader, in its event files; `best/` follows TAR at FAR 1e-4.
fn valid_ijb_during_training(python: &Path, dir: &Path, ijb: &Path) {
    let (train, out) = (dir.join("shards/train"), dir.join("Model"));
    let tiny = tiny_train("FR", &out, "v").bare().set("--size", "112").set("--batch-size", "8");
    let tiny = tiny.set("--emb-dim", "16").set("--train-sets", s(&train)).set("--max-steps", "4");
    run_ok(&tiny.set("--valid-ijb", s(ijb)).set("--valid-every", "2").set_all("--tensorboard", &[]).args());
    let log = log_lines(&out.join("v"));
    let valid: Vec<&serde_json::Value> = log.iter().filter(|e| e["event"] == "valid").collect();
    let tar = |e: &serde_json::Value| {
        let obj = e.as_object().unwrap();
        obj.iter().find(|(k, _)| k.ends_with("ijbc_tar_far_1e-4")).and_then(|(_, v)| v.as_f64())
    };
    assert!(valid.len() >= 2, "validations at steps 2 and 4: {log:?}");
    assert!(valid.iter().all(|e| tar(e).is_some_and(|t| (0.0..=1.0).contains(&t))), "{valid:?}");
    let best = log.iter().find(|e| e["event"] == "best").expect("a best event");
    let at_best = valid.iter().find(|e| e["step"] == best["step"]).expect("a validation at the best step");
    assert_eq!(best["metric"].as_f64(), tar(at_best), "best/ follows TAR at FAR 1e-4: {best}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/read_tensorboard.py");
    let tb = std::process::Command::new(python).arg(&script).arg(out.join("v/tensorboard")).output().unwrap();
    assert!(tb.status.success(), "{}", text(&tb));
    let scalars: serde_json::Value = serde_json::from_slice(&tb.stdout).unwrap();
    let tags: Vec<&String> = scalars["scalars"].as_object().unwrap().keys().collect();
    assert!(tags.iter().any(|t| t.starts_with("valid/") && t.ends_with("ijbc_tar_far_1e-4")), "{tags:?}");
}

/// A copy of the folder with one meta file changed by `edit`.
fn variant(dir: &Path, ijb: &Path, name: &str, file: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(out.join("meta")).unwrap();
    for f in ["ijbc_name_5pts_score.txt", "ijbc_face_tid_mid.txt", "ijbc_template_pair_label.txt"] {
        let text = std::fs::read_to_string(ijb.join("meta").join(f)).unwrap();
        std::fs::write(out.join("meta").join(f), if f == file { edit(&text) } else { text }).unwrap();
    }
    std::os::unix::fs::symlink(ijb.join("loose_crop"), out.join("loose_crop")).unwrap();
    out
}

/// Replaces field `field` of line `line` (1-based).
fn set_field(text: &str, line: usize, field: usize, value: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut f: Vec<&str> = lines[line - 1].split(' ').collect();
    f[field] = value;
    lines[line - 1] = f.join(" ");
    lines.join("\n") + "\n"
}

fn fails(run: &Path, ijb: &Path, expect: &[&str]) {
    let out = trainer().args(["eval", s(run), "--ijb", s(ijb), "--device", "cpu"]).output().unwrap();
    let msg = text(&out);
    assert!(!out.status.success(), "accepted {}:\n{msg}", ijb.display());
    for e in expect {
        assert!(msg.contains(e), "the error should name {e:?}:\n{msg}");
    }
}

fn bad_inputs(dir: &Path, ijb: &Path, run: &Path) {
    let lm = "ijbc_name_5pts_score.txt";
    let media = "ijbc_face_tid_mid.txt";
    let pairs = "ijbc_template_pair_label.txt";
    let v = variant(dir, ijb, "fields", lm, |t| set_field(t, 3, 11, "0.9 extra"));
    fails(run, &v, &[lm, "line 3", "13 fields where 12"]);
    let v = variant(dir, ijb, "nan", lm, |t| set_field(t, 4, 2, "abc"));
    fails(run, &v, &[lm, "line 4", "landmark y1 \"abc\" is not a number"]);
    let v = variant(dir, ijb, "media", media, |t| set_field(t, 2, 1, "x7"));
    fails(run, &v, &[media, "line 2", "template id \"x7\""]);
    let v = variant(dir, ijb, "orphan", pairs, |t| set_field(t, 5, 1, "999999"));
    fails(run, &v, &[pairs, "line 5", "template 999999 has no image"]);
    let v = variant(dir, ijb, "label", pairs, |t| set_field(t, 2, 2, "2"));
    fails(run, &v, &[pairs, "line 2", "label 2"]);
    let v = variant(dir, ijb, "empty", pairs, |_| String::new());
    fails(run, &v, &[pairs, "has no pairs"]);
    let v = variant(dir, ijb, "order", media, |t| {
        let mut l: Vec<&str> = t.lines().collect();
        l.swap(0, 1);
        l.join("\n") + "\n"
    });
    fails(run, &v, &[media, "line 1", lm]);
    // A missing image: named with its line, not skipped.
    let gone = dir.join("gone");
    std::fs::create_dir_all(gone.join("loose_crop")).unwrap();
    std::fs::create_dir_all(gone.join("meta")).unwrap();
    for f in [lm, media, pairs] {
        std::fs::copy(ijb.join("meta").join(f), gone.join("meta").join(f)).unwrap();
    }
    for e in std::fs::read_dir(ijb.join("loose_crop")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "6.jpg" {
            std::fs::copy(e.path(), gone.join("loose_crop").join(e.file_name())).unwrap();
        }
    }
    fails(run, &gone, &[lm, "line 6", "6.jpg is missing"]);
    // A landmark file that is not there at all.
    std::fs::remove_file(gone.join("meta").join(lm)).unwrap();
    fails(run, &gone, &[lm]);
}
