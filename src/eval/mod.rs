//! Validation metrics and `trainer eval`.

pub mod metrics;

/// Arguments (filled in by this module's implementation).
#[derive(clap::Args, Debug)]
pub struct EvalArgs {}

pub fn run(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
