//! One rank's training run, in one type: `start` sets it up in named steps (device and
//! communicator, run directory, data, model, logs), `fit` (fit.rs) runs the loop, and
//! safeguard.rs returns to the last good state. The fields are private to this module.

mod fit;
mod interval;
mod safeguard;
mod setup;

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Device;

use super::decisions::{Judge, Limits};
use super::pools::{Pools, Saved};
use super::replica::{Replica, Snapshot};
use super::run_claim::{self, Claim, Claiming, Replaced};
use super::run_lock::RunLock;
use super::runlog::RunLog;
use super::scaler::DeviceScale;
use super::state::TrainState;
use crate::config::TrainConfig;
use crate::dist::{self, Comm, LaunchInfo, ReduceOp};
use crate::eval::validate::Validator;
use crate::model::{ClassSlice, Head};

/// Everything one rank trains with.
pub struct Session {
    cfg: TrainConfig,
    heads: Vec<Head>,
    comm: Box<dyn Comm>,
    run_dir: PathBuf,
    replica: Replica,
    pools: Pools,
    validator: Option<Validator>,
    state: TrainState,
    log: RunLog,
    /// Rank 0's rollback guards (the other ranks keep an idle one).
    judge: Judge,
    /// The latest state known good: what a rollback returns to.
    good: Good,
    /// Per head: the epoch of its data and the labelled samples it has seen in it.
    labelled: BTreeMap<Head, (u64, f64)>,
    /// Rank 0's hold on the run directory (released when the session ends).
    _lock: RunLock,
    /// A run `--force` replaced, removed at the first checkpoint.
    replaced: Replaced,
    /// `--amp fp16`'s loss scale on the device (`state.loss_scale` is its host copy).
    amp: Option<DeviceScale>,
}

/// The latest good state: the replica's tensors in host memory and the loop state
/// (its loader position and loss counts included), refreshed at every checkpoint.
struct Good {
    replica: Snapshot,
    state: TrainState,
    checkpoint: Option<PathBuf>,
}

/// The run directory this rank works in, and where it resumes from.
struct RunDir {
    path: PathBuf,
    lock: RunLock,
    /// Undoes what the set-up did to the directory if it fails before `keep`.
    claim: Claim,
    resumed: Option<(PathBuf, TrainState)>,
}

/// The data every rank reads, and what the data decides about the model.
struct Data {
    pools: Pools,
    /// Identities over all ranks' shards: the ArcFace layer's size.
    num_classes: usize,
    /// The start event's account of the datasets and their labelled records.
    datasets: serde_json::Value,
}

