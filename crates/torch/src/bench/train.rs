//! `trainer bench train`: images/s of the full training step (backbone, FR head, ArcFace,
//! cross-entropy, backward, SGD) on a fixed synthetic batch, so only the model is timed.
//! `benches/pytorch_train.py` is the same step in PyTorch; `benches/train.sh` runs both.
//! Under mpirun the step all-reduces its gradients as training does (train/backward.rs),
//! overlapped or not (`--overlap`), and rank 0 ends with a JSON line: the median step and
//! the median time it waited on communication after its backward (`exposed_comm_ms`).

use crate::amp::AmpMode;
use crate::config::TrainConfig;
use crate::dist::{self, Comm, CommArgs};
use crate::model::input::channels_last;
use crate::model::loss::cross_entropy;
use crate::model::{Arch, Head};
use crate::train::backward::{backward_and_reduce, can_overlap};
use crate::train::replica::Replica;
use anyhow::{bail, Context, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trainer_data::stats::{cpu_seconds, median};

#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    /// Backbone architecture.
    #[arg(long, value_enum, default_value = "resnet50")]
    pub arch: Arch,
    /// Input side in pixels.
    #[arg(long, default_value_t = 112, value_parser = trainer_data::bounds::int::<i64>(16, trainer_data::bounds::MAX_SIDE))]
    pub size: i64,
    /// Images per step.
    #[arg(long, default_value_t = 16, value_parser = trainer_data::bounds::count::<i64>(trainer_data::bounds::MAX_BATCH))]
    pub batch_size: i64,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 8, value_parser = trainer_data::bounds::count::<usize>(1 << 24))]
    pub steps: usize,
    /// Untimed steps first (allocator and kernel warm-up).
    #[arg(long, default_value_t = 3, value_parser = trainer_data::bounds::int::<usize>(0, 1 << 24))]
    pub warmup: usize,
    /// Identities of the ArcFace layer.
    #[arg(long, default_value_t = 1000, value_parser = trainer_data::bounds::int::<usize>(2, 1 << 24))]
    pub classes: usize,
    #[command(flatten)]
    pub device: crate::device::DeviceArg,
    /// libtorch intra-op threads (default: one per core).
    #[arg(long, value_parser = trainer_data::bounds::count::<usize>(trainer_data::bounds::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Mixed precision on CUDA, as training's --amp (alone: fp16); ignored on CPU.
    #[arg(long, value_enum, num_args = 0..=1, default_value_t = AmpMode::Off, default_missing_value = "fp16")]
    pub amp: AmpMode,
    /// NHWC memory format for the images and weights.
    #[arg(long)]
    pub channels_last: bool,
    /// The gradient all-reduce under mpirun, as in training.
    #[command(flatten)]
    pub comm: CommArgs,
    /// Alone on a GPU, all-reduce through a 1-rank NCCL communicator anyway (exercises the
    /// overlapped NCCL path on one GPU; without it one rank does no communication).
    #[arg(long)]
    pub nccl: bool,
}

/// Timings of one benchmark run: whole steps and their forward / backward / SGD parts.
pub struct TrainBench {
    pub step_secs: Vec<f64>,
    /// Process CPU time (all threads) of the timed steps: steadier than wall time on a
    /// machine shared with other jobs. `None` off Linux.
    pub cpu_secs: Option<f64>,
    pub phase_secs: [Vec<f64>; 3],
    /// Per step, the wait for the gradient all-reduce after the backward ended.
    pub exposed_secs: Vec<f64>,
    pub last_loss: f64,
}

impl TrainBench {
    pub fn median_secs(&self) -> f64 {
        median(&self.step_secs)
    }
}

pub fn run(a: TrainBenchArgs) -> Result<()> {
    let info = dist::launch_info()?;
    let threads = a.threads.unwrap_or_else(|| info.threads_per_rank());
    tch::set_num_threads(threads as i32);
    let device = a.device.resolve(&info)?;
    let comm = match a.nccl {
        true => super::communicator(device, &info, a.comm.options())?,
        false => dist::init(&info, device, a.comm.options())?,
    };
    let result = measure(&a, device, &*comm);
    let (rank, world) = (comm.rank(), comm.world());
    // The communicator's MPI objects must go before MPI_Finalize.
    drop(comm);
    let r = match result.with_context(|| format!("training benchmark {:?} at {}px", a.arch, a.size)) {
        Ok(r) => r,
        Err(e) if world > 1 => dist::abort_job(&format!("rank {rank}: {e:#}")),
        Err(e) => return Err(e),
    };
    dist::finalize();
    if rank == 0 {
        report(&a, &r, device, threads, world);
    }
    Ok(())
}

