//! `trainer train`: the training loop, its configuration, checkpoints and logs.

pub mod seed_flags;

/// Arguments (filled in by this module's implementation).
#[derive(clap::Args, Debug)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
