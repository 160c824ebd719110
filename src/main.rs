//! `trainer`: the command line. Each data command calls `trainer_data` with its typed
//! options and prints what comes back; the libtorch commands are handed to `trainer-torch`.

mod handover;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use handover::Forwarded;
use std::process::ExitCode;
use trainer_data::{bench, pack, plateau, synth, term, tools, watch};

#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about = "Distributed face-recognition trainer over sharded bin/idx datasets",
    long_about = "Pack images into bin/idx shards, then train ResNet + ArcFace (FR), Gender and Age models \
on them, on one CPU/GPU or across MPI ranks (`mpirun -n 4 trainer train FR ...`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pack a folder of class subfolders (or a list table) into bin/idx shards.
    Pack(pack::PackArgs),
    /// Print a dataset's records, labels, per-shard counts and format version.
    Inspect(tools::inspect::InspectArgs),
    /// Check checksums and offsets (and with --decode, decode every image).
    Verify(tools::verify::VerifyArgs),
    /// Write every record back to its original relative path.
    Unpack(tools::unpack::UnpackArgs),
    /// Generate a learnable synthetic face-like dataset in class folders.
    Synth(synth::SynthArgs),
    /// Train FR, Gender, Age or Multi (single process, or one rank per process under mpirun).
    #[command(
        disable_help_flag = true,
        long_about = "Train FR, Gender, Age or Multi. Runs in trainer-torch: \
see `trainer train --help` for its flags."
    )]
    Train(Forwarded),
    /// Evaluate a run's checkpoint on validation sets.
    #[command(
        disable_help_flag = true,
        long_about = "Evaluate a run's checkpoint. Runs in trainer-torch: \
see `trainer eval --help` for its flags."
    )]
    Eval(Forwarded),
    /// Write a run's FR embeddings of a dataset or pair set as a .npy (+ .tsv of row names).
    #[command(
        disable_help_flag = true,
        long_about = "Write a run's FR embeddings as .npy. Runs in trainer-torch: \
see `trainer embed --help` for its flags."
    )]
    Embed(Forwarded),
    /// Trace a run's backbone and FR embedding layer to TorchScript (torch.jit.load, libtorch),
    /// or write its backbone as arcface_torch's backbone.pth (--format arcface-torch).
    #[command(
        disable_help_flag = true,
        long_about = "Export a run's model to TorchScript. Runs in trainer-torch: \
see `trainer export --help` for its flags."
    )]
    Export(Forwarded),
    /// Make a run directory from arcface_torch's backbone.pth (`import arcface-torch FILE ...`).
    #[command(
        disable_help_flag = true,
        long_about = "Import another trainer's weights as a run. Runs in trainer-torch: \
see `trainer import --help` for its flags."
    )]
    Import(Forwarded),
    /// Run dlib's plateau test on a loss file: steps_without_decrease and the robust count.
    Plateau(plateau::PlateauArgs),
    /// Draw runs' curves from their log.txt (loss, lr with decays and rollbacks, validation,
    /// images/s) into one PNG or SVG; several runs share the axes.
    Plot(watch::plot::PlotArgs),
    /// Benchmarks: data pipeline, training step, all-reduce.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Input pipeline throughput (images/s, MB/s) on a packed dataset.
    Data(bench::data::DataArgs),
    /// Images/s of the full training step (forward, ArcFace loss, backward, SGD) on synthetic batches.
    #[command(
        disable_help_flag = true,
        long_about = "Images/s of the full training step. Runs in trainer-torch: \
see `trainer bench train --help` for its flags."
    )]
    Train(Forwarded),
    /// dlib's plateau check at n losses, and the schedule's cost per step.
    Plateau(bench::plateau::PlateauBenchArgs),
    /// IJB-B/IJB-C pooling, pair scoring and TAR table on given per-image features, timed.
    Ijb(bench::ijb::IjbBenchArgs),
    /// All-reduce time and bus bandwidth against the ring bound (run under mpirun).
    #[command(
        disable_help_flag = true,
        long_about = "All-reduce time and bus bandwidth. Runs in trainer-torch: \
see `trainer bench allreduce --help` for its flags."
    )]
    Allreduce(Forwarded),
    /// The ArcFace head's step time, bytes and memory: replicated against Partial FC (under mpirun).
    #[command(
        disable_help_flag = true,
        long_about = "The ArcFace head, replicated against Partial FC. Runs in trainer-torch: \
see `trainer bench head --help` for its flags."
    )]
    Head(Forwarded),
}

fn main() -> ExitCode {
    let matches = trainer_data::bounds::negative_numbers_as_values(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    term::init_tracing();
    term::finish(run(cli.command))
}

fn run(command: Command) -> Result<()> {
    match command {
        // The libtorch commands are handed over in parse-only mode too: trainer-torch parses them.
        Command::Train(_) => {
            handover::ignore_sigusr1_until_handled();
            handover::exec_torch()
        }
        Command::Eval(_)
        | Command::Embed(_)
        | Command::Export(_)
        | Command::Import(_)
        | Command::Bench(BenchCommand::Train(_) | BenchCommand::Allreduce(_) | BenchCommand::Head(_)) => {
            handover::exec_torch()
        }
        _ if trainer_data::bounds::parse_only() => Ok(()),
        Command::Pack(a) => term::print(&pack::pack(&a)?.to_string()),
        Command::Inspect(a) => term::print(&tools::inspect::inspect(&a)?),
        Command::Verify(a) => verify(&a),
        Command::Unpack(a) => term::print(&tools::unpack::unpack(&a)?),
        Command::Synth(a) => synth::synth(&a),
        Command::Plateau(a) => term::print(&plateau::report(&a)?),
        Command::Plot(a) => term::print(&watch::plot::plot(&a)?),
        Command::Bench(BenchCommand::Data(a)) => bench_data(&a),
        Command::Bench(BenchCommand::Plateau(a)) => term::print(&bench::plateau::run(&a)?.to_string()),
        Command::Bench(BenchCommand::Ijb(a)) => term::print(&bench::ijb::run(&a)?),
    }
}

/// Problems go to stderr (the first `--max-errors` in full), the verdict to stdout.
fn verify(args: &tools::verify::VerifyArgs) -> Result<()> {
    let report = tools::verify::verify(args)?;
    for p in report.problems.iter().take(args.max_errors) {
        eprintln!("FAIL {p}");
    }
    if report.problems.len() > args.max_errors {
        eprintln!("... and {} more", report.problems.len() - args.max_errors);
    }
    term::print(&report.verdict(&args.dataset)?)
}

fn bench_data(args: &bench::data::DataArgs) -> Result<()> {
    let (view, header) = bench::data::describe(args)?;
    term::print(&format!("{header}\n"))?;
    let report = bench::data::run(&view, args, |i, r| {
        let skipped = if r.skipped > 0 { format!(" ({} corrupt skipped)", r.skipped) } else { String::new() };
        let _ = term::print(&format!(
            "  rep {}: {:8.1} img/s {:7.1} MB/s {:6.3} CPU ms/img{skipped}\n",
            i + 1,
            r.img_s,
            r.mb_s,
            r.cpu_ms
        ));
    })?;
    term::print(&report.to_string())?;
    if args.json {
        let mut line = serde_json::to_value(&report)?;
        line["bench"] = "data".into();
        term::print(&format!("{line}\n"))?;
    }
    Ok(())
}
