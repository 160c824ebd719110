//! `trainer bench head`: one ArcFace head step (logits, cross-entropy, backward, the
//! head's communication, SGD) at large identity counts, replicated (every rank holds the
//! whole matrix and all-reduces its gradient) against Partial FC at each sample rate, in
//! one run: step time, bytes communicated and head memory per rank. Run under mpirun.

use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::dist::{self, Comm, CommOptions, ReduceOp};
use crate::model::loss::cross_entropy;
use crate::model::partial_fc::{ClassSlice, CommBytes, PfcStep};
use crate::model::{ArcFace, Margin};
use crate::optim::{Optimizer, ParamGroup};
use trainer_data::stats::median;

#[derive(clap::Args, Debug)]
pub struct HeadBenchArgs {
    /// Identity counts to measure, e.g. 10000,100000,1000000.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000], value_parser = trainer_data::bounds::count::<usize>(1 << 31))]
    pub classes: Vec<usize>,
    /// Embedding size.
    #[arg(long, default_value_t = 512, value_parser = trainer_data::bounds::count::<usize>(1 << 16))]
    pub emb_dim: usize,
    /// Embeddings per rank per step.
    #[arg(long, default_value_t = 64, value_parser = trainer_data::bounds::count::<usize>(1 << 20))]
    pub batch_size: usize,
    /// Partial FC sample rates to measure beside the replicated head.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 0.1], value_parser = trainer_data::bounds::real(0.0, 1.0, true))]
    pub sample_rates: Vec<f64>,
    /// Timed steps per variant (after one warm-up step); the median of the slowest rank.
    #[arg(long, default_value_t = 5, value_parser = trainer_data::bounds::count::<usize>(1 << 20))]
    pub iters: usize,
    /// Leave the replicated head out above this many identities (its matrix, gradient and
    /// momentum take 12 × classes × emb-dim bytes on every rank).
    #[arg(long, value_parser = trainer_data::bounds::count::<usize>(1 << 31))]
    pub max_replicated: Option<usize>,
    #[command(flatten)]
    pub device: crate::device::DeviceArg,
}

/// One variant's figures.
struct Figures {
    step_s: f64,
    bytes: CommBytes,
    head_bytes: usize,
}

pub fn run(a: HeadBenchArgs) -> Result<()> {
    ensure!(a.iters > 0 && a.batch_size > 0 && a.emb_dim > 0, "--iters, --batch-size and --emb-dim must be positive");
    ensure!(a.sample_rates.iter().all(|&r| r > 0.0 && r <= 1.0), "sample rates are in (0, 1]");
    let info = dist::launch_info()?;
    tch::set_num_threads(info.threads_per_rank() as i32);
    let device = a.device.resolve(&info)?;
    let opts = CommOptions { timeout: Duration::from_secs(600), ..Default::default() };
    let comm = super::communicator(device, &info, opts)?;
    let result = measure_all(&a, &*comm, device);
    // The communicator's MPI objects must go before MPI_Finalize.
    drop(comm);
    match result {
        Ok(()) => {
            dist::finalize();
            Ok(())
        }
        Err(e) if info.world > 1 => dist::abort_job(&format!("rank {}: {e:#}", info.rank)),
        Err(e) => Err(e),
    }
}

fn measure_all(a: &HeadBenchArgs, comm: &dyn Comm, device: Device) -> Result<()> {
    let say = |line: String| {
        if comm.rank() == 0 {
            println!("{line}")
        }
    };
    say(format!(
        "head bench: world {}, backend {}, device {device:?}, emb {}, batch {} per rank; median of {} steps (slowest rank)",
        comm.world(), comm.backend(), a.emb_dim, a.batch_size, a.iters
    ));
    say(format!(
        "{:>9}  {:<18} {:>10} {:>9} {:>14} {:>14} {:>14}",
        "classes", "head", "step ms", "vs repl.", "allreduce MB", "allgather MB", "head MB/rank"
    ));
    for &classes in &a.classes {
        ClassSlice::check(comm.world(), classes)?;
        let replicated = match a.max_replicated.is_some_and(|m| classes > m) {
            true => None,
            false => Some(replicated_step(a, comm, device, classes)?),
        };
        let mut rows = vec![];
        if let Some(f) = &replicated {
            rows.push(("replicated".to_string(), f));
        }
        let pfc: Vec<(String, Figures)> = a
            .sample_rates
            .iter()
            .map(|&r| Ok((format!("partial-fc r={r}"), partial_fc_step(a, comm, device, classes, r)?)))
            .collect::<Result<_>>()?;
        rows.extend(pfc.iter().map(|(n, f)| (n.clone(), f)));
        for (name, f) in rows {
            let ratio = replicated.as_ref().map_or("-".to_string(), |r| format!("{:.2}x", r.step_s / f.step_s));
            let mb = |b: usize| b as f64 / 1e6;
            say(format!(
                "{classes:>9}  {name:<18} {:>10.1} {ratio:>9} {:>14.1} {:>14.2} {:>14.1}",
                f.step_s * 1e3,
                mb(f.bytes.allreduce),
                mb(f.bytes.allgather),
                mb(f.head_bytes)
            ));
        }
    }
    Ok(())
}

