//! `trainer train`: configuration, the per-rank session, the loop, checkpoints and logs.
//!
//! Under `mpirun -n N` every process is one rank with its own device and shards; alone,
//! the same code runs as a single rank.

mod args;
mod auto_resume;
pub mod backward;
pub mod checkpoint;
mod decisions;
mod pools;
mod provenance;
mod record_trace;
pub mod replica;
mod resume_rules;
mod run_claim;
pub mod run_config;
mod run_lock;
pub mod runlog;
pub mod scaler;
pub mod schedule;
pub mod seed_flags;
mod session;
mod signals;
pub mod state;
pub mod step;

use anyhow::Result;

pub use crate::config::TrainConfig;
pub use args::TrainArgs;
pub use session::Session;

/// Settings are checked before any rank does work (a bad value exits with status 2 on
/// every rank); then the launch is checked against the launcher's own count.
pub fn run(args: TrainArgs, matches: &clap::ArgMatches) -> Result<()> {
    let (cfg, resume) = match auto_resume::start_point(&args, matches)? {
        auto_resume::Start::Train(cfg, resume) => (*cfg, resume),
        auto_resume::Start::Finished { run_dir, step, max } => {
            resume_rules::say_finished(&run_dir, step, max);
            return Ok(());
        }
    };
    let launch = crate::dist::launch_info()?;
    let signal = signals::install_signal_flag()?;
    let how = run_claim::Claiming { continues: resume.is_some() || args.auto_resume, force: args.force };
    let result = Session::start(cfg, resume.as_deref(), &launch, how).and_then(|s| s.fit(&signal));
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