impl Session {
    pub fn start(mut cfg: TrainConfig, resume: Option<&Path>, launch: &LaunchInfo, how: Claiming) -> Result<Session> {
        let device = cfg.run.device.resolve(launch)?;
        if device.is_cuda() {
            // Fixed input size: cuDNN's benchmarked algorithm choice pays from the second step.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let threads = cfg.run.threads.unwrap_or_else(|| launch.threads_per_rank());
        tch::set_num_threads(threads as i32);
        let comm = dist::init(launch, device, cfg.comm.options())?;
        let run = open_run(&*comm, &cfg, resume, how)?;
        let data = open_data(&*comm, &cfg, &run)?;
        if cfg.optim.scale_lr && resume.is_none() {
            let factor = (comm.world() * cfg.optim.accum) as f64;
            setup::scale_lr(&mut cfg, factor);
        }
        let (replica, mut state) = build_model(&*comm, &cfg, device, &data, &run)?;
        let checkpoint = run.resumed.map(|(ckpt, _)| ckpt);
        let heads = cfg.heads();
        let mut log = RunLog::open(
            &run.path,
            comm.rank(),
            &heads,
            checkpoint.as_ref().map(|_| (state.step, &state.loss_counts)),
        )?;
        let start = setup::Start {
            cfg: &cfg,
            comm: &*comm,
            launch,
            device,
            threads,
            run_dir: &run.path,
            checkpoint: checkpoint.as_deref(),
        };
        start.open_logs(&mut log, &data.pools, &state, replica.slice(), data.datasets)?;
        // From here the checkpoints are this world's (their state.json says who wrote them).
        state.world_size = comm.world();
        let validator = open_validator(&cfg)?;
        let judge = Judge::new(&heads, limits(&cfg));
        let good = Good { replica: replica.snapshot(), state: state.clone(), checkpoint };
        let labelled = data.pools.epochs().into_iter().map(|(h, e)| (h, (e, 0.0))).collect();
        let amp = state.loss_scale.as_ref().map(|s| DeviceScale::new(s, device));
        Ok(Session {
            cfg,
            heads,
            comm,
            run_dir: run.path,
            replica,
            pools: data.pools,
            validator,
            state,
            log,
            judge,
            good,
            labelled,
            _lock: run.lock,
            replaced: run.claim.keep(),
            amp,
        })
    }
}

/// Rank 0 picks the directory (and, on a resume, the checkpoint) for every rank; it takes
/// the directory's lock and claims it for this run (`run_claim.rs`).
fn open_run(comm: &dyn Comm, cfg: &TrainConfig, resume: Option<&Path>, how: Claiming) -> Result<RunDir> {
    let path = setup::agree_run_dir(comm, cfg, resume)?;
    let (lock, claim) = run_claim::claim(comm, &path, how)?;
    let resumed = match resume {
        Some(_) => Some(setup::resume_point(comm, &path, cfg)?),
        None => None,
    };
    Ok(RunDir { path, lock, claim, resumed })
}

/// Opens this rank's share of the training data where the resumed state left it.
fn open_data(comm: &dyn Comm, cfg: &TrainConfig, run: &RunDir) -> Result<Data> {
    let saved = run.resumed.as_ref().map(|(_, s)| Saved {
        positions: &s.run.positions,
        world: s.world_size,
        config: &s.config,
    });
    let pools = Pools::open(comm, cfg, saved.as_ref())?;
    let mut classes = [pools.identities() as f64];
    comm.all_reduce_f64(&mut classes, ReduceOp::Max)?;
    let datasets = setup::describe_targets(comm, &pools)?;
    Ok(Data { num_classes: classes[0] as usize, pools, datasets })
}

/// The replica (fresh, `--init`, or the resumed checkpoint's weights, then rank 0's on
/// every rank) and the state the loop starts from.
fn build_model(
    comm: &dyn Comm,
    cfg: &TrainConfig,
    device: Device,
    data: &Data,
    run: &RunDir,
) -> Result<(Replica, TrainState)> {
    let (rank, world, num_classes) = (comm.rank(), comm.world(), data.num_classes);
    let slice = match cfg.model.partial_fc {
        true => {
            ClassSlice::check(world, num_classes)?;
            Some(ClassSlice::of(rank, world, num_classes))
        }
        false => None,
    };
    let mut replica = Replica::build(cfg, num_classes, device, slice)?;
    let mut state = TrainState::new(cfg, &cfg.heads(), world, num_classes);
    if let Some((ckpt, saved)) = &run.resumed {
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
    replica.broadcast_from_rank0(comm)?;
    state.run.positions = data.pools.positions();
    Ok((replica, state))
}

fn open_validator(cfg: &TrainConfig) -> Result<Option<Validator>> {
    if cfg.valid.valid_sets.is_empty() && cfg.valid.valid_ijb.is_none() {
        return Ok(None);
    }
    let validator = Validator::open(cfg)?;
    validator.check_all(cfg.model.size)?;
    Ok(Some(validator))
}

fn limits(cfg: &TrainConfig) -> Limits {
    Limits {
        enabled: cfg.schedule.rollback,
        max_rollbacks: cfg.schedule.max_rollbacks,
        min_lr: cfg.schedule.min_lr,
        shrink: cfg.schedule.shrink,
    }
}
