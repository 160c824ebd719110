//! dlib's plateau test (running_gradient) and the learning-rate schedule built on it.

/// Arguments (filled in by this module's implementation).
#[derive(clap::Args, Debug)]
pub struct PlateauArgs {}

pub fn run(_args: PlateauArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
