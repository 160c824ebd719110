//! `trainer bench ...`: throughput benchmarks printed side by side with their baselines.

pub mod allreduce;
pub mod data;
pub mod plateau;
pub mod train;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Input pipeline throughput (images/s, MB/s) on a packed dataset.
    Data(data::DataArgs),
    /// Images/s of the full training step (forward, ArcFace loss, backward, SGD) on synthetic batches.
    Train(train::TrainBenchArgs),
    /// dlib's plateau check at n losses, and the schedule's cost per step.
    Plateau(plateau::PlateauBenchArgs),
    /// All-reduce time and bus bandwidth against the ring bound (run under mpirun).
    Allreduce(allreduce::AllreduceArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Data(a) => data::run(a),
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Plateau(a) => plateau::run(a),
        BenchCommand::Allreduce(a) => allreduce::run(a),
    }
}
