//! Setting a run up on one rank: device, communicator, run directory, data, model and the
//! state to start from (fresh, `--init`, or `--resume`); `fit.rs` then runs it.

use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::checkpoint;
use super::config::{SamplerChoice, TrainConfig};
use super::decisions::Judge;
use super::replica::{Replica, Snapshot};
use super::runlog::{utc_stamp, RunLog};
use super::state::TrainState;
use crate::dist::{self, Comm, CommOptions, LaunchInfo, ReduceOp};
use crate::eval::validate::Validator;
use crate::model::{Head, Tasks};
use trainer_data::pipeline::{Loader, LoaderConfig, RankView, SamplerKind};

/// Everything one rank trains with. `fit.rs` drives it; the fields are its components.
pub struct Session {
    pub(super) cfg: TrainConfig,
    pub(super) heads: Vec<Head>,
    pub(super) comm: Box<dyn Comm>,
    pub(super) run_dir: PathBuf,
    pub(super) replica: Replica,
    pub(super) loader: Loader,
    pub(super) validator: Option<Validator>,
    pub(super) state: TrainState,
    pub(super) log: RunLog,
    /// Rank 0's rollback guards (the other ranks keep an idle one).
    pub(super) judge: Judge,
    /// The latest state known good: what a rollback returns to.
    pub(super) good: Good,
}

/// The latest good state: the replica's tensors in host memory and the loop state
/// (its loader position and loss counts included), refreshed at every checkpoint.
pub struct Good {
    pub replica: Snapshot,
    pub state: TrainState,
    pub checkpoint: Option<PathBuf>,
}

impl Session {
    pub fn start(mut cfg: TrainConfig, resume: Option<&Path>, launch: &LaunchInfo) -> Result<Session> {
        let device = crate::device::resolve(&cfg.device, launch)?;
        let threads = cfg.threads.unwrap_or_else(|| default_threads(launch.local_world));
        tch::set_num_threads(threads as i32);
        let opts = CommOptions {
            bucket_bytes: dist::mib_to_bytes(cfg.bucket_mb),
            fp16: cfg.fp16_allreduce,
            timeout: std::time::Duration::from_secs_f64(cfg.collective_timeout),
        };
        let comm = dist::init(device, opts)?;
        let (rank, world) = (comm.rank(), comm.world());
        let run_dir = agree_run_dir(&*comm, &cfg, resume)?;
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;

        let view = Arc::new(
            RankView::open(&cfg.train_sets, rank, world, cfg.stripe_records).with_context(|| format!("rank {rank} of {world}: opening training data"))?,
        );
        let mut classes = [view.num_classes() as f64];
        comm.all_reduce_f64(&mut classes, ReduceOp::Max)?;
        let num_classes = classes[0] as usize;
        if cfg.scale_lr && resume.is_none() {
            let factor = (world * cfg.accum) as f64;
            cfg.lr *= factor;
            for lr in [&mut cfg.lr_fr, &mut cfg.lr_gender, &mut cfg.lr_age].into_iter().flatten() {
                *lr *= factor;
            }
        }
        let heads = Tasks::from(cfg.task).heads();
        let mut replica = Replica::build(&cfg, num_classes, device)?;
        let mut state = TrainState::new(&cfg, &heads, world, num_classes);
        let mut resumed_from = None;
        if resume.is_some() {
            let ckpt = checkpoint::agree_latest(&*comm, &run_dir)?;
            state = checkpoint::load_state(&ckpt)?.state;
            replica.load(&ckpt)?;
            state.best_metric = checkpoint::better_of(state.best_metric, checkpoint::best_metric(&run_dir));
            // --amp given or dropped on resume: the flag wins; a running scale carries on.
            state.loss_scale = match (cfg.amp, state.loss_scale.take()) {
                (true, kept) => kept.or_else(|| Some(super::scaler::LossScale::new(cfg.amp_init_scale))),
                (false, _) => None,
            };
            tracing::info!("resuming {} at step {}", ckpt.display(), state.step);
            resumed_from = Some(ckpt);
        }
        state = broadcast_state(&*comm, state)?;
        replica.broadcast_from_rank0(&*comm)?;

        let mut log = RunLog::open(&run_dir, rank, &heads, resumed_from.as_ref().map(|_| (state.step, &state.loss_counts)))?;
        if cfg.tensorboard {
            log.enable_tensorboard()?;
        }
        if rank == 0 && resume.is_none() {
            checkpoint::write_synced(&run_dir.join("config.json"), &serde_json::to_vec_pretty(&cfg)?)?;
        }
        log.rank_note(&format!(
            "pid {}, device {device:?}, backend {}, world {world}, threads {threads}, shards {:?}, {} records",
            std::process::id(),
            comm.backend(),
            view.dataset.shards.iter().map(|s| s.bin_path().display().to_string()).collect::<Vec<_>>(),
            view.records.len()
        ))?;
        if cfg.amp && !device.is_cuda() {
            log.rank_note("--amp applies to CUDA devices only; training in f32 on the CPU")?;
        }
        if state.world_size != world {
            log.rank_note(&format!("resumed with world size {world}, checkpoint had {}: data order differs from an uninterrupted run", state.world_size))?;
        }
        let event = if resumed_from.is_some() { "resume" } else { "start" };
        log.event(json!({
            "event": event, "step": state.step, "checkpoint": resumed_from, "world_size": world,
            "ranks_per_node": launch.local_world, "effective_batch": cfg.rank_batch() * cfg.accum * world,
            "device": format!("{device:?}"), "backend": comm.backend(), "num_classes": num_classes,
            "command": std::env::args().collect::<Vec<_>>(), "version": env!("CARGO_PKG_VERSION"),
        }))?;

        let loader = make_loader(&*comm, &cfg, view, &state)?;
        let validator = if cfg.valid_sets.is_empty() { None } else { Some(Validator::open(&cfg)?) };
        let judge = Judge::new(&heads, cfg.rollback && rank == 0, cfg.max_rollbacks);
        let good = Good { replica: replica.snapshot(), state: state.clone(), checkpoint: resumed_from };
        Ok(Session { cfg, heads, comm, run_dir, replica, loader, validator, state, log, judge, good })
    }
}

