//! Setting a run up on one rank: device, communicator, data, model, optimiser, and the
//! state to start from (fresh, `--init`, or `--resume`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{nn::VarStore, Device, Tensor};

use super::checkpoint;
use super::config::TrainConfig;
use super::runlog::{utc_stamp, RunLog};
use super::state::TrainState;
use super::step::{run_tasks, task_name};
use super::validate::Validator;
use crate::dist::{self, Comm, CommOptions, LaunchInfo, ReduceOp};
use crate::model::Net;
use crate::optim::{groups_by_prefix, Sgd};
use crate::plateau::RollbackGuard;
use crate::pipeline::{Loader, LoaderConfig, RankView, SamplerKind};

/// Everything one rank trains with.
pub struct Session {
    pub cfg: TrainConfig,
    pub comm: Box<dyn Comm>,
    pub device: Device,
    pub run_dir: PathBuf,
    pub vs: VarStore,
    pub net: Net,
    pub opt: Sgd,
    pub loader: Loader,
    pub validator: Option<Validator>,
    pub state: TrainState,
    pub log: RunLog,
    /// dlib's reload safeguard (rank 0); deliberately not part of a checkpoint.
    pub guard: RollbackGuard,
    pub nan_injected: bool,
}

/// `cpu`, `cuda:N`, or `auto` (this rank's local GPU when CUDA is there).
pub fn resolve_device(spec: &str, launch: &LaunchInfo) -> Result<Device> {
    match spec {
        "auto" if tch::Cuda::is_available() => Ok(Device::Cuda(launch.local_rank % tch::Cuda::device_count().max(1) as usize)),
        "auto" | "cpu" => Ok(Device::Cpu),
        s => {
            let n: usize = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("--device {s:?}: expected auto, cpu or cuda:N"))?;
            if !tch::Cuda::is_available() {
                bail!("--device {s}: CUDA is not available to libtorch on this machine (see README: GPUs)");
            }
            Ok(Device::Cuda(n))
        }
    }
}

impl Session {
    pub fn start(mut cfg: TrainConfig, resume: Option<&Path>, launch: &LaunchInfo) -> Result<Session> {
        let device = resolve_device(&cfg.device, launch)?;
        let threads = cfg.threads.unwrap_or_else(|| default_threads(launch.world));
        tch::set_num_threads(threads as i32);
        let comm = dist::init(
            device,
            CommOptions {
                bucket_bytes: (cfg.bucket_mb * 1e6) as usize,
                fp16: cfg.fp16_allreduce,
                timeout: std::time::Duration::from_secs_f64(cfg.collective_timeout),
            },
        )?;
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
        tch::manual_seed(cfg.seed as i64);
        let mut vs = VarStore::new(device);
        let net = Net::new(&vs.root(), cfg.arch, &cfg.heads, num_classes, cfg.task.into());
        let mut opt = Sgd::new(param_groups(&vs, &cfg), cfg.momentum);

        let mut state = TrainState::new(&cfg, world, num_classes);
        if let Some(init) = &cfg.init {
            load_init(&mut vs, init)?;
        }
        if resume.is_some() {
            let ckpt = checkpoint::latest(&run_dir)?;
            let file = checkpoint::load_state(&ckpt)?;
            state = file.state;
            vs.load(ckpt.join(checkpoint::MODEL_FILE)).with_context(|| format!("loading {}", ckpt.join(checkpoint::MODEL_FILE).display()))?;
            let named = Tensor::read_safetensors(ckpt.join(checkpoint::OPTIM_FILE))
                .with_context(|| format!("loading {}", ckpt.join(checkpoint::OPTIM_FILE).display()))?;
            opt.load_state(&named)?;
            // --amp given or dropped on resume: the flag wins; a running scale carries on.
            state.loss_scale = match (cfg.amp, state.loss_scale.take()) {
                (true, kept) => kept.or_else(|| Some(super::scaler::LossScale::new(cfg.amp_init_scale))),
                (false, _) => None,
            };
            tracing::info!("resuming {} at step {}", ckpt.display(), state.step);
        }
        state = broadcast_state(&*comm, state)?;
        opt.set_lr_scale(state.lr_scale);
        sync_params(&*comm, &vs)?;

        let task_names: Vec<&str> = run_tasks(&cfg).into_iter().map(task_name).collect();
        let mut log = RunLog::open(&run_dir, rank, &task_names, resume.map(|_| state.step))?;
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

        let loader = make_loader(&*comm, &cfg, view, &state)?;
        let validator = if cfg.valid_sets.is_empty() { None } else { Some(Validator::open(&cfg)?) };
        Ok(Session { cfg, comm, device, run_dir, vs, net, opt, loader, validator, state, log, guard: RollbackGuard::new(), nan_injected: false })
    }
}

