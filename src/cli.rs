//! The command line: one subcommand per job, each delegating to its module's `run`.
//! Commands that need libtorch are parsed here only for `--help`'s list and then handed,
//! argument for argument, to the `trainer-torch` binary beside this one.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// The binary that runs `train`, `eval`, `bench train` and `bench allreduce`.
pub const TORCH_BINARY: &str = "trainer-torch";

#[derive(Parser, Debug)]
#[command(name = "trainer", version, about = "Distributed face-recognition trainer over sharded bin/idx datasets",
    long_about = "Pack images into bin/idx shards, then train ResNet + ArcFace (FR), Gender and Age models \
on them, on one CPU/GPU or across MPI ranks (`mpirun -n 4 trainer train FR ...`).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pack a folder of class subfolders (or a list table) into bin/idx shards.
    Pack(crate::pack::PackArgs),
    /// Print a dataset's records, labels, per-shard counts and format version.
    Inspect(crate::shards::inspect::InspectArgs),
    /// Check checksums and offsets (and with --decode, decode every image).
    Verify(crate::shards::verify::VerifyArgs),
    /// Write every record back to its original relative path.
    Unpack(crate::shards::unpack::UnpackArgs),
    /// Generate a learnable synthetic face-like dataset in class folders.
    Synth(crate::synth::SynthArgs),
    /// Train FR, Gender, Age or Multi (single process, or one rank per process under mpirun).
    #[command(disable_help_flag = true, long_about = "Train FR, Gender, Age or Multi. Runs in trainer-torch: \
see `trainer train --help` for its flags.")]
    Train(Forwarded),
    /// Evaluate a run's checkpoint on validation sets.
    #[command(disable_help_flag = true, long_about = "Evaluate a run's checkpoint. Runs in trainer-torch: \
see `trainer eval --help` for its flags.")]
    Eval(Forwarded),
    /// Run dlib's plateau test on a loss file: steps_without_decrease and the robust count.
    Plateau(crate::plateau::PlateauArgs),
    /// Benchmarks: data pipeline, training step, all-reduce.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
}

/// A command that runs in `trainer-torch`: its arguments, untouched (`--help` included).
#[derive(clap::Args, Debug)]
pub struct Forwarded {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., hide = true)]
    pub args: Vec<OsString>,
}

/// Parses arguments, sets up logging, runs.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    finish(match cli.command {
        Command::Pack(a) => crate::pack::run(a),
        Command::Inspect(a) => crate::shards::inspect::run(a),
        Command::Verify(a) => crate::shards::verify::run(a),
        Command::Unpack(a) => crate::shards::unpack::run(a),
        Command::Synth(a) => crate::synth::run(a),
        Command::Train(_) | Command::Eval(_) => hand_over_to_torch(),
        Command::Plateau(a) => crate::plateau::run(a),
        Command::Bench(b) => crate::bench::run(b),
    })
}

/// Replaces this process with `trainer-torch` and the same arguments. `exec` keeps the
/// PID and environment, so a rank started by `mpirun` stays that rank.
pub fn hand_over_to_torch() -> Result<()> {
    let exe = std::env::current_exe().context("locating the trainer binary")?;
    let torch = exe.with_file_name(TORCH_BINARY);
    if !torch.is_file() {
        bail!(
            "this command runs in {TORCH_BINARY}, the libtorch half of trainer, expected at {} \
             (`cargo build --release` builds both; install them side by side)",
            torch.display()
        );
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "trainer".into());
    let err = std::process::Command::new(&torch).arg0(argv0).args(args).exec();
    Err(err).with_context(|| format!("starting {}", torch.display()))
}

/// The exit status for a command's result, printing the error chain on failure.
pub fn finish(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