fn default_threads(ranks_here: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / ranks_here.max(1)).max(1)
}

/// Rank 0 picks the run directory (a new timestamped one, or the resumed one) for all.
fn agree_run_dir(comm: &dyn Comm, cfg: &TrainConfig, resume: Option<&Path>) -> Result<PathBuf> {
    let mut bytes = match resume {
        Some(dir) => dir.to_string_lossy().into_owned().into_bytes(),
        None => {
            let id = cfg.run_id.clone().unwrap_or_else(|| format!("{}-{}", cfg.task.name(), utc_stamp()));
            cfg.out.join(id).to_string_lossy().into_owned().into_bytes()
        }
    };
    comm.broadcast_bytes(&mut bytes, 0)?;
    Ok(PathBuf::from(String::from_utf8(bytes)?))
}

fn broadcast_state(comm: &dyn Comm, state: TrainState) -> Result<TrainState> {
    if comm.world() == 1 {
        return Ok(state);
    }
    let mut bytes = serde_json::to_vec(&state)?;
    comm.broadcast_bytes(&mut bytes, 0)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// All ranks run the same steps per epoch: the smallest rank's share sets it.
fn make_loader(comm: &dyn Comm, cfg: &TrainConfig, view: Arc<RankView>, state: &TrainState) -> Result<Loader> {
    let batch = cfg.rank_batch();
    let mut steps = [(view.records.len() / batch).max(1) as f64];
    comm.all_reduce_f64(&mut steps, ReduceOp::Min)?;
    let sampler = match cfg.sampler {
        _ if !cfg.shuffle => SamplerKind::Sequential,
        SamplerChoice::Uniform => SamplerKind::Uniform,
        SamplerChoice::Pk => SamplerKind::Balanced { p: cfg.pk[0], k: cfg.pk[1] },
    };
    let lc = LoaderConfig {
        size: cfg.size,
        batch_size: batch,
        workers: cfg.workers,
        prefetch: cfg.prefetch,
        seed: cfg.seed,
        sampler,
        augment: cfg.augment,
        steps_per_epoch: Some(steps[0] as u64),
    };
    Loader::train(view, lc, state.position)
}
