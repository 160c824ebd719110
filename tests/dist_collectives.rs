//! The communication layer through the real binary: `trainer bench allreduce --check`
//! alone and under `mpirun -n 2`, and the failure paths (a rank that exits, is killed, or
//! hangs must end the whole job with a non-zero status instead of hanging it).

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");
/// Far above the 60 s the job must end within; only reached when something hangs.
const OUTER_LIMIT: Duration = Duration::from_secs(150);

mod common;

/// `mpirun -n N trainer args...` under this pass's MPI (see `common::mpi`).
fn mpirun(n: usize, args: &[&str]) -> Option<Command> {
    let mut cmd = common::mpi()?.job(n);
    cmd.args(args);
    Some(cmd)
}

fn run_bounded(mut cmd: Command, what: &str) -> Output {
    common::wait_within(common::spawn_piped(&mut cmd), OUTER_LIMIT, what)
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// This pass's build alone (MPI's singleton start), with no launcher.
#[test]
fn mpi_single_process_check_without_a_launcher() {
    let Some(mpi) = common::mpi() else { return };
    let mut cmd = Command::new(&mpi.trainer);
    cmd.args(["bench", "allreduce", "--check"]);
    let out = run_bounded(cmd, "single check");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rank 0/1: all collective checks passed (backend single"),
        "{}",
        text(&out)
    );
}

#[test]
fn mpi_two_ranks_check_every_collective() {
    let Some(job) = mpirun(2, &["bench", "allreduce", "--check"]) else { return };
    let out = run_bounded(job, "mpirun -n 2 check");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for rank in 0..2 {
        assert!(
            stdout.contains(&format!("rank {rank}/2: all collective checks passed (backend mpi")),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn mpi_a_rank_that_exits_ends_the_job() {
    let Some(job) = mpirun(2, &["bench", "allreduce", "--check", "--die-rank", "1"]) else { return };
    let out = run_bounded(job, "die-rank");
    assert!(!out.status.success(), "the job must fail when a rank exits: {}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("checks passed"), "{}", text(&out));
}

#[test]
fn mpi_a_killed_rank_ends_the_job() {
    // Rank 1 stops taking part and reports its pid; we kill -9 it while rank 0 waits in a
    // collective under the default 60 s watchdog.
    let Some(mut job) = mpirun(2, &["bench", "allreduce", "--check", "--hang-rank", "1"]) else { return };
    let mut child = job.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn mpirun");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut pid = None;
    for line in stderr.lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("rank 1 (pid ") {
            pid = rest.split(')').next().map(str::to_string);
            break;
        }
    }
    let pid = pid.expect("rank 1 never reported its pid");
    let killed = Command::new("kill").args(["-9", &pid]).status().expect("kill");
    assert!(killed.success());
    let out = common::wait_within(child, OUTER_LIMIT, "killed rank");
    assert!(!out.status.success(), "the job must fail when a rank is killed: {}", text(&out));
}

#[test]
fn mpi_a_hung_rank_trips_the_watchdog() {
    let args = ["bench", "allreduce", "--check", "--hang-rank", "1", "--collective-timeout", "3"];
    let Some(job) = mpirun(2, &args) else { return };
    let out = run_bounded(job, "hang-rank");
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rank 0: collective `") && stderr.contains("did not finish within 3 s"), "{}", text(&out));
}

#[test]
fn mpi_bench_reports_bandwidths() {
    let Some(job) = mpirun(2, &["bench", "allreduce", "--mb", "3", "--iters", "2", "--bucket-mb", "2.5"]) else {
        return;
    };
    let out = run_bounded(job, "bench");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("world 2, backend mpi"), "{}", text(&out));
    assert!(
        stdout.contains("bucketed (2.5 MiB, 2 buckets)") && stdout.contains("per-tensor (3 all-reduces)"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("ring bound"), "{}", text(&out));
}

#[test]
fn nccl_check_passes_on_a_gpu_or_fails_clearly() {
    let mut cmd = Command::new(TRAINER);
    cmd.args(["bench", "allreduce", "--check", "--device", "cuda"]);
    let out = run_bounded(cmd, "cuda check");
    let all = text(&out);
    assert!(!all.contains("panicked"), "a missing GPU or NCCL must not panic: {all}");
    if out.status.success() {
        assert!(all.contains("checks passed (backend nccl"), "{all}");
    } else {
        let clear = all.contains("is not available (libtorch sees") || all.contains("NCCL not found (tried:");
        assert!(clear, "the error must say what is missing: {all}");
    }
}
