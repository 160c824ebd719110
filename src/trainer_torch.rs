//! `trainer-torch`: the libtorch half of `trainer` — `train`, `eval`, `bench train` and
//! `bench allreduce`. Users run `trainer`, which hands these commands over by `exec`; the
//! data side (shards, pipeline, plateau rule) comes from the `trainer` library.
//!
//! Modules, in the order the data meets them: `model` (ResNet, heads, ArcFace) → `optim`
//! (SGD) → `dist` (single / MPI / NCCL) → `train` (session, loop, checkpoints, logs) →
//! `eval` (metrics).

mod dist;
mod eval;
mod model;
mod optim;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use trainer::{pipeline, plateau, rng};

#[derive(Parser, Debug)]
#[command(name = "trainer", version, about = "The libtorch commands of trainer (run them through `trainer`)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train FR, Gender, Age or Multi (single process, or one rank per process under mpirun).
    Train(Box<train::TrainArgs>),
    /// Evaluate a run's checkpoint on validation sets.
    Eval(eval::EvalArgs),
    /// Benchmarks that need libtorch: training step, all-reduce.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Images/s of the full training step (forward, ArcFace loss, backward, SGD) on synthetic batches.
    Train(train::bench::TrainBenchArgs),
    /// All-reduce time and bus bandwidth against the ring bound (run under mpirun).
    Allreduce(dist::bench::AllreduceArgs),
}

/// Parses arguments (translating the seed's single-dash flags), sets up logging, runs.
fn main() -> ExitCode {
    let args = train::seed_flags::translate(std::env::args_os().collect());
    let cli = Cli::parse_from(args);
    trainer::cli::init_tracing();
    trainer::cli::finish(match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(Bench::Train(a)) => train::bench::run(a),
        Command::Bench(Bench::Allreduce(a)) => dist::bench::run(a),
    })
}
