//! `trainer-torch`'s command tree (the `trainer` binary hands these commands over), in
//! the library so tests can walk every flag of every command.

use clap::{CommandFactory, Parser, Subcommand};

use crate::trained::arcface_torch;
use crate::{bench, train, trained};

#[derive(Parser, Debug)]
#[command(name = "trainer", version, about = "The libtorch commands of trainer (run them through `trainer`)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train FR, Gender, Age or Multi (single process, or one rank per process under mpirun).
    Train(Box<train::TrainArgs>),
    /// Evaluate a run's checkpoint on validation sets.
    Eval(trained::eval::EvalArgs),
    /// Write a run's FR embeddings of a dataset or pair set as a .npy (+ .tsv of row names).
    Embed(trained::embed::EmbedArgs),
    /// Trace the backbone and FR embedding layer to TorchScript (torch.jit.load, libtorch),
    /// or write the backbone as arcface_torch's state dict (--format arcface-torch).
    Export(trained::export::ExportArgs),
    /// Make a run directory from another trainer's weights (arcface_torch's backbone.pth).
    #[command(subcommand)]
    Import(arcface_torch::ImportCommand),
    /// Benchmarks that need libtorch: training step, all-reduce.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Images/s of the full training step (forward, ArcFace loss, backward, SGD) on synthetic batches.
    Train(bench::train::TrainBenchArgs),
    /// All-reduce time and bus bandwidth against the ring bound (run under mpirun).
    Allreduce(bench::allreduce::AllreduceArgs),
    /// The ArcFace head's step, bytes and memory: replicated against Partial FC (run under mpirun).
    Head(bench::head::HeadBenchArgs),
}

/// The command tree as parsed: negative numbers are values (and meet the flags' bounds).
pub fn command() -> clap::Command {
    trainer_data::bounds::negative_numbers_as_values(Cli::command())
}

#[cfg(test)]
mod fuzz;
pub mod hints;
