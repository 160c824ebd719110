//! `trainer unpack`: records back to byte-identical files at their original paths.

/// Arguments (filled in by this module's implementation).
#[derive(clap::Args, Debug)]
pub struct UnpackArgs {}

pub fn run(_args: UnpackArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
