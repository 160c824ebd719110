//! `eval`, `embed` and `export` select a model the same way (`RUN`, `--checkpoint`) and
//! take `--threads`: libtorch's thread count, which otherwise took every core and fought
//! the image decoders on a busy machine.

mod common;
use common::*;

fn json_line(out: &std::process::Output) -> serde_json::Value {
    let text = text(out);
    let line = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line: {text}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn eval_embed_and_export_take_threads_and_the_same_model_selector() {
    let dir = tempfile::tempdir().unwrap();
    let set = packed_synth(dir.path(), "train", 6, 6, 1, 1);
    let out = dir.path().join("Model");
    let train = tiny_train("FR", &out, "r").set("--train-sets", s(&set)).set("--max-steps", "4");
    run_ok(&train.set("--save-every", "4").args());
    let run = out.join("r");

    let eval = ["eval", s(&run), "--valid-sets", s(&set), "--pairs", "200", "--checkpoint", "latest"];
    let line = json_line(&run_ok(&[&eval[..], &["--threads", "1"]].concat()));
    assert_eq!((line["threads"].as_u64(), line["step"].as_u64()), (Some(1), Some(4)), "{line}");
    // By default libtorch leaves one core to the decoder.
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    let line = json_line(&run_ok(&[&eval[..], &["--workers", "1"]].concat()));
    assert_eq!(line["threads"].as_u64(), Some(cores.saturating_sub(1).max(1)), "{line}");

    let npy = dir.path().join("e.npy");
    run_ok(&["embed", s(&run), "--sets", s(&set), "--out", s(&npy), "--checkpoint", "latest", "--threads", "1"]);
    assert!(npy.is_file());
    let pt = dir.path().join("m.pt");
    run_ok(&["export", s(&run), "--out", s(&pt), "--checkpoint", "latest", "--threads", "1"]);
    assert!(pt.is_file());

    for cmd in [
        &["eval", s(&run)][..],
        &["embed", s(&run), "--sets", s(&set), "--out", s(&npy)],
        &["export", s(&run), "--out", s(&pt)],
    ] {
        let bad = output(&[cmd, &["--threads", "0"]].concat());
        assert_eq!(bad.status.code(), Some(2), "{cmd:?} --threads 0: {}", text(&bad));
        assert!(lossy(&bad.stderr).contains("--threads"), "{}", lossy(&bad.stderr));
    }
}
