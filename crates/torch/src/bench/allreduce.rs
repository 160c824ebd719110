//! `trainer bench allreduce`: gradient all-reduce time for ResNet-50-sized gradients, as
//! algorithm and bus bandwidth, next to the ring bound from a measured point-to-point
//! bandwidth and to an unbucketed (one all-reduce per tensor) baseline.

use super::selftest;
use crate::device::DeviceArg;
use crate::dist::{self, Comm, CommOptions, LaunchInfo, ReduceOp};
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trainer_data::stats::median;

#[derive(clap::Args, Debug)]
pub struct AllreduceArgs {
    /// Gradient size in MB, as 1 MB tensors; 0 = ResNet-50's parameter shapes (161 tensors,
    /// 25.6 M floats, 102 MB).
    #[arg(long, default_value_t = 0.0, value_parser = trainer_data::bounds::real(0.0, 65536.0, false))]
    pub mb: f64,
    /// Timed all-reduces per variant; the median is reported.
    #[arg(long, default_value_t = 10, value_parser = trainer_data::bounds::count::<usize>(1 << 20))]
    pub iters: usize,
    #[command(flatten)]
    pub comm: dist::CommArgs,
    // cpu: MPI; cuda: the local rank's GPU, NCCL (also with a single process).
    #[command(flatten)]
    pub device: DeviceArg,
    /// Verify every collective's results (means, broadcasts, scalars, bytes, fp16)
    /// instead of timing.
    #[arg(long)]
    pub check: bool,
    /// Test only: this rank exits with status 3 during --check.
    #[arg(long, hide = true)]
    pub die_rank: Option<usize>,
    /// Test only: this rank stops taking part in collectives during --check.
    #[arg(long, hide = true)]
    pub hang_rank: Option<usize>,
}

pub fn run(a: AllreduceArgs) -> Result<()> {
    let info = dist::launch_info()?;
    tch::set_num_threads(info.threads_per_rank() as i32);
    let device = a.device.resolve(&info)?;
    let opts = a.comm.options();
    let result = if a.check {
        let faults = selftest::Faults { die_rank: a.die_rank, hang_rank: a.hang_rank };
        selftest::run(device, &opts, faults, |o| super::communicator(device, &info, o)).map(|line| println!("{line}"))
    } else {
        bench(&a, &info, device, &opts)
    };
    match result {
        Ok(()) => {
            dist::finalize();
            Ok(())
        }
        Err(e) if info.world > 1 => dist::abort_job(&format!("error: {e:#}")),
        Err(e) => Err(e),
    }
}

fn gradients(mb: f64, device: Device) -> (String, Vec<Tensor>) {
    let shapes: Vec<Vec<i64>> = if mb > 0.0 {
        let floats = (mb * 1e6 / 4.0) as i64;
        (0..floats).step_by(250_000).map(|s| vec![(floats - s).min(250_000)]).collect()
    } else {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let _net = tch::vision::resnet::resnet50(&vs.root(), 1000);
        vs.trainable_variables().iter().map(|t| t.size()).collect()
    };
    let label = if mb > 0.0 { format!("{mb} MB") } else { "ResNet-50".into() };
    let grads = shapes.iter().map(|s| Tensor::randn(s.as_slice(), (Kind::Float, device)) * 0.01).collect();
    (label, grads)
}

