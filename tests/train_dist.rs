//! `mpirun -n 2 trainer train ...` on CPU: end to end, replica agreement, decays on
//! every rank, equivalence with one rank at twice the batch, failures.

mod common;
use common::*;
use std::path::Path;
use std::process::Output;

fn mpi_train(np: usize, args: &[&str]) -> Option<Output> {
    Some(mpi()?.job(np).args(args).output().expect("spawn mpirun"))
}

fn tiny<'a>(task: &'a str, train: &'a Path, out: &'a Path, run: &'a str) -> Vec<&'a str> {
    tiny_train(task, out, run).set("--train-sets", s(train)).args()
}

fn rank_log(run: &Path, rank: usize) -> String {
    std::fs::read_to_string(run.join(format!("rank{rank}.log"))).unwrap_or_default()
}

/// `step N param_hash H` lines of one rank.
fn hashes(run: &Path, rank: usize) -> Vec<String> {
    rank_log(run, rank)
        .lines()
        .filter_map(|l| l.split_once("step ").map(|(_, r)| r.to_string()))
        .filter(|r| r.contains("param_hash"))
        .collect()
}

#[test]
fn mpi_two_ranks_train_fr_and_gender_with_identical_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 16, 12, 4, 1);
    let valid = packed_synth(dir.path(), "valid", 6, 8, 1, 2);
    let out = dir.path().join("Model");
    for task in ["FR", "Gender"] {
        let mut a = tiny(task, &train, &out, task);
        a.extend([
            "--max-steps",
            "20",
            "--save-every",
            "10",
            "--valid-sets",
            s(&valid),
            "--valid-every",
            "20",
            "--valid-pairs",
            "200",
        ]);
        let Some(res) = mpi_train(2, &a) else { return };
        assert!(res.status.success(), "{task}: {}", text(&res));
        let run = out.join(task);
        let (h0, h1) = (hashes(&run, 0), hashes(&run, 1));
        assert!(h0.len() >= 2, "{task}: no param_hash lines in rank0.log");
        assert_eq!(h0, h1, "{task}: replicas diverged");
        let r0 = rank_log(&run, 0);
        assert!(
            r0.contains("train-00000-of-00004")
                && r0.contains("train-00002-of-00004")
                && !r0.contains("train-00001-of-00004"),
            "rank 0 must read shards 0 and 2:\n{r0}"
        );
        let log = log_lines(&run);
        let step = log.iter().find(|e| e.get("world_size").is_some()).expect("a progress line");
        assert_eq!(step["world_size"], 2);
        assert_eq!(step["effective_batch"], 32);
        assert!(log.iter().any(|e| e["event"] == "valid"));
    }
}

#[test]
fn mpi_plateau_decays_reach_every_rank_at_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 8, 2, 1);
    let out = dir.path().join("Model");
    // A learning rate of ~0 keeps the loss flat, so the plateau rule fires every 8 steps.
    let mut a = tiny("FR", &train, &out, "flat");
    a.extend(["--lr", "1e-12", "--plateau-steps", "8", "--min-lr", "1e-40", "--max-steps", "40"]);
    let Some(res) = mpi_train(2, &a) else { return };
    assert!(res.status.success(), "{}", text(&res));
    let run = out.join("flat");
    let decays = |r| {
        rank_log(&run, r)
            .lines()
            .filter(|l| l.contains("lr decay at step"))
            .map(|l| l.split("rank").nth(1).unwrap().to_string().split_off(2))
            .collect::<Vec<_>>()
    };
    let (d0, d1) = (decays(0), decays(1));
    assert!(!d0.is_empty(), "no decay on a flat loss");
    assert_eq!(d0, d1);
}

/// With no BatchNorm, no dropout, no augmentation and no shuffling, 2 ranks × batch B
/// see exactly the samples of 1 rank × batch 2B, so the weights must agree.
#[test]
fn mpi_two_ranks_at_batch_b_equal_one_rank_at_batch_2b() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 8, 1, 1);
    let out = dir.path().join("Model");
    let common = [
        "--arch",
        "tiny-nobn",
        "--size",
        "32",
        "--train-sets",
        s(&train),
        "--out",
        s(&out),
        "--threads",
        "1",
        "--workers",
        "1",
        "--emb-dim",
        "16",
        "--arc-s",
        "16",
        "--arc-m",
        "0.2",
        "--max-steps",
        "6",
        "--save-every",
        "6",
        "--no-shuffle",
        "--no-augment",
        "--fr-dropout",
        "0",
        "--stripe-records",
        "--lr",
        "0.05",
    ];
    let mut one = vec!["train", "FR", "--batch-size", "16", "--run-id", "one"];
    one.extend(common);
    let mut two = vec!["train", "FR", "--batch-size", "8", "--run-id", "two"];
    two.extend(common);
    run_ok(&one);
    let Some(res) = mpi_train(2, &two) else { return };
    assert!(res.status.success(), "{}", text(&res));
    let load = |run: &str| safetensors(&out.join(run).join("checkpoints/step-000000006/model.safetensors"));
    let (a, b) = (load("one"), load("two"));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for ((n, dtype, x), (_, _, y)) in a.iter().zip(&b) {
        assert_eq!(dtype, "F32", "{n}");
        let d = f32s(x).iter().zip(f32s(y)).map(|(p, q)| (p - q).abs() as f64).fold(0.0, f64::max);
        worst = worst.max(d);
        assert!(d < 1e-4, "{n}: max |diff| {d}");
    }
    eprintln!("largest weight difference: {worst:e}");
}

#[test]
fn mpi_fewer_shards_than_ranks_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 4, 4, 1, 1);
    let out = dir.path().join("Model");
    let mut a = tiny("FR", &train, &out, "few");
    a.extend(["--max-steps", "2"]);
    let Some(res) = mpi_train(2, &a) else { return };
    assert!(!res.status.success());
    let msg = text(&res);
    assert!(msg.contains("1 shard") && msg.contains("2 ranks") && msg.contains("--stripe-records"), "{msg}");
}

#[test]
fn mpi_a_killed_rank_ends_the_whole_job_with_an_error() {
    let Some(mpi) = mpi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 8, 2, 1);
    let out = dir.path().join("Model");
    let mut a = tiny("FR", &train, &out, "dies");
    // A short collective time-out: the survivor's watchdog ends the job if the launcher does not.
    a.extend(["--max-steps", "1000000", "--save-every", "1000000", "--collective-timeout", "5"]);
    let (res, _) = kill_rank_one(&mpi, &a, &out.join("dies"));
    assert!(!res.status.success());
    let reason = text(&res);
    // The launcher saw the death (MPICH: "Killed (signal 9)", OpenMPI: "signal 9
    // (Killed)"), or MPI failed the survivor's collective first (MPICH: "Fatal error ...
    // Communication error"; the job then ends by MPI_Abort), or MPI's transport aborted the
    // survivor reading the dead rank's memory (UCX: "process_vm_readv(pid=..) returned -1:
    // No such process"), or the survivor's watchdog fired.
    let launcher_saw_it = reason.contains("signal 9") && reason.contains("Killed");
    let mpi_saw_it = reason.contains("Fatal error") || reason.contains("MPI_Abort") || reason.contains("MPI_ABORT");
    let transport_saw_it = reason.contains("process_vm_readv") && reason.contains("No such process");
    assert!(
        launcher_saw_it || mpi_saw_it || transport_saw_it || reason.contains("did not finish within 5 s"),
        "{reason}"
    );
}
