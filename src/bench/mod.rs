//! `trainer bench ...`: throughput benchmarks printed side by side with their baselines.

pub mod data;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Input pipeline throughput (images/s, MB/s) on a packed dataset.
    Data(data::DataArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Data(a) => data::run(a),
    }
}
