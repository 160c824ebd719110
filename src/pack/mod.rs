//! `trainer pack`: images (class folders or a list table) into bin/idx shards.

/// Arguments (filled in by this module's implementation).
#[derive(clap::Args, Debug)]
pub struct PackArgs {}

pub fn run(_args: PackArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
