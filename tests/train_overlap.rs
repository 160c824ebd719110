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
    run_with(train, out, id, overlap, extra, true)
}

fn run_with(train: &Path, out: &Path, id: &str, overlap: &str, extra: Flags, comm_thread: bool) -> (Vec<u8>, u64) {
    let mut a =
        tiny_train("FR", out, id).set("--train-sets", s(train)).set("--overlap", overlap).set("--max-steps", "20");
    for &(flag, values) in extra {
        a = a.set_all(flag, values);
    }
    let mpi = mpi().expect("mpirun");
    let mut job = mpi.job(2);
    if !comm_thread {
        job.env("TRAINER_COMM_THREAD", "off");
    }
    let res = job.args(a.args()).output().expect("spawn mpirun");
    if !comm_thread {
        assert!(text(&res).contains("--overlap has no effect"), "{id}: no warning: {}", text(&res));
    }
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

/// Where MPI grants no MPI_THREAD_MULTIPLE (simulated), `--overlap on` says so and runs
/// as `off`: the same model.
#[test]
fn mpi_overlap_without_a_communication_thread_warns_and_runs_as_off() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 16, 8, 2, 1);
    let out = dir.path().join("Model");
    let (on, overlapped_on) = run(&train, &out, "threaded", "on", &[]);
    let (alone, overlapped_alone) = run_with(&train, &out, "no-thread", "on", &[], false);
    assert!(overlapped_on >= 15 && overlapped_alone == 0, "{overlapped_on} and {overlapped_alone} steps overlapped");
    assert!(on == alone, "without the thread the weights differ");
}
