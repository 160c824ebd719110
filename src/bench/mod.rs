//! `trainer bench ...`: throughput benchmarks printed side by side with their baselines.

pub mod allreduce;
pub mod plateau;
pub mod train;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Images/s of the full training step (forward, ArcFace loss, backward, SGD) on synthetic batches.
    Train(train::TrainBenchArgs),
    /// dlib's plateau check at n losses, and the schedule's cost per step.
    Plateau(plateau::PlateauBenchArgs),
    /// All-reduce time and bus bandwidth against the ring bound (run under mpirun).
    Allreduce(allreduce::AllreduceArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Plateau(a) => plateau::run(a),
        BenchCommand::Allreduce(a) => allreduce::run(a),
    }
}
