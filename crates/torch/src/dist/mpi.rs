//! MPI backend: CPU tensors (CUDA ones are staged through host memory), scalars, bytes.
//! Gradient buckets are averaged by reducer.rs.

use super::comm_thread::CommThread;
use super::reducer::{as_mut_bytes, as_mut_slice, as_slice, Reducer};
use super::watchdog::{Op, Watchdog};
use super::{bucket, Comm, CommOptions, LaunchInfo, ReduceOp};
use anyhow::{ensure, Context, Result};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// MPI may be initialised once per process: `launch_info` and `init` share this.
static UNIVERSE: OnceLock<Option<Universe>> = OnceLock::new();

fn universe() -> Option<&'static Universe> {
    UNIVERSE
        .get_or_init(|| {
            // Multiple: the watchdog thread may call MPI_Abort while the main thread waits.
            let (universe, _level) = mpi::initialize_with_threading(Threading::Multiple)?;
            Some(universe)
        })
        .as_ref()
}

pub fn launch_info(launcher: &'static str) -> Option<LaunchInfo> {
    let world = universe()?.world();
    let local = world.split_shared(world.rank());
    Some(LaunchInfo {
        rank: world.rank() as usize,
        world: world.size() as usize,
        local_rank: local.rank() as usize,
        local_world: local.size() as usize,
        launcher,
    })
}

/// Whether this process initialised MPI.
pub fn initialized() -> bool {
    UNIVERSE.get().is_some_and(|u| u.is_some())
}

/// MPI_Finalize if MPI was initialised and not yet finalised.
pub fn finalize() {
    if initialized() {
        let mut done = 0;
        unsafe {
            mpi::ffi::MPI_Finalized(&mut done);
            if done == 0 {
                mpi::ffi::MPI_Finalize();
            }
        }
    }
}

/// Ends every rank of the job. A backstop kills this process if MPI_Abort itself hangs.
pub fn abort_world(message: &str) -> ! {
    super::failure::say(message);
    abort_world_after_saying()
}

/// `abort_world` once the message is on stderr.
pub fn abort_world_after_saying() -> ! {
    // Let the launcher forward the message before MPI_Abort tears the job down.
    std::thread::sleep(std::time::Duration::from_millis(500));
    super::failure::backstop(std::time::Duration::from_secs(10));
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
    }
    std::process::abort();
}

pub struct Mpi {
    info: LaunchInfo,
    opts: CommOptions,
    world: SimpleCommunicator,
    /// A duplicate of `world` for layout checks only: a check one rank makes alone cannot
    /// be matched with the others' gradient transfer.
    checks: SimpleCommunicator,
    agreed: bucket::AgreedLayouts,
    watchdog: Watchdog,
    /// Gradient buckets reduced on this thread (`all_reduce_mean`).
    reducer: Reducer,
    /// The thread `start_mean` hands buckets to, made at the first call (None: MPI did not
    /// grant MPI_THREAD_MULTIPLE, so they are reduced at once).
    thread: std::cell::OnceCell<Option<CommThread>>,
    /// Buckets handed to the thread since the last `finish_means` (their buffer slots).
    started: std::cell::Cell<usize>,
}

impl Mpi {
    pub fn new(info: LaunchInfo, opts: CommOptions) -> Result<Mpi> {
        let world = universe().context("MPI is not initialised (not started by a launcher?)")?.world();
        ensure!(world.rank() as usize == info.rank, "rank changed between launch_info and init");
        let watchdog = Watchdog::start(info.rank, opts.timeout, |m: &str| abort_world(m));
        let checks = world.duplicate();
        let reducer = Reducer::new(world.duplicate(), &opts);
        Ok(Mpi {
            info,
            opts,
            world,
            checks,
            agreed: Default::default(),
            watchdog,
            reducer,
            thread: Default::default(),
            started: Default::default(),
        })
    }

