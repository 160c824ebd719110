//! `trainer train`: configuration, the per-rank session, the loop, checkpoints and logs.
//!
//! Under `mpirun -n N` every process is one rank with its own device and shards; alone,
//! the same code runs as a single rank.

mod args;
pub mod bench;
pub mod checkpoint;
pub mod config;
mod fit;
pub mod runlog;
pub mod scaler;
pub mod seed_flags;
mod session;
pub mod state;
pub mod step;
mod sync;
pub mod validate;

use anyhow::{Context, Result};

pub use args::TrainArgs;
pub use config::TrainConfig;
pub use session::{resolve_device, Session};

pub fn run(args: TrainArgs) -> Result<()> {
    let launch = crate::dist::launch_info();
    let cfg = resolve_config(&args)?;
    let signal = fit::install_signal_flag()?;
    let result = Session::start(cfg, args.resume.as_deref(), &launch).and_then(|s| s.fit(&signal));
    match result {
        Ok(reason) => {
            tracing::info!("rank {}: finished ({reason:?})", launch.rank);
            crate::dist::finalize();
            Ok(())
        }
        // One rank's error must end the whole job, not leave the others in a collective.
        Err(e) if launch.world > 1 => crate::dist::abort_job(&format!("rank {}: {e:#}", launch.rank)),
        Err(e) => Err(e),
    }
}

/// Flags over recipe over defaults; on `--resume`, flags over the run's saved settings.
fn resolve_config(args: &TrainArgs) -> Result<TrainConfig> {
    let flags = args.overrides()?;
    match &args.resume {
        Some(run_dir) => {
            let path = run_dir.join("config.json");
            let text = std::fs::read_to_string(&path).with_context(|| format!("--resume {}: cannot read {}", run_dir.display(), path.display()))?;
            let saved: TrainConfig = serde_json::from_str(&text).with_context(|| format!("{} is not a valid run config", path.display()))?;
            TrainConfig::resolve_over(saved, args.config.as_deref(), flags)
        }
        None => TrainConfig::resolve_over(TrainConfig::default(), args.config.as_deref(), flags),
    }
}
