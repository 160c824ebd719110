//! `trainer verify`: checksums, offsets and (optionally) decodability of every record.

/// Arguments (filled in by this module's implementation).
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {}

pub fn run(_args: VerifyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
