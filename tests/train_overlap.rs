//! `--overlap on|off` under `mpirun -n 2`: the all-reduce overlapped with a staged
//! backward gives the same model, byte for byte, as the one-shot backward followed by
//! the all-reduce — replicated head, Partial FC, and gradient accumulation.

mod common;
use common::*;
use std::path::Path;

/// The final checkpoint's weights and how many logged steps overlapped.
/// Flags added to a case's runs, each with its values.
type Flags<'a> = &'a [(&'a str, &'a [&'a str])];

fn run(train: &Path, out: &Path, id: &str, overlap: &str, extra: Flags) -> (Vec<u8>, u64) {
    let mut a =
        tiny_train("FR", out, id).set("--train-sets", s(train)).set("--overlap", overlap).set("--max-steps", "20");
    for &(flag, values) in extra {
        a = a.set_all(flag, values);
    }
    let mpi = mpi().expect("mpirun");
    let res = mpi.job(2).args(a.args()).output().expect("spawn mpirun");
    assert!(res.status.success(), "{id}: {}", text(&res));
    let run = out.join(id);
    let model = std::fs::read(run.join("checkpoints/step-000000020/model.safetensors")).expect("final checkpoint");
    let overlapped = log_lines(&run).iter().filter_map(|e| e["overlapped_steps"].as_u64()).sum();
    (model, overlapped)
}

#[test]
fn mpi_overlap_on_and_off_end_with_identical_models() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 16, 8, 2, 1);
    let out = dir.path().join("Model");
    let cases: [(&str, Flags); 3] = [
        ("replicated", &[]),
        ("pfc", &[("--partial-fc", &[]), ("--sample-rate", &["0.5"])]),
        ("accum", &[("--accum", &["2"]), ("--batch-size", &["8"])]),
    ];
    for (name, extra) in cases {
        let (on, overlapped_on) = run(&train, &out, &format!("{name}-on"), "on", extra);
        let (off, overlapped_off) = run(&train, &out, &format!("{name}-off"), "off", extra);
        // Every logged step after the first (which builds the flat buffer) overlapped.
        assert!(overlapped_on >= 15, "{name}: {overlapped_on} of 20 steps overlapped");
        assert_eq!(overlapped_off, 0, "{name}: --overlap off overlapped");
        assert!(on == off, "{name}: --overlap on and off ended with different weights");
    }
}