    /// The communication thread, started at the first call when MPI allows threads.
    fn comm_thread(&self) -> Option<&CommThread> {
        self.thread
            .get_or_init(|| {
                let level = mpi::environment::threading_support();
                // TRAINER_COMM_THREAD=off acts as an MPI that grants less (for tests).
                let refused = std::env::var_os("TRAINER_COMM_THREAD").is_some_and(|v| v == "off");
                if level != Threading::Multiple || refused {
                    let level = if refused { "TRAINER_COMM_THREAD=off".into() } else { format!("MPI granted {level:?}") };
                    tracing::warn!(
                        "{level}, not MPI_THREAD_MULTIPLE: gradients are all-reduced on the main thread after the backward (--overlap has no effect)"
                    );
                    return None;
                }
                let reducer = Reducer::new(self.world.duplicate(), &self.opts);
                CommThread::start(reducer, self.info.rank, self.opts.timeout, abort_world)
                    .inspect_err(|e| tracing::warn!("no all-reduce thread ({e}): gradients are all-reduced after the backward"))
                    .ok()
            })
            .as_ref()
    }

    /// Sums a contiguous CPU f32 tensor over ranks into `out` (same length): the raw
    /// MPI_Allreduce the bench compares the gradient path with.
    pub fn sum_f32_into(&self, flat: &Tensor, out: &Tensor) {
        unsafe {
            self.world.all_reduce_into(as_slice::<f32>(flat), as_mut_slice::<f32>(out), SystemOperation::sum());
        }
    }

    /// Checks once per new layout that every rank passes the same tensors (see
    /// `AgreedLayouts`), on the duplicate communicator.
    fn agree(&self, tensors: &[Tensor], what: &str) -> Result<()> {
        self.agreed.check(tensors, (self.info.rank, what), |range| {
            crate::host_sync::waited();
            let local = range.to_vec();
            self.checks.all_reduce_into(&local[..], range, SystemOperation::max());
            Ok(())
        })
    }

    fn broadcast_one(&self, t: &Tensor, root: usize) {
        let root = self.world.process_at_rank(root as i32);
        if t.device() == Device::Cpu && t.is_contiguous() {
            root.broadcast_into(unsafe { as_mut_bytes(t) });
        } else {
            let staged = crate::host_sync::to_host(t).contiguous();
            root.broadcast_into(unsafe { as_mut_bytes(&staged) });
            t.shallow_clone().copy_(&staged);
        }
    }

    /// Fails (on every rank) when the ranks' tensor lists differ in shape or dtype, before
    /// any mismatched broadcast could write past a buffer.
    fn check_same_layout(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        let mine = bucket::layout_hash(tensors);
        let mut theirs = mine;
        self.world.process_at_rank(root as i32).broadcast_into(&mut theirs);
        let mut mismatch = [(mine != theirs) as u64];
        let local = mismatch;
        self.world.all_reduce_into(&local, &mut mismatch, SystemOperation::max());
        ensure!(
            mismatch[0] == 0,
            "rank {}: broadcast tensors differ in shape or dtype between ranks (this rank {}; a model built differently?)",
            self.info.rank,
            if mine == theirs { "matches root" } else { "differs from root" }
        );
        Ok(())
    }
}

impl Mpi {
    /// Seconds per one-way transfer of `bytes` between ranks 0 and 1 (half a round trip),
    /// one figure per iteration; the link bandwidth a ring all-reduce is bounded by.
    pub fn ping_pong(&self, bytes: usize, iters: usize) -> Vec<f64> {
        use mpi::point_to_point::{Destination, Source};
        let mut buf = vec![1u8; bytes];
        let mut out = Vec::with_capacity(iters);
        self.world.barrier();
        for _ in 0..iters {
            let t0 = std::time::Instant::now();
            match self.info.rank {
                0 => {
                    self.world.process_at_rank(1).send(&buf[..]);
                    self.world.process_at_rank(1).receive_into(&mut buf[..]);
                }
                1 => {
                    self.world.process_at_rank(0).receive_into(&mut buf[..]);
                    self.world.process_at_rank(0).send(&buf[..]);
                }
                _ => {}
            }
            out.push(t0.elapsed().as_secs_f64() / 2.0);
        }
        out
    }
}

