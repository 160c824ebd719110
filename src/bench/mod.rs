//! `trainer bench ...`: throughput benchmarks printed side by side with their baselines.

pub mod plateau;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// dlib's plateau check at n losses, and the schedule's cost per step.
    Plateau(plateau::PlateauBenchArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Plateau(a) => plateau::run(a),
    }
}
