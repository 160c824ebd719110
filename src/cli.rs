//! The command line: one subcommand per job, each delegating to its module's `run`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
    Train(crate::train::TrainArgs),
    /// Evaluate a run's checkpoint on validation sets.
    Eval(crate::eval::EvalArgs),
    /// Run dlib's plateau test on a loss file: steps_without_decrease and the robust count.
    Plateau(crate::plateau::PlateauArgs),
    /// Benchmarks: data pipeline, training step, all-reduce.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
}

/// Parses arguments (translating the seed's single-dash flags), sets up logging, runs.
pub fn main() -> ExitCode {
    let args = crate::train::seed_flags::translate(std::env::args_os().collect());
    let cli = Cli::parse_from(args);
    init_tracing();
    let result = match cli.command {
        Command::Pack(a) => crate::pack::run(a),
        Command::Inspect(a) => crate::shards::inspect::run(a),
        Command::Verify(a) => crate::shards::verify::run(a),
        Command::Unpack(a) => crate::shards::unpack::run(a),
        Command::Synth(a) => crate::synth::run(a),
        Command::Train(a) => crate::train::run(a),
        Command::Eval(a) => crate::eval::run(a),
        Command::Plateau(a) => crate::plateau::run(a),
        Command::Bench(b) => crate::bench::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `info` level.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
