//! `trainer bench ...`: throughput benchmarks printed side by side with their baselines.
//! `bench train` and `bench allreduce` need libtorch and run in `trainer-torch`
//! (`train::bench`, `dist::bench`).

pub mod data;
pub mod plateau;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Input pipeline throughput (images/s, MB/s) on a packed dataset.
    Data(data::DataArgs),
    /// Images/s of the full training step (forward, ArcFace loss, backward, SGD) on synthetic batches.
    #[command(disable_help_flag = true, long_about = "Images/s of the full training step. Runs in trainer-torch: \
see `trainer bench train --help` for its flags.")]
    Train(crate::cli::Forwarded),
    /// dlib's plateau check at n losses, and the schedule's cost per step.
    Plateau(plateau::PlateauBenchArgs),
    /// All-reduce time and bus bandwidth against the ring bound (run under mpirun).
    #[command(disable_help_flag = true, long_about = "All-reduce time and bus bandwidth. Runs in trainer-torch: \
see `trainer bench allreduce --help` for its flags.")]
    Allreduce(crate::cli::Forwarded),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Data(a) => data::run(a),
        BenchCommand::Plateau(a) => plateau::run(a),
        BenchCommand::Train(_) | BenchCommand::Allreduce(_) => crate::cli::hand_over_to_torch(),
    }
}
