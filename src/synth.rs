//! `trainer synth`: procedurally generated, learnable face-like identities.

/// Arguments (filled in by this module's implementation).
#[derive(clap::Args, Debug)]
pub struct SynthArgs {}

pub fn run(_args: SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
