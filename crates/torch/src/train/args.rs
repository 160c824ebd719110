//! `trainer train`'s command line: the run to resume or the recipe to start from, plus
//! every setting of `TrainConfig` as a flag.

use anyhow::{Context, Result};
use clap::ArgMatches;
use std::path::PathBuf;

use crate::config::TrainConfig;

#[derive(clap::Args, Debug)]
#[command(after_help = "The seed's flags work too: -train_sets -valid_sets -img_w -lr_f -lr_g -lr_a \
-w_s -w_f -w_g -w_a -fr_dim -s -model -is_s_t.\n\
Distributed: mpirun -n 4 trainer train FR --train-sets shards/ms1m ... (one rank per GPU).")]
pub struct TrainArgs {
    /// Recipe TOML (see training/); flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue a run from its latest checkpoint: the run directory (Model/<run-id>).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Continue this command's own run when its directory (--out/--run-id) has a checkpoint,
    /// start it when not; a directory holding another run is refused. Under Slurm the run id
    /// defaults to <task>-slurm-<job id>, which a requeued job keeps (launch/slurm.sbatch).
    #[arg(long, conflicts_with = "resume")]
    pub auto_resume: bool,
    /// Take over the run directory's lock (`trainer.lock`) even when another job holds it:
    /// only when that job is known to be gone (e.g. killed on another node).
    #[arg(long)]
    pub force: bool,
    /// Every rank logs its progress lines (by default only rank 0; the others log warnings).
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub settings: TrainConfig,
}

impl TrainArgs {
    /// Flags over recipe over defaults; on `--resume`, flags over the run's saved settings.
    pub fn resolve(&self, matches: &ArgMatches) -> Result<TrainConfig> {
        self.resolve_from(self.resume.as_deref(), matches)
    }

    /// As `resolve`, continuing the run in `resume` when given.
    pub fn resolve_from(&self, resume: Option<&std::path::Path>, matches: &ArgMatches) -> Result<TrainConfig> {
        let base = match resume {
            Some(run_dir) => super::run_config::read(run_dir)
                .with_context(|| format!("--resume {}", run_dir.display()))
                .context(trainer_data::term::BadSettings)?,
            None => TrainConfig::default(),
        };
        TrainConfig::resolve(base, self.config.as_deref(), &self.settings, matches)
    }
}