fn default_threads(world: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / world.max(1)).max(1)
}

/// Rank 0 picks the run directory (a new timestamped one, or the resumed one) for all.
fn agree_run_dir(comm: &dyn Comm, cfg: &TrainConfig, resume: Option<&Path>) -> Result<PathBuf> {
    let mut bytes = match resume {
        Some(dir) => dir.to_string_lossy().into_owned().into_bytes(),
        None => {
            let id = cfg.run_id.clone().unwrap_or_else(|| format!("{}-{}", task_name(cfg.task), utc_stamp()));
            cfg.out.join(id).to_string_lossy().into_owned().into_bytes()
        }
    };
    comm.broadcast_bytes(&mut bytes, 0)?;
    Ok(PathBuf::from(String::from_utf8(bytes)?))
}

fn param_groups(vs: &VarStore, cfg: &TrainConfig) -> Vec<crate::optim::ParamGroup> {
    let mut spec = vec![];
    if !cfg.freeze_backbone {
        spec.push(("backbone", cfg.lr, cfg.wd_backbone));
    }
    spec.push(("fr", cfg.lr_fr.unwrap_or(cfg.lr), cfg.wd_fr));
    spec.push(("arcface", cfg.lr_fr.unwrap_or(cfg.lr), cfg.wd_fr));
    spec.push(("gender", cfg.lr_gender.unwrap_or(cfg.lr), cfg.wd_gender));
    spec.push(("age", cfg.lr_age.unwrap_or(cfg.lr), cfg.wd_age));
    groups_by_prefix(vs, &spec)
}

/// `--init`: a checkpoint dir or a .safetensors file; names that match are loaded.
fn load_init(vs: &mut VarStore, init: &Path) -> Result<()> {
    let file = if init.is_dir() { init.join(checkpoint::MODEL_FILE) } else { init.to_path_buf() };
    let missing = vs.load_partial(&file).with_context(|| format!("--init {}: cannot load weights", file.display()))?;
    let total = vs.variables().len();
    if missing.len() == total {
        bail!("--init {}: no parameter names match this model", file.display());
    }
    tracing::info!("--init {}: loaded {} of {} tensors ({} new)", file.display(), total - missing.len(), total, missing.len());
    Ok(())
}

fn broadcast_state(comm: &dyn Comm, state: TrainState) -> Result<TrainState> {
    if comm.world() == 1 {
        return Ok(state);
    }
    let mut bytes = serde_json::to_vec(&state)?;
    comm.broadcast_bytes(&mut bytes, 0)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Rank 0's parameters and buffers to every rank, so replicas start identical (as DDP
/// does). On resume every rank has read the checkpoint (a shared filesystem, as with
/// DDP), so the momentum buffers already agree.
fn sync_params(comm: &dyn Comm, vs: &VarStore) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
    tch::no_grad(|| comm.broadcast(&tensors, 0))
}

/// All ranks run the same steps per epoch: the smallest rank's share sets it.
fn make_loader(comm: &dyn Comm, cfg: &TrainConfig, view: Arc<RankView>, state: &TrainState) -> Result<Loader> {
    let batch = cfg.rank_batch();
    let mut steps = [(view.records.len() / batch).max(1) as f64];
    comm.all_reduce_f64(&mut steps, ReduceOp::Min)?;
    let sampler = match cfg.sampler {
        _ if !cfg.shuffle => SamplerKind::Sequential,
        super::config::SamplerChoice::Uniform => SamplerKind::Uniform,
        super::config::SamplerChoice::Pk => SamplerKind::Balanced { p: cfg.pk[0], k: cfg.pk[1] },
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
