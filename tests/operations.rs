//! Operations: a mis-launched job is refused, one job per run directory, and every
//! failure (a panic, an error, a hang in a collective, gradients that differ between
//! ranks) ends a 2-rank job with its reason.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn tiny<'a>(train: &'a Path, out: &'a Path, run: &'a str) -> Vec<&'a str> {
    tiny_train("FR", out, run).set("--train-sets", s(train)).set("--batch-size", "8").args()
}

#[test]
fn a_second_job_on_a_run_directory_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 4, 4, 1, 1);
    let out = dir.path().join("Model");
    let mut first = trainer();
    first.args(tiny(&train, &out, "shared")).args(["--max-steps", "100000", "--time-limit", "120"]);
    let first = spawn_piped(&mut first);
    let lock = out.join("shared/trainer.lock");
    let t = Instant::now();
    while !lock.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "the first job never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = trainer();
    second.args(tiny(&train, &out, "shared")).args(["--max-steps", "1"]);
    let refused = wait_within(spawn_piped(&mut second), Duration::from_secs(60), "second job");
    let msg = text(&refused);
    assert!(!refused.status.success(), "{msg}");
    assert!(
        msg.contains("in use by another job")
            && msg.contains(&format!("pid {}", first.id()))
            && msg.contains("--force"),
        "{msg}"
    );

    // The holder dies without cleaning up: the same command typed again with --auto-resume
    // (the run has no checkpoint, so it starts over) takes the lock over.
    let pid = first.id();
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let _ = wait_within(first, Duration::from_secs(30), "killed first job");
    assert!(lock.exists(), "a killed job leaves its lock behind");
    let mut third = trainer();
    third.args(tiny(&train, &out, "shared")).args(["--max-steps", "1", "--save-every", "1", "--auto-resume"]);
    let done = wait_within(spawn_piped(&mut third), Duration::from_secs(120), "third job");
    let msg = text(&done);
    assert!(done.status.success(), "{msg}");
    assert!(msg.contains("taking over the lock") && msg.contains(&format!("pid {pid}")), "{msg}");
    assert!(!lock.exists(), "a finished job releases its lock");
}

#[test]
fn a_world_that_disagrees_with_the_launcher_is_refused_with_the_fix() {
    // What a rank of an MPICH build sees when OpenMPI's mpirun (or srun without PMI)
    // started it: the launcher's variables say 2 or 4, MPI says 1.
    let cases: [(&[(&str, &str)], &str); 2] = [
        (&[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "0")], "OMPI_COMM_WORLD_SIZE=2"),
        (
            &[("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "4"), ("SLURM_NTASKS", "4")],
            "SLURM_STEP_NUM_TASKS=4",
        ),
    ];
    for (vars, says) in cases {
        let mut c = trainer();
        c.args(["bench", "allreduce", "--check"]).envs(vars.iter().copied());
        let out = wait_within(spawn_piped(&mut c), Duration::from_secs(60), says);
        let msg = text(&out);
        assert!(!out.status.success(), "{msg}");
        assert!(msg.contains("mis-launched") && msg.contains(says) && msg.contains("sees a world of 1"), "{msg}");
        assert!(msg.contains("MPICH") && msg.contains("TRAINER_MPI=openmpi") && msg.contains("--mpi=pmi2"), "{msg}");
    }
}

/// Each MPI's build started by the other MPI's mpirun: every rank sees a world of 1, and
/// all of them refuse at once with the fix.
#[test]
fn mpi_each_build_under_the_other_mpis_launcher_is_refused() {
    let (Some(mpich), Some(openmpi)) = (Mpi::of("mpich"), Mpi::of("openmpi")) else { return };
    for (launcher, build, library) in [(&openmpi, &mpich, "MPICH"), (&mpich, &openmpi, "Open MPI")] {
        let crossed = Mpi { name: launcher.name, launcher: launcher.launcher.clone(), trainer: build.trainer.clone() };
        let mut c = crossed.job(2);
        c.args(["bench", "allreduce", "--check"]);
        let what = format!("the {} build under {}", build.name, launcher.launcher.display());
        let started = Instant::now();
        let out = wait_within(spawn_piped(&mut c), Duration::from_secs(60), &what);
        let msg = text(&out);
        assert!(!out.status.success(), "{what}: {msg}");
        assert!(
            msg.contains("mis-launched") && msg.contains("sees a world of 1") && msg.contains(library),
            "{what}: {msg}"
        );
        assert!(
            msg.contains(&format!("TRAINER_MPI={}", launcher.name)),
            "{what}: the fix names the other build: {msg}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{what}: refused only after {:?}", started.elapsed());
    }
}

fn mpi_job(train: &Path, out: &Path, run: &str, extra: &[&str], fault: &str) -> Option<Output> {
    let mut c = mpi()?.job(2);
    c.args(tiny(train, out, run)).args(extra).env("TRAINER_FAULT", fault);
    Some(wait_within(spawn_piped(&mut c), Duration::from_secs(180), fault))
}

#[test]
fn mpi_a_rank_that_panics_ends_the_job_with_the_panic_message() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 4, 2, 1);
    let out = dir.path().join("Model");
    // A long collective time-out: only the panic hook can end the job early.
    let Some(res) =
        mpi_job(&train, &out, "panics", &["--max-steps", "1000", "--collective-timeout", "600"], "1:3:panic")
    else {
        return;
    };
    let msg = text(&res);
    assert!(!res.status.success(), "{msg}");
    assert!(
        msg.contains("rank 1: panicked") && msg.contains("injected fault (TRAINER_FAULT): rank 1 panics at step 3"),
        "{msg}"
    );
    assert!(!msg.contains("did not finish within"), "the watchdog, not the panic, ended the job: {msg}");
}