fn system_op(op: ReduceOp) -> SystemOperation {
    match op {
        ReduceOp::Sum => SystemOperation::sum(),
        ReduceOp::Min => SystemOperation::min(),
        ReduceOp::Max => SystemOperation::max(),
    }
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.info.rank
    }
    fn world(&self) -> usize {
        self.info.world
    }
    fn local_rank(&self) -> usize {
        self.info.local_rank
    }
    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<()> {
        let _armed = self.watchdog.arm(Op::AllReduceMean);
        super::failure::maybe_hang();
        let _no_grad = tch::no_grad_guard();
        bucket::check_f32(tensors).with_context(|| format!("rank {}: all_reduce_mean", self.info.rank))?;
        self.agree(tensors, "gradients before the all-reduce")?;
        self.reducer.reduce_all(0, &self.reducer.buckets(tensors))
    }

    fn start_mean(&self, tensors: &[Tensor]) -> Result<()> {
        let Some(thread) = self.comm_thread() else { return self.all_reduce_mean(tensors) };
        bucket::check_f32(tensors).with_context(|| format!("rank {}: start_mean", self.info.rank))?;
        {
            let _armed = self.watchdog.arm(Op::AllReduceMean);
            super::failure::maybe_hang();
            self.agree(tensors, "gradients before the all-reduce")?;
        }
        let buckets = self.reducer.buckets(tensors);
        let first = self.started.replace(self.started.get() + buckets.len());
        thread.send(first, buckets)
    }

    fn finish_means(&self) -> Result<f64> {
        self.started.set(0);
        match self.thread.get() {
            Some(Some(thread)) => {
                thread.wait().with_context(|| format!("rank {}: gradient all-reduce", self.info.rank))
            }
            _ => Ok(0.0),
        }
    }

    fn overlaps(&self) -> bool {
        self.comm_thread().is_some()
    }

    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        ensure!(root < self.info.world, "broadcast root {root} is outside the world of {}", self.info.world);
        let _armed = self.watchdog.arm(Op::Broadcast);
        let _no_grad = tch::no_grad_guard();
        self.check_same_layout(tensors, root)?;
        for t in tensors {
            self.broadcast_one(t, root);
        }
        Ok(())
    }

    fn all_reduce_f64(&self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        let _armed = self.watchdog.arm(Op::AllReduceF64);
        crate::host_sync::waited();
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, system_op(op));
        Ok(())
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let _armed = self.watchdog.arm(Op::AllGather);
        let _no_grad = tch::no_grad_guard();
        self.agree(std::slice::from_ref(t), "tensors to all-gather")?;
        let local = crate::host_sync::to_host(t).contiguous();
        let mut shape = t.size();
        if let Some(rows) = shape.first_mut() {
            *rows *= self.info.world as i64;
        }
        let out = Tensor::empty(shape.as_slice(), (t.kind(), Device::Cpu));
        unsafe {
            let bytes = std::slice::from_raw_parts(
                local.data_ptr() as *const u8,
                local.numel() * local.kind().elt_size_in_bytes(),
            );
            self.world.all_gather_into(bytes, as_mut_bytes(&out));
        }
        Ok(out.to_device(t.device()))
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        let _armed = self.watchdog.arm(Op::AllReduce);
        let _no_grad = tch::no_grad_guard();
        ensure!(t.kind() == Kind::Float, "rank {}: all_reduce takes f32 tensors, got {:?}", self.info.rank, t.kind());
        let local = crate::host_sync::to_host(t).contiguous();
        let out = Tensor::empty([local.numel() as i64], (Kind::Float, Device::Cpu));
        unsafe {
            self.world.all_reduce_into(as_slice::<f32>(&local), as_mut_slice::<f32>(&out), system_op(op));
        }
        t.shallow_clone().copy_(&out.view_as(t));
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        ensure!(root < self.info.world, "broadcast root {root} is outside the world of {}", self.info.world);
        let _armed = self.watchdog.arm(Op::BroadcastBytes);
        crate::host_sync::waited();
        let root = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        if len > 0 {
            root.broadcast_into(&mut bytes[..]);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let _armed = self.watchdog.arm(Op::Barrier);
        crate::host_sync::waited();
        self.world.barrier();
        Ok(())
    }

    fn barrier_within(&self, timeout: std::time::Duration) -> Result<()> {
        let _armed = self.watchdog.arm_for(Op::Checkpoint, timeout);
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, reason: &str) -> ! {
        abort_world(&format!("rank {}: {reason}", self.info.rank))
    }
}