/// Median over iterations of the slowest rank's time.
fn time_all_reduce(comm: &dyn Comm, grads: &[Tensor], iters: usize) -> Result<f64> {
    for _ in 0..2 {
        comm.all_reduce_mean(grads)?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        comm.barrier()?;
        let t0 = Instant::now();
        comm.all_reduce_mean(grads)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    comm.all_reduce_f64(&mut times, ReduceOp::Max)?;
    Ok(median(&times))
}

/// Local copy bandwidth of a `bytes`-sized buffer, bytes/s.
fn memcpy_bandwidth(bytes: usize, iters: usize) -> f64 {
    let src = Tensor::ones([(bytes / 4) as i64], (Kind::Float, Device::Cpu));
    let mut dst = src.zeros_like();
    let times: Vec<f64> = (0..iters.max(3))
        .map(|_| {
            let t0 = Instant::now();
            dst.copy_(&src);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    bytes as f64 / median(&times)
}

fn bench(a: &AllreduceArgs, info: &LaunchInfo, device: Device, opts: &CommOptions) -> Result<()> {
    let (label, grads) = gradients(a.mb, device);
    let numel: usize = grads.iter().map(|t| t.numel()).sum();
    let bytes = (numel * 4) as f64;
    let bucketed = super::communicator(device, info, opts.clone())?;
    let (n, rank0) = (bucketed.world() as f64, bucketed.rank() == 0);
    let say = |line: String| {
        if rank0 {
            println!("{line}")
        }
    };
    say(format!(
        "all-reduce bench: world {n}, backend {}, device {device:?}, launcher {}; fp16 {}; median of {}",
        bucketed.backend(),
        info.launcher,
        if opts.fp16 { "on" } else { "off" },
        a.iters
    ));
    say(format!(
        "gradients: {label} ({} tensors, {:.2} M f32, {:.1} MB)",
        grads.len(),
        numel as f64 / 1e6,
        bytes / 1e6
    ));
    let mut per_tensor_opts = opts.clone();
    per_tensor_opts.bucket_bytes = 0;
    // What training reduces: every gradient in one f32 buffer, reduced in bucket-sized
    // slices where it lies (optim/flat.rs).
    let flat = vec![Tensor::cat(&grads.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(), 0)];
    let buckets = dist::bucket::plan(&dist::bucket::numels(&grads), opts.bucket_bytes).len();
    let variants = [
        (
            format!("flat buffer ({} MiB slices)", a.comm.bucket_mb),
            super::communicator(device, info, opts.clone())?,
            &flat,
        ),
        (format!("bucketed ({} MiB, {buckets} buckets)", a.comm.bucket_mb), bucketed, &grads),
        (
            format!("per-tensor ({} all-reduces)", grads.len()),
            super::communicator(device, info, per_tensor_opts)?,
            &grads,
        ),
    ];
    let mut best = f64::INFINITY;
    for (name, c, tensors) in &variants {
        let t = time_all_reduce(&**c, tensors, a.iters)?;
        best = best.min(t);
        let algbw = bytes / t;
        say(format!(
            "  {name:<34} time {:8.2} ms   algbw {:6.2} GB/s   busbw {:6.2} GB/s",
            t * 1e3,
            algbw / 1e9,
            algbw * 2.0 * (n - 1.0) / n / 1e9
        ));
    }
    if let Some(t) = raw_mpi(info, device, opts, &grads, a.iters)? {
        let algbw = bytes / t;
        say(format!(
            "  {:<34} time {:8.2} ms   algbw {:6.2} GB/s   busbw {:6.2} GB/s",
            "raw MPI_Allreduce (no flatten/copy)",
            t * 1e3,
            algbw / 1e9,
            algbw * 2.0 * (n - 1.0) / n / 1e9
        ));
    }
    let copy = memcpy_bandwidth(opts.bucket_bytes.max(1 << 20), a.iters);
    say(format!("  baseline: local memcpy of one bucket {:.2} GB/s", copy / 1e9));
    if let Some(p2p) = point_to_point(info, device, opts, a.iters)? {
        let ring = 2.0 * (n - 1.0) / n * bytes / p2p;
        say(format!("  baseline: MPI point-to-point (ping-pong, one bucket) {:.2} GB/s", p2p / 1e9));
        say(format!(
            "  ring bound 2(N-1)/N x bytes / p2p = {:.2} ms; the faster variant reaches {:.0}% of it",
            ring * 1e3,
            100.0 * ring / best
        ));
    }
    Ok(())
}

/// The same bytes as pre-flattened bucket buffers through MPI_Allreduce alone, into
/// buffers kept between calls: the communication share of the bucketed time (the rest is
/// flatten, copy back and the division).
fn raw_mpi(
    info: &LaunchInfo,
    device: Device,
    opts: &CommOptions,
    grads: &[Tensor],
    iters: usize,
) -> Result<Option<f64>> {
    #[cfg(feature = "mpi")]
    if info.world > 1 && !device.is_cuda() {
        let mpi = dist::mpi::Mpi::new(info.clone(), opts.clone())?;
        let plan = dist::bucket::plan(&dist::bucket::numels(grads), opts.bucket_bytes);
        let flats: Vec<Tensor> = plan.into_iter().map(|r| dist::bucket::flatten(&grads[r])).collect::<Result<_>>()?;
        // Receive buffers allocated once, as the gradient path keeps its own.
        let outs: Vec<Tensor> = flats.iter().map(Tensor::empty_like).collect();
        let mut times = Vec::with_capacity(iters);
        for i in 0..iters + 2 {
            mpi.barrier()?;
            let t0 = Instant::now();
            for (f, out) in flats.iter().zip(&outs) {
                mpi.sum_f32_into(f, out);
            }
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        mpi.all_reduce_f64(&mut times, ReduceOp::Max)?;
        return Ok(Some(median(&times)));
    }
    let _ = (info, device, opts, grads, iters);
    Ok(None)
}

/// Rank 0 <-> 1 bandwidth over MPI (bytes/s, the same on every rank), or None when the
/// gradients do not travel over MPI.
fn point_to_point(info: &LaunchInfo, device: Device, opts: &CommOptions, iters: usize) -> Result<Option<f64>> {
    #[cfg(feature = "mpi")]
    if info.world > 1 && !device.is_cuda() {
        let mpi = dist::mpi::Mpi::new(info.clone(), opts.clone())?;
        let bytes = opts.bucket_bytes.max(1 << 20);
        let mut t = [median(&mpi.ping_pong(bytes, iters.max(3)))];
        mpi.all_reduce_f64(&mut t, ReduceOp::Max)?;
        return Ok(Some(bytes as f64 / t[0]));
    }
    let _ = (info, device, opts, iters);
    Ok(None)
}
