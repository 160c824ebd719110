//! Setting a run up on one rank: device, communicator, run directory, data, model and the
//! state to start from (fresh, `--init`, or `--resume`); `fit.rs` then runs it.

use anyhow::{bail, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::checkpoint;
use super::config::TrainConfig;
use super::decisions::{Judge, Limits};
use super::pools::Pools;
use super::provenance;
use super::replica::{Replica, Snapshot};
use super::run_claim::{self, Claiming};
use super::run_config;
use super::runlog::{utc_stamp, RunLog};
use super::state::TrainState;
use crate::dist::{self, Comm, CommOptions, LaunchInfo, ReduceOp};
use crate::eval::validate::Validator;
use crate::model::{ClassSlice, Head};

/// Everything one rank trains with. `fit.rs` drives it; the fields are its components.
pub struct Session {
    pub(super) cfg: TrainConfig,
    pub(super) heads: Vec<Head>,
    pub(super) comm: Box<dyn Comm>,
    pub(super) run_dir: PathBuf,
    pub(super) replica: Replica,
    pub(super) pools: Pools,
    pub(super) validator: Option<Validator>,
    pub(super) state: TrainState,
    pub(super) log: RunLog,
    /// Rank 0's rollback guards (the other ranks keep an idle one).
    pub(super) judge: Judge,
    /// The latest state known good: what a rollback returns to.
    pub(super) good: Good,
    /// Per head: the epoch of its data and the labelled samples it has seen in it.
    pub(super) labelled: BTreeMap<Head, (u64, f64)>,
    /// Rank 0's hold on the run directory (released when the session ends).
    pub(super) _lock: super::run_lock::RunLock,
    /// A run `--force` replaced, removed at the first checkpoint.
    pub(super) replaced: super::run_claim::Replaced,
}

/// The latest good state: the replica's tensors in host memory and the loop state
/// (its loader position and loss counts included), refreshed at every checkpoint.
pub struct Good {
    pub replica: Snapshot,
    pub state: TrainState,
    pub checkpoint: Option<PathBuf>,
}

impl Session {
    pub fn start(mut cfg: TrainConfig, resume: Option<&Path>, launch: &LaunchInfo, how: Claiming) -> Result<Session> {
        let device = crate::device::resolve(&cfg.device, launch)?;
        let threads = cfg.threads.unwrap_or_else(|| default_threads(launch.local_world));
        tch::set_num_threads(threads as i32);
        let comm = dist::init(device, comm_options(&cfg))?;
        let (rank, world) = (comm.rank(), comm.world());
        let run_dir = agree_run_dir(&*comm, &cfg, resume)?;
        let (lock, claim) = run_claim::claim(&*comm, &run_dir, how)?;
        let resumed = match resume {
            Some(_) => Some(resume_point(&*comm, &run_dir, &cfg)?),
            None => None,
        };
        let positions = resumed.as_ref().map(|(_, s)| s.positions.clone()).unwrap_or_default();
        let pools = Pools::open(&*comm, &cfg, &positions)?;
        let mut classes = [pools.identities() as f64];
        comm.all_reduce_f64(&mut classes, ReduceOp::Max)?;
        let num_classes = classes[0] as usize;
        let datasets = describe_targets(&*comm, &pools)?;
        if cfg.scale_lr && resume.is_none() {
            let factor = (world * cfg.accum) as f64;
            scale_lr(&mut cfg, factor);
        }
        let heads = cfg.heads();
        let slice = match cfg.partial_fc {
            true => {
                ClassSlice::check(world, num_classes)?;
                Some(ClassSlice::of(rank, world, num_classes))
            }
            false => None,
        };
        let mut replica = Replica::build(&cfg, num_classes, device, slice)?;
        let mut state = TrainState::new(&cfg, &heads, world, num_classes);
        if let Some((ckpt, saved)) = &resumed {
            if saved.num_classes != num_classes {
                bail!(
                    "{}: the checkpoint's ArcFace layer has {} identities but the training data now has {num_classes}",
                    ckpt.display(),
                    saved.num_classes
                );
            }
            replica.load(ckpt)?;
            state = saved.clone();
            // The run goes on with the settings resolved now (flags over config.json).
            state.config = cfg.clone();
        }
        replica.broadcast_from_rank0(&*comm)?;
        state.positions = pools.positions();

        let checkpoint = resumed.map(|(ckpt, _)| ckpt);
        let mut log =
            RunLog::open(&run_dir, rank, &heads, checkpoint.as_ref().map(|_| (state.step, &state.loss_counts)))?;
        if cfg.tensorboard {
            log.enable_tensorboard()?;
        }
        let overrides = match resume {
            Some(_) => run_config::overrides(&run_config::read(&run_dir)?, &cfg)?,
            None => vec![],
        };
        if rank == 0 {
            run_config::write(&run_dir, &cfg)?;
        }
        if !overrides.is_empty() {
            log.rank_note(&format!("settings changed on resume: {}", overrides.join(", ")))?;
        }
        note_rank(&mut log, &*comm, &pools, device, threads)?;
        if let Some(ckpt) = &checkpoint {
            log.rank_note(&format!(
                "resuming from {} at step {} (rank 0's choice, state.json CRC checked)",
                ckpt.display(),
                state.step
            ))?;
        }
        if cfg.amp && !device.is_cuda() {
            log.rank_note("--amp applies to CUDA devices only; training in f32 on the CPU")?;
        }
        if let Some(sl) = slice {
            log.rank_note(&format!(
                "Partial FC: identities {}..{} of {num_classes} on this rank, sample rate {}",
                sl.start,
                sl.start + sl.len,
                cfg.sample_rate
            ))?;
        }
        if state.world_size != world {
            log.rank_note(&format!(
                "resumed with world size {world}, checkpoint had {}: data order differs from an uninterrupted run",
                state.world_size
            ))?;
        }
        // From here the checkpoints are this world's (their state.json says who wrote them).
        state.world_size = world;
        let mut event = json!({
            "event": if checkpoint.is_some() { "resume" } else { "start" }, "step": state.step, "checkpoint": checkpoint,
            "world_size": world, "ranks_per_node": launch.local_world,
            "effective_batch": pools.images_per_step(&heads) * cfg.accum * world, "datasets": datasets,
            "device": format!("{device:?}"), "backend": comm.backend(), "num_classes": num_classes,
            "slurm_restart_count": super::auto_resume::slurm_restart_count(),
            "command": std::env::args().collect::<Vec<_>>(), "version": env!("CARGO_PKG_VERSION"),
            "versions": provenance::versions(comm.backend()), "hosts": provenance::hosts(&*comm)?,
            "records_per_rank": provenance::records_per_rank(&*comm, &pools)?, "config": &cfg,
        });
        if checkpoint.is_some() {
            event["overrides"] = json!(overrides);
        }
        log.event(event)?;
        crate::dist::failure::set_memory_hint(format!(
            "batch size {} per rank (effective batch {})",
            pools.images_per_step(&heads),
            pools.images_per_step(&heads) * cfg.accum * world
        ));

        let validates = !cfg.valid_sets.is_empty() || cfg.valid_ijb.is_some();
        let validator = if validates { Some(Validator::open(&cfg)?) } else { None };
        validator.as_ref().map(|v| v.check_all(cfg.size)).transpose()?;
        let limits = Limits {
            enabled: cfg.rollback && rank == 0,
            max_rollbacks: cfg.max_rollbacks,
            min_lr: cfg.min_lr,
            shrink: cfg.shrink,
        };
        let judge = Judge::new(&heads, limits);
        let good = Good { replica: replica.snapshot(), state: state.clone(), checkpoint };
        let labelled = pools.epochs().into_iter().map(|(h, e)| (h, (e, 0.0))).collect();
        Ok(Session {
            cfg,
            heads,
            comm,
            run_dir,
            replica,
            pools,
            validator,
            state,
            log,
            judge,
            good,
            labelled,
            _lock: lock,
            replaced: claim.keep(),
        })
    }
}

fn comm_options(cfg: &TrainConfig) -> CommOptions {
    CommOptions {
        bucket_bytes: dist::mib_to_bytes(cfg.bucket_mb),
        fp16: cfg.fp16_allreduce,
        timeout: std::time::Duration::from_secs_f64(cfg.collective_timeout),
    }
}

/// `--scale-lr`: every learning rate × world size × accumulation.
fn scale_lr(cfg: &mut TrainConfig, factor: f64) {
    cfg.lr *= factor;
    for lr in [&mut cfg.lr_fr, &mut cfg.lr_gender, &mut cfg.lr_age].into_iter().flatten() {
        *lr *= factor;
    }
}

/// The checkpoint rank 0 chose and its state as rank 0 read it, with `--amp` as given now
/// (the flag wins; a running scale carries on).
fn resume_point(comm: &dyn Comm, run_dir: &Path, cfg: &TrainConfig) -> Result<(PathBuf, TrainState)> {
    let ckpt = checkpoint::agree_latest(comm, run_dir)?;
    let mut state = checkpoint::load_state(&ckpt)?.state;
    checkpoint::check_resume_step(&state, cfg.max_steps)?;
    state.loss_scale = match (cfg.amp, state.loss_scale.take()) {
        (true, kept) => kept.or_else(|| Some(super::scaler::LossScale::new(cfg.amp_init_scale))),
        (false, _) => None,
    };
    tracing::info!("resuming {} at step {}", ckpt.display(), state.step);
    Ok((ckpt, broadcast_state(comm, state)?))
}

/// What this rank reads and runs on, in its own log.
fn note_rank(log: &mut RunLog, comm: &dyn Comm, pools: &Pools, device: tch::Device, threads: usize) -> Result<()> {
    for pool in pools.iter() {
        let shards: Vec<String> = pool.view.dataset.shards.iter().map(|s| s.bin_path().display().to_string()).collect();
        log.rank_note(&format!(
            "pid {}, device {device:?}, backend {}, world {}, threads {threads}, {} data: shards {shards:?}{}, {} records",
            std::process::id(),
            comm.backend(),
            comm.world(),
            pool.key,
            if pool.striped { " (record stripes)" } else { "" },
            pool.view.records.len()
        ))?;
    }
    Ok(())
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

/// For the start event, each pool's datasets and, per task, the column it reads and the
/// records (over all ranks) that have a known target. A task with none in its training
/// data is an error before step 1, naming the datasets and columns.
fn describe_targets(comm: &dyn Comm, pools: &Pools) -> Result<serde_json::Value> {
    let mut out = Vec::new();
    for pool in pools.iter() {
        let mut counts: Vec<f64> = pool
            .view
            .sets
            .iter()
            .flat_map(|s| std::iter::once(s.records as f64).chain(s.targets.iter().map(|t| t.2 as f64)))
            .collect();
        comm.all_reduce_f64(&mut counts, ReduceOp::Sum)?;
        let mut counts = counts.into_iter();
        let mut sets = Vec::new();
        let mut known_per_head: BTreeMap<Head, (f64, Vec<String>)> = BTreeMap::new();
        for set in &pool.view.sets {
            let records = counts.next().unwrap_or(0.0);
            let mut targets = Vec::new();
            for &(head, column, _) in &set.targets {
                let known = counts.next().unwrap_or(0.0);
                if pool.heads.contains(&head) {
                    let entry = known_per_head.entry(head).or_default();
                    entry.0 += known;
                    entry.1.push(format!("{} (column {})", set.spec, column.name()));
                    targets.push(json!({"task": head, "column": column, "known": known as u64}));
                    tracing::info!(
                        "{} learns from {} (column `{}`): {} of {} records labelled",
                        head.name(),
                        set.spec,
                        column.name(),
                        known,
                        records
                    );
                }
            }
            sets.push(json!({"dataset": set.spec.to_string(), "records": records as u64, "targets": targets}));
        }
        for (head, (known, where_)) in known_per_head {
            if known == 0.0 {
                bail!("{} has no labelled record in its training data: {} (unknown is -1; give @label/@gender/@age or --target-column if another column holds the class)", head.name(), where_.join(", "));
            }
        }
        out.push(json!({"pool": pool.key, "striped": pool.striped, "sets": sets}));
    }
    Ok(json!(out))
}
