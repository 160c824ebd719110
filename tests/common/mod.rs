//! Helpers for integration tests that drive the real `trainer` binary: the one harness
//! every file in tests/ includes (`mod common;`), so each test binary uses only some of it.
#![allow(dead_code, unused_imports)]

pub mod images;
pub mod rec;
pub mod shards;
mod tiny;

pub use images::{image_bytes, large_jpeg, png};
pub use tiny::{tiny_train, TinyTrain};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `trainer` binary under test, logging warnings only.
pub fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs `trainer args...` to its end at the binary's default log level (info), whatever
/// `RUST_LOG` the harness has: the tests that use it read the reports it logs.
pub fn output(args: &[&str]) -> Output {
    trainer().env("RUST_LOG", "info").args(args).output().expect("spawn trainer")
}

/// `trainer-torch`, which cargo builds beside `trainer` (`cargo build --workspace`).
pub fn torch_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_trainer")).with_file_name("trainer-torch");
    assert!(
        path.is_file(),
        "{} is missing: build the whole workspace (cargo build --release --workspace)",
        path.display()
    );
    path
}

/// Runs `trainer args...`, panicking with its output when it fails.
pub fn run_ok(args: &[&str]) -> Output {
    let out = trainer().args(args).output().expect("spawn trainer");
    assert!(out.status.success(), "trainer {args:?} failed:\n{}", text(&out));
    out
}

