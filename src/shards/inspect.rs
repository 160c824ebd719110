//! `trainer inspect`: a dataset's shape at a glance.

/// Arguments (filled in by this module's implementation).
#[derive(clap::Args, Debug)]
pub struct InspectArgs {}

pub fn run(_args: InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