#[test]
fn mpi_a_rank_that_hangs_in_a_collective_ends_the_job_after_the_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 4, 2, 1);
    let out = dir.path().join("Model");
    let Some(res) = mpi_job(&train, &out, "hangs", &["--max-steps", "1000", "--collective-timeout", "3"], "1:3:hang")
    else {
        return;
    };
    let msg = text(&res);
    assert!(!res.status.success(), "{msg}");
    assert!(msg.contains("rank 1 hangs in a collective at step 3"), "{msg}");
    assert!(msg.contains("did not finish within 3 s") && msg.contains("Aborting the job"), "{msg}");
}

#[test]
fn mpi_an_error_on_one_rank_ends_the_job_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 4, 2, 1);
    let out = dir.path().join("Model");
    // A long collective time-out: only the error path can end the job early.
    let Some(res) = mpi_job(&train, &out, "errs", &["--max-steps", "1000", "--collective-timeout", "600"], "1:3:error")
    else {
        return;
    };
    let msg = text(&res);
    assert!(!res.status.success(), "{msg}");
    assert!(msg.contains("rank 1: injected error (TRAINER_FAULT) at step 3"), "{msg}");
    assert!(!msg.contains("did not finish within"), "the watchdog, not the error, ended the job: {msg}");
}

/// Ranks whose gradient lists differ (a model built differently) fail on every rank with
/// the reason at their first all-reduce, instead of sending different counts. A rank whose
/// list changes alone later waits on its own check channel: the time-out ends the job.
#[test]
fn mpi_ranks_whose_gradients_differ_are_stopped_not_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 4, 2, 1);
    let out = dir.path().join("Model");
    let Some(res) =
        mpi_job(&train, &out, "first", &["--max-steps", "1000", "--collective-timeout", "600"], "1:1:layout")
    else {
        return;
    };
    let msg = text(&res);
    assert!(!res.status.success(), "{msg}");
    assert!(msg.contains("rank 1 drops a gradient at step 1"), "{msg}");
    assert!(msg.contains("the ranks' gradients before the all-reduce differ in count, shape or dtype"), "{msg}");
    assert!(!msg.contains("did not finish within"), "{msg}");

    let args = ["--max-steps", "1000", "--collective-timeout", "3"];
    let Some(res) = mpi_job(&train, &out, "later", &args, "1:3:layout") else { return };
    let msg = text(&res);
    assert!(!res.status.success(), "{msg}");
    assert!(msg.contains("rank 1 drops a gradient at step 3"), "{msg}");
    assert!(msg.contains("did not finish within 3 s"), "{msg}");
}