/// A process's stdout then stderr, as text.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// One stream of a process's output, as text.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bytes as lowercase hex, two digits each: how the reference scripts print binary data.
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// A synthetic dataset packed into `shards` shards: returns the `DIR/NAME` spec.
pub fn packed_synth(dir: &Path, name: &str, identities: u32, per_identity: u32, shards: u32, seed: u32) -> PathBuf {
    let img = dir.join(format!("{name}-img"));
    let (ids, per, sd, sh) = (identities.to_string(), per_identity.to_string(), seed.to_string(), shards.to_string());
    run_ok(&["synth", "--out", s(&img), "--identities", &ids, "--per-identity", &per, "--size", "32", "--seed", &sd]);
    let out = dir.join("shards");
    let list = img.join("list.tsv");
    run_ok(&["pack", s(&img), "--list", s(&list), "--name", name, "--shards", &sh, "--out", s(&out)]);
    out.join(name)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A tool a test needs is missing. The test fails, unless `TRAINER_ALLOW_SKIP=1` is set
/// (and `CI` is not: `launch/test.sh` exports `CI=true`, which allows no skips); then the
/// skip is printed past the harness's capture and `None` comes back, so the call site stays
/// one line: `let Some(x) = helper() else { return };`.
#[must_use = "a missing tool: return from the test when this is None"]
pub fn missing<T>(what: &str) -> Option<T> {
    let on = |var: &str| std::env::var(var).is_ok_and(|v| v == "1" || v == "true");
    if on("CI") {
        panic!("{what} (CI is set: a missing tool fails the test; launch/setup.sh installs it)");
    }
    if !on("TRAINER_ALLOW_SKIP") {
        panic!("{what}: a missing tool fails the test (launch/setup.sh installs it; TRAINER_ALLOW_SKIP=1 skips)");
    }
    let test = std::thread::current().name().unwrap_or("main").to_string();
    notice(&format!("SKIPPED {test}: {what} (TRAINER_ALLOW_SKIP=1; launch/setup.sh installs it)"));
    None
}

/// A note written past the test harness's output capture (which takes only `print!` and
/// `eprint!`), so it is seen even when the test passes.
pub fn notice(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOTICE: {text}");
}

/// Runs a script from `benches/` with `python`, returning its stdout; panics with its
/// stderr when it fails.
pub fn run_script(python: &Path, script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches").join(script);
    let out = Command::new(python).arg(&path).args(args).output().expect("run the reference python");
    assert!(out.status.success(), "{} {args:?} failed:\n{}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// An MPI with its own launcher and the trainer built against it. `launch/test.sh` runs
/// the MPI tests twice: under MPICH (the default build, target/release) and under
/// `TRAINER_MPI=openmpi` (the OpenMPI build, target/openmpi/release). Debian's plain
/// `mpirun` follows whichever MPI was installed last, so each build is paired with its
/// launcher by name.
pub struct Mpi {
    pub name: &'static str,
    pub launcher: PathBuf,
    pub trainer: PathBuf,
}

/// The MPI this test pass runs under (`TRAINER_MPI`, default mpich), when installed and
/// built; else [`missing`].
/// Only tests named `*mpi*` may start jobs: the OpenMPI pass selects them by that name.
#[must_use = "None: the tool is missing and skips are allowed; return from the test"]
pub fn mpi() -> Option<Mpi> {
    let test = std::thread::current().name().unwrap_or("main").to_string();
    assert!(
        test == "main" || test.contains("mpi"),
        "{test} starts mpirun: put `mpi` in its name so the OpenMPI pass runs it"
    );
    match std::env::var("TRAINER_MPI").as_deref() {
        Err(_) | Ok("mpich") | Ok("") => Mpi::of("mpich"),
        Ok("openmpi") => Mpi::of("openmpi"),
        Ok(other) => panic!("TRAINER_MPI={other}: expected mpich or openmpi"),
    }
}

impl Mpi {
    /// `name` ("mpich" or "openmpi") with its launcher and build.
    #[must_use = "None: the tool is missing and skips are allowed; return from the test"]
    pub fn of(name: &'static str) -> Option<Mpi> {
        let Some(launcher) = launcher(name) else {
            return missing(&format!("mpirun.{name} not found; TRAINER_MPI={name} . launch/setup.sh installs it"));
        };
        let release = Path::new(env!("CARGO_BIN_EXE_trainer")).parent().expect("target/release");
        let trainer =
            if name == "mpich" { release.join("trainer") } else { release.join("../openmpi/release/trainer") };
        if !trainer.with_file_name("trainer-torch").is_file() {
            return missing(&format!(
                "no {name} build at {}: TRAINER_MPI={name} . launch/setup.sh && cargo build --release --workspace",
                trainer.display()
            ));
        }
        Some(Mpi { name, launcher, trainer })
    }

    /// `mpirun -n N trainer` for this MPI, arguments to follow.
    pub fn job(&self, n: usize) -> Command {
        let mut c = Command::new(&self.launcher);
        if self.name == "openmpi" {
            // OpenMPI refuses root, and more ranks than cores, unless told; MPICH needs neither.
            c.args(["--allow-run-as-root", "--oversubscribe"]);
            // Containers often forbid the cross-process reads (CMA) its shared-memory
            // transport uses for large messages; plain copies work everywhere.
            c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
            // Two jobs starting at once race to create the same session directory
            // (/tmp/ompi.<host>.<uid>) and one fails with "File exists": each job gets its own.
            let session = tempfile::Builder::new().prefix("ompi-session-").tempdir().expect("a temp dir").keep();
            c.env("OMPI_MCA_orte_tmpdir_base", session);
        }
        c.args(["-n", &n.to_string()]).arg(&self.trainer).env("RUST_LOG", "warn");
        c
    }
}

/// `mpirun.<name>` on PATH (Debian's names), else a plain `mpirun` that says it is `name`.
fn launcher(name: &str) -> Option<PathBuf> {
    let on_path =
        |file: &str| std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(file)).find(|p| p.exists());
    if let Some(named) = on_path(&format!("mpirun.{name}")) {
        return Some(named);
    }
    let plain = on_path("mpirun")?;
    let version = Command::new(&plain).arg("--version").output().ok()?;
    let says_openmpi = String::from_utf8_lossy(&version.stdout).contains("Open MPI");
    (says_openmpi == (name == "openmpi")).then_some(plain)
}

/// The reference-implementation Python (`TRAINER_REF_PYTHON`, set by launch/setup.sh)
/// when it can import `module`; else [`missing`].
#[must_use = "None: the tool is missing and skips are allowed; return from the test"]
pub fn ref_python(module: &str) -> Option<PathBuf> {
    python_with("TRAINER_REF_PYTHON", module)
}

/// The PyTorch venv's Python (`$TORCH_VENV/bin/python`) when it can import `module`; else
/// [`missing`].
#[must_use = "None: the tool is missing and skips are allowed; return from the test"]
pub fn torch_python(module: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("TORCH_VENV").map(PathBuf::from);
    let py = venv.map(|v| v.join("bin/python")).filter(|p| p.exists());
    check_python(py, "TORCH_VENV", module)
}

fn python_with(var: &str, module: &str) -> Option<PathBuf> {
    check_python(std::env::var_os(var).map(PathBuf::from).filter(|p| p.exists()), var, module)
}

fn check_python(py: Option<PathBuf>, var: &str, module: &str) -> Option<PathBuf> {
    let Some(py) = py else {
        return missing(&format!("{var} is not set or names no python"));
    };
    let ok = Command::new(&py).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success());
    if !ok {
        return missing(&format!("{} cannot import {module}", py.display()));
    }
    Some(py)
}

/// JSON lines of a run's log.txt.
pub fn log_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("log.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("log.txt line is JSON"))
        .collect()
}

/// The per-step losses written to loss_debug/<task>_loss.txt.
pub fn losses(run: &Path, task: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("loss_debug").join(format!("{task}_loss.txt")))
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().parse().expect("loss is a number"))
        .collect()
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Waits until `path` exists (a checkpoint a running process is about to write).
pub fn wait_for(path: &Path) {
    let t = std::time::Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(120), "{} never appeared", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The tensors of a `.safetensors` file by name: dtype and raw little-endian bytes (the
/// format is an 8-byte header length, a JSON header, then the data), sorted by name.
pub fn safetensors(path: &Path) -> Vec<(String, String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors header is JSON");
    let data = &bytes[8 + n..];
    let mut out: Vec<(String, String, Vec<u8>)> = header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            let off = &v["data_offsets"];
            let (a, b) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
            (name, v["dtype"].as_str().unwrap().to_string(), data[a..b].to_vec())
        })
        .collect();
    out.sort();
    out
}