fn report(a: &TrainBenchArgs, r: &TrainBench, device: Device, threads: usize, world: usize) {
    let med = r.median_secs();
    println!(
        "bench train: arch={:?} size={} batch={} classes={} device={:?} threads={} amp={} channels_last={} ranks={world}",
        a.arch, a.size, a.batch_size, a.classes, device, threads, a.amp.name(), a.channels_last
    );
    println!(
        "median step {:.1} ms over {} steps ({} warm-up), {:.2} images/s, last loss {:.3}",
        med * 1e3,
        r.step_secs.len(),
        a.warmup,
        a.batch_size as f64 / med,
        r.last_loss
    );
    if let Some(cpu) = r.cpu_secs {
        let images = (a.batch_size as usize * r.step_secs.len()) as f64;
        println!("cpu time {:.1} ms per image ({:.2} images per cpu-second)", cpu / images * 1e3, images / cpu);
    }
    let best = r.step_secs.iter().copied().fold(f64::INFINITY, f64::min);
    println!("best step {:.1} ms, {:.2} images/s", best * 1e3, a.batch_size as f64 / best);
    let [f, b, s] = r.phase_secs.each_ref().map(|v| median(v) * 1e3);
    println!("median forward {f:.1} ms, backward {b:.1} ms, sgd {s:.1} ms");
    if world > 1 || a.nccl {
        let line = serde_json::json!({
            "ranks": world,
            "overlap": a.comm.overlap,
            "bucket_mb": a.comm.bucket_mb,
            "comm_delay_ms": std::env::var("TRAINER_COMM_DELAY_MS").ok(),
            "step_ms": med * 1e3,
            "exposed_comm_ms": median(&r.exposed_secs) * 1e3,
        });
        println!("{line}");
    }
}

/// Builds the FR model as training does (`Replica`) and times `warmup + steps` full
/// training steps; with several ranks each step all-reduces its gradients over `comm`.
pub fn measure(a: &TrainBenchArgs, device: Device, comm: &dyn Comm) -> Result<TrainBench> {
    if a.steps == 0 || a.batch_size == 0 {
        bail!("--steps and --batch-size must be positive");
    }
    crate::model::backbone::check_input_side(a.arch, a.size as usize)?;
    let mut cfg = TrainConfig::default();
    (cfg.model.arch, cfg.model.size, cfg.model.channels_last) = (a.arch, a.size as usize, a.channels_last);
    (cfg.optim.lr, cfg.optim.amp, cfg.run.seed) = (0.01, a.amp, 0);
    let mut replica = Replica::build(&cfg, a.classes, device, None)?;
    let mut x = Tensor::randn([a.batch_size, 3, a.size, a.size], (Kind::Float, device));
    if a.channels_last {
        x = channels_last(&x);
    }
    let labels: Vec<i64> = (0..a.batch_size).map(|i| i % a.classes as i64).collect();
    let targets = Tensor::from_slice(&labels).to_device(device);
    let mut r = TrainBench {
        step_secs: Vec::new(),
        cpu_secs: None,
        phase_secs: Default::default(),
        exposed_secs: Vec::new(),
        last_loss: f64::NAN,
    };
    let mut cpu_start = None;
    let sync = || {
        if let Device::Cuda(n) = device {
            tch::Cuda::synchronize(n as i64);
        }
    };
    for i in 0..a.warmup + a.steps {
        if i == a.warmup {
            cpu_start = cpu_seconds();
        }
        let t0 = Instant::now();
        replica.zero_grad();
        let staged = can_overlap(a.comm.overlap.on(), comm, &replica, false);
        let net = replica.net();
        let (loss, cuts) = crate::amp::autocast(a.amp, device, || -> Result<_> {
            let (feats, cuts) = match staged {
                true => net.features_staged(&x, true),
                false => (net.features(&x, true), Vec::new()),
            };
            Ok((cross_entropy(&net.logits(Head::Fr, &feats, Some(&targets), true)?, &targets), cuts))
        })??;
        sync();
        let t1 = Instant::now();
        let reduced = backward_and_reduce(&loss, &cuts, &mut replica, comm)?;
        sync();
        let t2 = Instant::now();
        replica.step(&[Head::Fr]);
        r.last_loss = crate::host_sync::f64_of(&loss); // also waits for the device
        if i >= a.warmup {
            let t3 = Instant::now();
            r.step_secs.push((t3 - t0).as_secs_f64());
            r.exposed_secs.push(reduced.waited);
            for (v, d) in r.phase_secs.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                v.push(d.as_secs_f64());
            }
        }
    }
    r.cpu_secs = cpu_start.zip(cpu_seconds()).map(|(s, e)| e - s);
    Ok(r)
}
