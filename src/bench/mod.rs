//! `trainer bench ...`: throughput benchmarks printed side by side with their baselines.

pub mod allreduce;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Gradient all-reduce time and bandwidth vs the ring bound (run under mpirun -n N).
    Allreduce(allreduce::AllreduceArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Allreduce(a) => allreduce::run(a),
    }
}
