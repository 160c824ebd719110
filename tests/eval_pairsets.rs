//! insightface's verification pair sets in validation and `trainer eval` (told apart from a
//! seed-format legacy `NAME.bin` + `NAME.idx` by content), `trainer embed` to `.npy`, and
//! `trainer export` to TorchScript, loaded by the PyTorch venv and compared with `embed`
//! (and converted to ONNX by `launch/export_onnx.py`, then run by ONNX Runtime).

mod common;
use common::*;
use std::path::{Path, PathBuf};

const PAIRS: usize = 20;

/// Synthetic faces of 6 identities at 32 px, as PNG bytes (lossless, so PyTorch and
/// trainer see the same pixels), by identity.
fn faces(dir: &Path) -> Vec<Vec<Vec<u8>>> {
    let img = dir.join("faces");
    run_ok(&["synth", "--out", s(&img), "--identities", "6", "--per-identity", "4", "--size", "32", "--seed", "7"]);
    let mut classes: Vec<PathBuf> =
        std::fs::read_dir(&img).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    classes.sort();
    classes
        .iter()
        .map(|c| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(c).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            files.iter().map(|f| png(&image::open(f).unwrap().to_rgb8())).collect()
        })
        .collect()
}

/// `lfw.bin`-style pairs alternating same and different identity.
fn write_pair_set(path: &Path, faces: &[Vec<Vec<u8>>]) {
    write_pairs(path, faces, PAIRS)
}

fn write_pairs(path: &Path, faces: &[Vec<Vec<u8>>], pairs: usize) {
    let (mut images, mut issame) = (Vec::new(), Vec::new());
    for p in 0..pairs {
        let a = (p / 2) % faces.len();
        let (b, j) = if p % 2 == 0 { (a, 1 + p % 3) } else { ((a + 1 + p % 4) % faces.len(), p % 4) };
        images.push(faces[a][0].clone());
        images.push(faces[b][j].clone());
        issame.push(a == b);
    }
    std::fs::write(path, pair_set_py2(&images, &issame)).unwrap();
}

/// The seed's own format: payloads back to back in `NAME.bin`, `path label start end`
/// lines with CRLF in `NAME.idx`.
fn write_legacy(dir: &Path, faces: &[Vec<Vec<u8>>]) -> PathBuf {
    let (mut bin, mut idx) = (Vec::new(), String::new());
    for (label, imgs) in faces.iter().enumerate() {
        for (i, img) in imgs.iter().enumerate() {
            let start = bin.len();
            bin.extend_from_slice(img);
            idx.push_str(&format!("__valid/{label}/face ({i}).png\t{label}\t{start}\t{}\r\n", bin.len()));
        }
    }
    std::fs::write(dir.join("legacy.bin"), bin).unwrap();
    std::fs::write(dir.join("legacy.idx"), idx).unwrap();
    dir.join("legacy.bin")
}

/// Two pair sets named `lfw.bin` in different folders are two sets, in training's log and
/// in `eval`'s table: the first keeps `lfw`, the second becomes `lfw2` (docs/outputs.md).
#[test]
fn pair_sets_of_one_file_stem_keep_apart() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 12, 8, 1, 1);
    let faces = faces(dir.path());
    let (lfw, other) = (dir.path().join("lfw.bin"), dir.path().join("sub/lfw.bin"));
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    write_pair_set(&lfw, &faces);
    write_pairs(&other, &faces, 12);
    let out = dir.path().join("Model");
    let tiny = tiny_train("FR", &out, "r").set("--train-sets", s(&train)).set("--emb-dim", "16");
    run_ok(
        &tiny.set("--max-steps", "2").set("--valid-every", "2").set_all("--valid-sets", &[s(&lfw), s(&other)]).args(),
    );
    let run = out.join("r");
    let valid = log_lines(&run).into_iter().rfind(|e| e["event"] == "valid").expect("a validation event");
    for key in ["valid_lfw_verif_acc", "valid_lfw2_verif_acc", "valid_lfw_gap", "valid_lfw2_gap"] {
        assert!(valid[key].is_number(), "{key} missing: {valid}");
    }

    let eval = run_ok(&["eval", s(&run), "--valid-sets", s(&lfw), s(&other), "--device", "cpu"]).stdout;
    let eval = String::from_utf8_lossy(&eval);
    let rows: Vec<&str> = eval.lines().skip_while(|l| !l.starts_with("set ")).skip(1).take(2).collect();
    let pairs = |row: &str| row.split_whitespace().nth(1).map(str::to_string);
    assert!(rows.len() == 2 && rows[0].starts_with("lfw ") && rows[1].starts_with("lfw2 "), "{eval}");
    assert_eq!((pairs(rows[0]), pairs(rows[1])), (Some(PAIRS.to_string()), Some("12".to_string())), "{eval}");
    let line: serde_json::Value = serde_json::from_str(eval.lines().last().unwrap()).unwrap();
    assert!(line["valid_lfw_verif_acc"].is_number() && line["valid_lfw2_verif_acc"].is_number(), "{eval}");
}