/// Every rank judges the plateau rule itself; one whose judge disagrees with rank 0's
/// (`drift`: its digest changed at the settle of step 10) ends the job on every rank, named,
/// instead of decaying or rolling back on its own.
#[test]
fn mpi_a_rank_whose_plateau_judge_drifts_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 4, 2, 1);
    let out = dir.path().join("Model");
    let Some(res) =
        mpi_job(&train, &out, "drifts", &["--max-steps", "1000", "--collective-timeout", "600"], "1:10:drift")
    else {
        return;
    };
    let msg = text(&res);
    assert!(!res.status.success(), "{msg}");
    assert!(msg.contains("rank 1's plateau judge drifts"), "{msg}");
    assert!(msg.contains("the plateau rule's state on rank(s) [1] differs from rank 0's"), "{msg}");
    assert!(!msg.contains("did not finish within"), "{msg}");
}

/// The `resume` event's checkpoint directory name (e.g. `step-000000004`).
fn resumed_from(run: &Path) -> String {
    let log = log_lines(run);
    let resume = log.iter().rev().find(|e| e["event"] == "resume").expect("a resume event");
    Path::new(resume["checkpoint"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned()
}

/// One rank's listing of the checkpoints lags (TRAINER_FAULT=RANK:0:stale hides the newest
/// from it): alone, that rank would resume from an older step; in a job, every rank
/// resumes from the checkpoint rank 0 chose. Under Partial FC nothing else would mend a
/// wrong choice (the centres are each rank's own, never broadcast), so the job runs one
/// step at lr 1e-30 and the whole centre matrix must come out exactly as saved.
#[test]
fn mpi_every_rank_resumes_from_the_checkpoint_rank_0_chose() {
    let dir = tempfile::tempdir().unwrap();
    let train = packed_synth(dir.path(), "train", 8, 4, 2, 1);
    let out = dir.path().join("Model");
    let Some(mpi) = mpi() else { return };
    let first = mpi
        .job(2)
        .args(tiny(&train, &out, "r"))
        .args(["--partial-fc", "--max-steps", "4", "--save-every", "2"])
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let alone = out.join("alone");
    assert!(Command::new("cp").args(["-r", s(&out.join("r")), s(&alone)]).status().unwrap().success());
    let mut c = trainer();
    c.args(["train", "--resume", s(&alone), "--max-steps", "5"]).env("TRAINER_FAULT", "0:0:stale");
    let res = wait_within(spawn_piped(&mut c), Duration::from_secs(120), "the stale rank alone");
    assert!(res.status.success(), "{}", text(&res));
    assert_eq!(resumed_from(&alone), "step-000000002", "the fault must hide the newest checkpoint");
    let mut c = mpi.job(2);
    c.args(["train", "--resume", s(&out.join("r")), "--max-steps", "5", "--lr", "1e-30"])
        .env("TRAINER_FAULT", "1:0:stale");
    let res = wait_within(spawn_piped(&mut c), Duration::from_secs(120), "the job with a stale rank");
    assert!(res.status.success(), "{}", text(&res));
    assert_eq!(resumed_from(&out.join("r")), "step-000000004");
    let stale_rank = std::fs::read_to_string(out.join("r/rank1.log")).unwrap();
    assert!(stale_rank.contains("resuming from") && stale_rank.contains("step-000000004 at step 4"), "{stale_rank}");
    let centres = |step: u64| {
        let file = out.join(format!("r/checkpoints/step-{step:09}/model.safetensors"));
        safetensors(&file)
            .into_iter()
            .find(|(n, _, _)| n == "arcface.weight")
            .map(|(_, _, bytes)| f32s(&bytes))
            .expect("arcface.weight")
    };
    assert!(centres(4) == centres(5), "a rank resumed its centres from another checkpoint than rank 0's");
}
