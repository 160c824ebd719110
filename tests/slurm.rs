//! `sbatch launch/slurm.sbatch train FR ...` under a real one-node Slurm (launch/test.sh
//! starts it with launch/slurm-cluster.sh and exports SLURM_CONF): 2 ranks with the MPICH
//! and the OpenMPI build, a requeued job resuming its own run, a job reaching its time
//! limit requeueing itself, and srun without a PMI plugin refused.
//! The jobs share one node, so the tests take turns. No test here starts mpirun (srun
//! starts the ranks), so none has `mpi` in its name: the OpenMPI pass need not repeat them.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One job on the node at a time.
static NODE: Mutex<()> = Mutex::new(());

/// A Slurm job of this test, cancelled if the test ends before it does.
struct Job {
    id: String,
    output: PathBuf,
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg(&self.id).output();
    }
}

impl Job {
    /// `scontrol show job` as key=value pairs (one line with -o).
    fn fields(&self) -> Vec<(String, String)> {
        let out = Command::new("scontrol").args(["show", "job", "-o", &self.id]).output().expect("run scontrol");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    }

    fn field(&self, key: &str) -> String {
        self.fields().into_iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or_default()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits until the job has ended, lifting the delay Slurm puts on a requeued job
    /// (about two minutes) whenever it waits on it; returns its final state. The delay is
    /// lifted only 2 s into it: slurmd refuses a credential issued in the same second as the
    /// old allocation's was revoked ("Job credential revoked"), and the job then fails.
    fn wait_end(&self, limit: Duration) -> String {
        let t = Instant::now();
        let mut delayed_since = None;
        loop {
            let fields = self.fields();
            let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("");
            let state = get("JobState").to_string();
            let delayed = state == "PENDING" && get("Reason") == "BeginTime";
            match delayed_since {
                _ if !delayed => delayed_since = None,
                None => delayed_since = Some(Instant::now()),
                Some(since) if since.elapsed() >= Duration::from_secs(2) => {
                    delayed_since = None;
                    Command::new("scontrol")
                        .args(["update", &format!("JobId={}", self.id), "StartTime=now"])
                        .output()
                        .expect("run scontrol update");
                }
                Some(_) => {}
            }
            if !["PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", ""]
                .contains(&state.as_str())
            {
                return state;
            }
            assert!(
                t.elapsed() < limit,
                "job {} still {state} after {limit:?}; its output:\n{}",
                self.id,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The cluster (SLURM_CONF) and sbatch, or a failure under CI.
fn slurm() -> Option<()> {
    if std::env::var_os("SLURM_CONF").is_none() {
        return missing(
            "no Slurm: SLURM_CONF is not set (launch/test.sh starts one with launch/slurm-cluster.sh start DIR)",
        );
    }
    if Command::new("sinfo").arg("-h").output().map_or(true, |o| !o.status.success()) {
        return missing("no Slurm answers: sinfo failed (launch/slurm-cluster.sh start DIR)");
    }
    Some(())
}

/// The `trainer` of the MPICH build (target/release) or the OpenMPI one (target/openmpi/release).
fn build(name: &str) -> Option<PathBuf> {
    let release = Path::new(env!("CARGO_BIN_EXE_trainer")).parent().expect("target/release");
    let trainer = if name == "mpich" { release.join("trainer") } else { release.join("../openmpi/release/trainer") };
    if !trainer.with_file_name("trainer-torch").is_file() {
        return missing(&format!(
            "no {name} build at {}: TRAINER_MPI={name} . launch/setup.sh && cargo build --release --workspace",
            trainer.display()
        ));
    }
    Some(trainer)
}

/// A small training run on synthetic faces, checkpointing every `save_every` steps.
struct Setup {
    dir: tempfile::TempDir,
    train: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let train = packed_synth(dir.path(), "train", 16, 12, 2, 1);
        Setup { dir, train }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("Model")
    }

    /// `sbatch [sbatch_args] launch/slurm.sbatch train FR ...` with 2 tasks on the CPU.
    fn submit(&self, trainer: &Path, sbatch_args: &[&str], env: &[(&str, &str)], max_steps: u64) -> Job {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("launch/slurm.sbatch");
        let output = self.dir.path().join("job-%j.out");
        let steps = max_steps.to_string();
        let mut cmd = Command::new("sbatch");
        cmd.current_dir(self.dir.path()).env("TRAINER_BIN", trainer).envs(env.iter().copied());
        cmd.args(["--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"])
            .arg(format!("--output={}", output.display()))
            .args(sbatch_args)
            .arg(&script);
        cmd.args(["train", "FR", "--arch", "tiny", "--size", "32", "--batch-size", "8", "--emb-dim", "32"])
            .args(["--arc-s", "16", "--arc-m", "0.2", "--threads", "1", "--workers", "1", "--log-every", "5"])
            .args(["--save-every", "10", "--collective-timeout", "300", "--max-steps", &steps])
            .args(["--train-sets", s(&self.train), "--out", s(&self.out())]);
        let out = cmd.output().expect("run sbatch");
        assert!(out.status.success(), "sbatch failed:\n{}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string();
        assert!(id.chars().all(|c| c.is_ascii_digit()) && !id.is_empty(), "sbatch printed no job id: {}", text(&out));
        let output = self.dir.path().join(format!("job-{id}.out"));
        Job { id, output }
    }

    /// The run directory the job's id names.
    fn run(&self, job: &Job) -> PathBuf {
        self.out().join(format!("FR-slurm-{}", job.id))
    }
}

fn events<'a>(log: &'a [Value], name: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["event"] == name).collect()
}

/// One history: a loss per step up to `steps`, every progress line's step once, and the
/// run ended at `--max-steps`.
fn assert_one_history(run: &Path, steps: u64, job: &Job) {
    let log = log_lines(run);
    let ends = events(&log, "end");
    let last =
        ends.last().unwrap_or_else(|| panic!("no end event in {}; job output:\n{}", run.display(), job.output()));
    assert_eq!((last["reason"].as_str(), last["step"].as_u64()), (Some("MaxSteps"), Some(steps)), "{last}");
    assert_eq!(losses(run, "FR").len() as u64, steps, "one loss per step in loss_debug/FR_loss.txt");
    let logged: Vec<u64> = log.iter().filter(|e| e.get("event").is_none()).filter_map(|e| e["step"].as_u64()).collect();
    let expected: Vec<u64> = (1..=steps / 5).map(|k| k * 5).collect();
    assert_eq!(logged, expected, "each progress line once, in order (log.txt)");
}

/// Waits for both ranks to log their pids (and, with `after_steps`, rank 0 a first progress
/// line), then stops them (SIGSTOP), so the job cannot reach --max-steps before it is signalled.
fn freeze(run: &Path, job: &Job, after_steps: bool) -> [u32; 2] {
    let t = Instant::now();
    let pids = loop {
        let started =
            !after_steps || log_lines(run).iter().any(|e| e.get("event").is_none() && e["step"].as_u64().is_some());
        if let (Some(a), Some(b), true) = (rank_pid(run, 0), rank_pid(run, 1), started) {
            break [a, b];
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the job never started training:\n{}", job.output());
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(&pids, "STOP");
    pids
}

fn signal(pids: &[u32], sig: &str) {
    for pid in pids {
        Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    }
}

#[test]
fn slurm_sbatch_trains_two_ranks_with_each_build() {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(()) = slurm() else { return };
    let setup = Setup::new();
    for (name, plugin) in [("mpich", "pmi2"), ("openmpi", "pmix")] {
        let Some(trainer) = build(name) else { return };
        let job = setup.submit(&trainer, &["--time=5"], &[], 12);
        assert_eq!(job.wait_end(Duration::from_secs(120)), "COMPLETED", "{name}:\n{}", job.output());
        let run = setup.run(&job);
        let log = log_lines(&run);
        let start = events(&log, "start");
        assert_eq!(start.len(), 1, "{name}: one start event");
        assert_eq!(start[0]["world_size"], 2, "{name}: {}", start[0]);
        assert_eq!(start[0]["config"]["run"]["run_id"], format!("FR-slurm-{}", job.id));
        assert_one_history(&run, 12, &job);
        let output = job.output();
        assert!(output.contains(&format!("srun --mpi={plugin} --kill-on-bad-exit=1")), "{name}:\n{output}");
        assert!(output.contains("training finished (MaxSteps)"), "{name}:\n{output}");
        assert!(!run.join("trainer.lock").exists(), "{name}: the lock is released");
    }
}

#[test]
fn slurm_requeued_job_resumes_its_own_run() {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(()) = slurm() else { return };
    let Some(trainer) = build("mpich") else { return };
    let setup = Setup::new();
    let job = setup.submit(&trainer, &["--time=5"], &[], 40);
    let run = setup.run(&job);
    freeze(&run, &job, true);
    // Slurm continues the stopped ranks and sends them SIGTERM: they stop at one step and checkpoint.
    let out = Command::new("scontrol").args(["requeue", &job.id]).output().unwrap();
    assert!(out.status.success(), "scontrol requeue: {}", text(&out));
    assert_eq!(job.wait_end(Duration::from_secs(150)), "COMPLETED", "{}", job.output());
    assert!(job.field("Restarts").parse::<u32>().unwrap_or(0) >= 1, "{:?}", job.fields());
    let log = log_lines(&run);
    let stopped = events(&log, "end").first().map(|e| (e["reason"].clone(), e["step"].as_u64().unwrap_or(0)));
    let (reason, at) = stopped.unwrap_or_else(|| panic!("no end event:\n{}", job.output()));
    assert!(reason == "Signal" && (5..40).contains(&at), "the first start stopped on SIGTERM: {reason} at {at}");
    let resume = events(&log, "resume");
    assert_eq!(resume.len(), 1, "one resume:\n{}", job.output());
    assert_eq!(resume[0]["step"].as_u64(), Some(at), "resumed from the checkpoint written on SIGTERM");
    assert_eq!(resume[0]["slurm_restart_count"], 1, "{}", resume[0]);
    assert_one_history(&run, 40, &job);
}

#[test]
fn slurm_time_limit_checkpoints_and_requeues_itself() {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(()) = slurm() else { return };
    let Some(trainer) = build("mpich") else { return };
    let setup = Setup::new();
    let job = setup.submit(&trainer, &["--time=1", "--signal=B:USR1@40"], &[], 40);
    let run = setup.run(&job);
    // Frozen ranks cannot finish within the minute: only the warning before the limit ends this
    // start. Slurm may send it up to 60 s early, even before the first step.
    let pids = freeze(&run, &job, false);
    let t = Instant::now();
    while !job.output().contains("SIGUSR1") {
        assert!(t.elapsed() < Duration::from_secs(90), "no SIGUSR1 before the time limit:\n{}", job.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&pids, "CONT");
    assert_eq!(job.wait_end(Duration::from_secs(150)), "COMPLETED", "{}", job.output());
    let output = job.output();
    assert!(output.contains("requeueing the job"), "{output}");
    assert!(output.contains("training finished (MaxSteps)"), "{output}");
    let log = log_lines(&run);
    let first_end = events(&log, "end").first().map(|e| e["reason"].clone());
    assert_eq!(first_end, Some(Value::from("Signal")), "the first start checkpointed on SIGUSR1");
    let resume = events(&log, "resume");
    assert!(resume.first().is_some_and(|r| r["slurm_restart_count"] == 1), "{output}");
    assert_one_history(&run, 40, &job);
}

#[test]
fn slurm_srun_without_pmi_is_refused() {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(()) = slurm() else { return };
    let Some(trainer) = build("mpich") else { return };
    let setup = Setup::new();
    let job = setup.submit(&trainer, &["--time=5"], &[("TRAINER_SRUN_MPI", "none")], 12);
    assert_eq!(job.wait_end(Duration::from_secs(120)), "FAILED", "{}", job.output());
    let output = job.output();
    assert!(output.contains("srun --mpi=none"), "{output}");
    assert!(output.contains("mis-launched") && output.contains("srun --mpi=pmi2"), "{output}");
    assert!(output.contains("not requeued"), "{output}");
    assert!(events(&log_lines(&setup.run(&job)), "start").is_empty(), "no rank trained");
}

/// `--auto-resume` as a user types it outside Slurm (`--run-id` names the run): fresh, then
/// continued with a higher --max-steps, then nothing left to train, then another run refused.
#[test]
fn auto_resume_continues_its_own_run_and_refuses_another() {
    let setup = Setup::new();
    let run = setup.out().join("r");
    let train = |max_steps: &str, size: &str| {
        trainer()
            .env("RUST_LOG", "info")
            .args(["train", "FR", "--auto-resume", "--run-id", "r", "--arch", "tiny", "--size", size])
            .args(["--batch-size", "8", "--emb-dim", "32", "--threads", "1", "--workers", "1", "--log-every", "5"])
            .args(["--save-every", "5", "--max-steps", max_steps, "--train-sets", s(&setup.train)])
            .args(["--out", s(&setup.out())])
            .env_remove("SLURM_JOB_ID")
            .output()
            .expect("spawn trainer")
    };
    for steps in ["10", "20"] {
        let out = train(steps, "32");
        assert!(out.status.success(), "--max-steps {steps}: {}", text(&out));
    }
    let log = log_lines(&run);
    let (start, resume) = (events(&log, "start"), events(&log, "resume"));
    assert_eq!((start.len(), resume.len()), (1, 1), "a fresh start, then one resume");
    assert_eq!(resume[0]["step"], 10);
    assert_eq!(resume[0]["slurm_restart_count"], Value::Null);
    assert_eq!(losses(&run, "FR").len(), 20);

    let again = train("20", "32");
    assert!(again.status.success() && text(&again).contains("nothing left to train"), "{}", text(&again));
    assert_eq!(log_lines(&run).len(), log.len(), "a finished run is left as it was");

    let other = train("20", "48");
    assert_eq!(other.status.code(), Some(2), "{}", text(&other));
    let msg = text(&other);
    assert!(msg.contains("holds another run") && msg.contains("size 32 there, 48 here"), "{msg}");
}
