//! `trainer-torch`: the libtorch half of `trainer` — `train`, `eval`, `embed`, `export`,
//! `bench train` and `bench allreduce`. Users run `trainer`, which hands these commands over by `exec`.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;
use trainer_data::term;
use trainer_torch::{bench, eval, export, train};

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
    /// Write a run's FR embeddings of a dataset or pair set as a .npy (+ .tsv of row names).
    Embed(eval::embed::EmbedArgs),
    /// Trace the backbone and FR embedding layer to TorchScript (torch.jit.load, libtorch).
    Export(export::ExportArgs),
    /// Benchmarks that need libtorch: training step, all-reduce.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Images/s of the full training step (forward, ArcFace loss, backward, SGD) on synthetic batches.
    Train(bench::train::TrainBenchArgs),
    /// All-reduce time and bus bandwidth against the ring bound (run under mpirun).
    Allreduce(bench::allreduce::AllreduceArgs),
    /// The ArcFace head's step, bytes and memory: replicated against Partial FC (run under mpirun).
    Head(bench::head::HeadBenchArgs),
}

/// Parses arguments (translating the seed's single-dash flags), sets up logging, runs.
fn main() -> ExitCode {
    let args = train::seed_flags::translate(std::env::args_os().collect());
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    term::init_tracing();
    term::finish(match cli.command {
        Command::Train(a) => train::run(*a, matches.subcommand_matches("train").unwrap_or(&matches)),
        Command::Eval(a) => eval::run(a),
        Command::Embed(a) => eval::embed::run(a),
        Command::Export(a) => export::run(a),
        Command::Bench(Bench::Train(a)) => bench::train::run(a),
        Command::Bench(Bench::Allreduce(a)) => bench::allreduce::run(a),
        Command::Bench(Bench::Head(a)) => bench::head::run(a),
    })
}