/// (rows, columns) from a `.npy` header, and its float32 data.
fn npy(path: &Path) -> ((usize, usize), Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape = &header[header.find("'shape': (").unwrap() + 10..];
    let dims: Vec<usize> = shape[..shape.find(')').unwrap()].split(',').filter_map(|d| d.trim().parse().ok()).collect();
    ((dims[0], dims[1]), f32s(&bytes[10 + len..]))
}

#[test]
fn pair_sets_validate_evaluate_embed_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 12, 8, 1, 1);
    let faces = faces(dir.path());
    let lfw = dir.path().join("lfw.bin");
    write_pair_set(&lfw, &faces);
    let legacy = write_legacy(dir.path(), &faces);
    let out = dir.path().join("Model");
    let tiny = tiny_train("FR", &out, "r").set("--train-sets", s(&train)).set("--emb-dim", "16");
    let tiny = tiny.set("--max-steps", "6").set("--valid-every", "6").set_all("--valid-sets", &[s(&lfw), s(&legacy)]);
    run_ok(&tiny.set("--valid-pairs", "40").args());
    let run = out.join("r");
    let valid = log_lines(&run).into_iter().rfind(|e| e["event"] == "valid").expect("a validation event");
    for key in ["valid_lfw_verif_acc", "valid_lfw_verif_std", "valid_lfw_gap", "valid_fr_verif_acc"] {
        assert!(valid[key].is_number(), "{key} missing: {valid}");
    }
    assert!(valid.get("valid_lfw_verif_tar").is_none(), "20 pairs are too few for TAR at FAR 1e-3: {valid}");
    let best = log_lines(&run).into_iter().rfind(|e| e["event"] == "best").expect("a best event");
    assert_eq!(best["metric_name"], "valid_lfw_verif_acc", "the best event names its metric: {best}");
    assert_eq!(best["metric"], valid["valid_lfw_verif_acc"], "{best} {valid}");

    let eval =
        text(&run_ok(&["eval", s(&run), "--valid-sets", s(&lfw), s(&legacy), "--device", "cpu", "--pairs", "40"]));
    let table: Vec<&str> = eval.lines().skip_while(|l| !l.starts_with("set ")).take(3).collect();
    assert!(table.len() == 3 && table[0].contains("verification") && table[0].contains("pairs"), "{eval}");
    assert!(
        table[1].starts_with("legacy.bin ") && table[2].starts_with("lfw ") && table[2].contains(&PAIRS.to_string()),
        "{eval}"
    );

    let emb = dir.path().join("lfw.npy");
    run_ok(&["embed", s(&run), "--sets", s(&lfw), "--out", s(&emb), "--device", "cpu"]);
    let ((rows, dim), plain) = npy(&emb);
    assert_eq!((rows, dim), (2 * PAIRS, 16));
    let tsv = std::fs::read_to_string(emb.with_extension("tsv")).unwrap();
    assert_eq!(tsv.lines().nth(2), Some("lfw.bin#1\t0\t1"), "{tsv}");
    let flipped = dir.path().join("flip.npy");
    run_ok(&["embed", s(&run), "--sets", s(&lfw), "--out", s(&flipped), "--flip", "--device", "cpu"]);
    assert_ne!(npy(&flipped).1, plain);
    let by_record = dir.path().join("legacy.npy");
    run_ok(&["embed", s(&run), "--sets", s(&legacy), "--out", s(&by_record), "--device", "cpu"]);
    assert_eq!(npy(&by_record).0, (24, 16));
    let names = std::fs::read_to_string(by_record.with_extension("tsv")).unwrap();
    assert_eq!(names.lines().take(2).collect::<Vec<_>>(), ["path\tlabel", "__valid/0/face (0).png\t0"]);
    // Row 4 of the legacy set is face 0 of identity 1, which is image 4 of the pair set (the
    // first of pair 2, identity 1 with itself): same pixels, same embedding.
    let same = npy(&by_record).1[4 * 16..5 * 16].iter().zip(&plain[4 * 16..5 * 16]).all(|(a, b)| (a - b).abs() < 1e-5);
    assert!(same, "a dataset record and the same image in a pair set embed differently");

    let model = dir.path().join("model.pt");
    run_ok(&["export", s(&run), "--out", s(&model)]);
    let Some(python) = torch_python("torch, numpy, PIL") else { return };
    let script = format!("{}/benches/torchscript_embed.py", env!("CARGO_MANIFEST_DIR"));
    let check = std::process::Command::new(&python).args([&script, s(&model), s(&lfw), s(&emb)]).output().unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let diff: f64 = String::from_utf8_lossy(&check.stdout).trim().parse().unwrap();
    assert!(diff < 1e-4, "TorchScript and trainer embed differ by {diff}");

    // launch/setup.sh installs onnx and onnxruntime beside torch: the ONNX model is written,
    // checked and run against the TorchScript one, at the 32 px the model was trained at,
    // which the script reads from the file.
    let Some(python) = torch_python("torch, onnx, onnxruntime") else { return };
    let onnx = dir.path().join("model.onnx");
    let script = format!("{}/launch/export_onnx.py", env!("CARGO_MANIFEST_DIR"));
    let convert = |model: &Path, more: &[&str]| {
        let args = [&script, s(model), s(&onnx)].into_iter().chain(more.iter().copied());
        std::process::Command::new(&python).args(args).output().unwrap()
    };
    let conv = convert(&model, &[]);
    assert!(conv.status.success() && onnx.exists(), "{}", text(&conv));
    let report = String::from_utf8_lossy(&conv.stdout);
    assert!(report.contains("ONNX Runtime matches TorchScript"), "onnxruntime did not run the model: {report}");
    let run_at = |px: usize| {
        let code = format!(
            "import numpy, onnxruntime; s = onnxruntime.InferenceSession({:?}); \
             print(s.run(None, {{'input': numpy.zeros((1, 3, {px}, {px}), 'float32')}})[0].shape)",
            s(&onnx)
        );
        std::process::Command::new(&python).args(["-c", &code]).output().unwrap()
    };
    let at_32 = run_at(32);
    assert!(
        at_32.status.success() && text(&at_32).contains("(1, 16)"),
        "the ONNX model refuses 32 px: {}",
        text(&at_32)
    );
    assert!(!run_at(112).status.success(), "the ONNX model's input is not fixed at the trained 32 px");
    let wrong = convert(&model, &["--size", "112"]);
    assert!(!wrong.status.success() && text(&wrong).contains("trained at 32 px"), "{}", text(&wrong));
    // A TorchScript file from elsewhere does not say its size: --size is asked for.
    let plain = dir.path().join("plain.pt");
    let make = format!(
        "import torch; torch.jit.save(torch.jit.trace(torch.nn.Flatten(), torch.zeros(1, 3, 8, 8)), {:?})",
        s(&plain)
    );
    assert!(std::process::Command::new(&python).args(["-c", &make]).status().unwrap().success());
    let bare = convert(&plain, &[]);
    assert!(!bare.status.success() && text(&bare).contains("give --size"), "{}", text(&bare));
}