/// An F32 tensor's values from `safetensors`' raw bytes.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// An insightface pair set (`lfw.bin` style) as Python 2's `pickle.dump((images, issame),
/// f, protocol=2)` writes it: images as `str` (SHORT_BINSTRING / BINSTRING), bools as
/// NEWTRUE / NEWFALSE; images 2i and 2i+1 form pair i.
pub fn pair_set_py2(images: &[Vec<u8>], issame: &[bool]) -> Vec<u8> {
    let mut p = b"\x80\x02](".to_vec();
    for img in images {
        if img.len() < 256 {
            p.extend_from_slice(&[b'U', img.len() as u8]);
        } else {
            p.push(b'T');
            p.extend_from_slice(&(img.len() as u32).to_le_bytes());
        }
        p.extend_from_slice(img);
    }
    p.extend_from_slice(b"e](");
    p.extend(issame.iter().map(|&s| if s { 0x88 } else { 0x89 }));
    p.extend_from_slice(b"e\x86.");
    p
}

/// Starts `cmd` with its output captured.
pub fn spawn_piped(cmd: &mut Command) -> std::process::Child {
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn")
}

/// Waits for `child`, killing it (and failing the test) after `limit`: a hang must fail
/// the suite, not stall it.
pub fn wait_within(mut child: std::process::Child, limit: std::time::Duration, what: &str) -> Output {
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// The pid rank `rank` of a run wrote into its log, once it has.
pub fn rank_pid(run: &Path, rank: usize) -> Option<u32> {
    let log = std::fs::read_to_string(run.join(format!("rank{rank}.log"))).ok()?;
    log.split("pid ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Starts `mpirun -n 2 trainer <args>` (a training run writing `run`), waits for rank 1 to
/// log its pid, lets the job step for half a second, kill -9s rank 1, and returns the
/// job's output and how long it took to end after the kill (failing past 90 s).
pub fn kill_rank_one(mpi: &Mpi, args: &[&str], run: &Path) -> (Output, std::time::Duration) {
    use std::time::{Duration, Instant};
    let job = spawn_piped(mpi.job(2).args(args));
    let t = Instant::now();
    let pid = loop {
        if let Some(pid) = rank_pid(run, 1) {
            break pid;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "rank 1 never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let killed_at = Instant::now();
    let out = wait_within(job, Duration::from_secs(90), "the job after a rank died");
    (out, killed_at.elapsed())
}

/// Waits (up to 60 s) until every rank of a job that ended is gone. OpenMPI's mpirun can
/// return while the ranks it told to stop are still exiting, still holding the run's lock.
pub fn wait_for_ranks_to_exit(run: &Path, ranks: usize) {
    let started = std::time::Instant::now();
    while (0..ranks).filter_map(|r| rank_pid(run, r)).any(|p| Path::new(&format!("/proc/{p}")).exists()) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the ranks of {} are still running 60 s after their job ended",
            run.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
