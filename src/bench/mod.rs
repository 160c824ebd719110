//! `trainer bench ...`: throughput benchmarks printed side by side with their baselines.

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Placeholder until the benchmarks land.
    None,
}

pub fn run(_cmd: BenchCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