/// This rank's embeddings (a leaf, like the backbone's output) and labels over all classes.
fn batch(a: &HeadBenchArgs, comm: &dyn Comm, device: Device, classes: usize) -> (Tensor, Tensor) {
    tch::manual_seed(1 + comm.rank() as i64);
    let emb = Tensor::randn([a.batch_size as i64, a.emb_dim as i64], (Kind::Float, device)).set_requires_grad(true);
    let labels = Tensor::randint(classes as i64, [a.batch_size as i64], (Kind::Int64, device));
    (emb, labels)
}

fn optimiser(vs: &VarStore) -> Optimizer {
    Optimizer::sgd(vec![ParamGroup::new("arcface", vs.trainable_variables(), 0.1, 5e-4)], 0.9)
}

/// Median over `iters` timed steps (after one warm-up) of the slowest rank's time, each
/// until the device is done (the step's collectives are not waited for on the host).
fn time_steps(comm: &dyn Comm, device: Device, iters: usize, mut step: impl FnMut(u64) -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(iters);
    for i in 0..=iters as u64 {
        comm.barrier()?;
        let t0 = Instant::now();
        step(i)?;
        if let Device::Cuda(n) = device {
            tch::Cuda::synchronize(n as i64);
        }
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    comm.all_reduce_f64(&mut times, ReduceOp::Max)?;
    Ok(median(&times))
}

fn replicated_step(a: &HeadBenchArgs, comm: &dyn Comm, device: Device, classes: usize) -> Result<Figures> {
    let vs = VarStore::new(device);
    let arc = ArcFace::new(&vs.root(), classes, a.emb_dim, 64.0, Margin::arcface(0.5));
    let mut opt = optimiser(&vs);
    let (emb, labels) = batch(a, comm, device, classes);
    let step_s = time_steps(comm, device, a.iters, |_| {
        opt.zero_grad();
        cross_entropy(&arc.logits_on(&emb, &labels, None)?, &labels).backward();
        comm.all_reduce_mean(&opt.grads())?;
        opt.step();
        Ok(())
    })?;
    let head = classes * a.emb_dim * 4;
    Ok(Figures { step_s, bytes: CommBytes { allreduce: head, allgather: 0 }, head_bytes: 3 * head })
}

fn partial_fc_step(a: &HeadBenchArgs, comm: &dyn Comm, device: Device, classes: usize, rate: f64) -> Result<Figures> {
    let slice = ClassSlice::of(comm.rank(), comm.world(), classes);
    let vs = VarStore::new(device);
    // Only the slice is drawn: the bench needs no rank-count-independent start.
    let arc = ArcFace::new(&vs.root(), slice.len, a.emb_dim, 64.0, Margin::arcface(0.5));
    let mut opt = optimiser(&vs);
    let (emb, labels) = batch(a, comm, device, classes);
    let step_s = time_steps(comm, device, a.iters, |i| {
        opt.zero_grad();
        let step = PfcStep { comm, slice, sample_rate: rate, seed: 0, step: i, grad_factor: 1.0, loss_scale: None };
        let (_, term) = step.loss(&arc, &emb, &labels)?;
        term.backward();
        opt.step();
        Ok(())
    })?;
    let mut bytes = CommBytes::default();
    bytes.add_partial_fc(a.batch_size, comm.world(), a.emb_dim);
    let mut widest = [slice.len as f64];
    comm.all_reduce_f64(&mut widest, ReduceOp::Max)?;
    Ok(Figures { step_s, bytes, head_bytes: 3 * widest[0] as usize * a.emb_dim * 4 })
}
