//! NCCL backend: gradients, parameter broadcasts and Partial FC's all-gather and
//! all-reduces on CUDA tensors' memory; scalars and bytes still go through the host
//! communicator (MPI, or Single for a world of one).
//! The library is found and loaded by nccl_library.rs.
//!
//! Ordering: tch never changes libtorch's current stream, which stays the device's default
//! (legacy NULL) stream, so NCCL calls are enqueued on stream NULL, after the kernels that
//! wrote their inputs and before the copies that read them back; the training step's
//! gradient all-reduces instead run on a side stream ordered by events (cuda_stream.rs),
//! beside the next stage's backward. The step's collectives (the gradients, Partial FC's
//! all-gathers and all-reduces) are not waited for on the host: a watching thread sees
//! them finish (completion.rs), so the host runs ahead. Broadcasts and the benchmarks'
//! all-reduces wait, under the watchdog, errors surfacing in the call that caused them.

pub use super::nccl_library::{candidates, library, probe_from, Library};

use super::completion::Completions;
use super::cuda_stream::{cuda_symbol, DefaultStreamMark, SideStream, NOT_READY};
use super::watchdog::{Op, Watchdog};
use super::{bucket, Comm, CommOptions, ReduceOp};
use anyhow::{bail, ensure, Context, Result};
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};
use std::cell::Cell;
use std::ffi::{c_char, c_int};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// This process's live communicators (one in training; a benchmark may hold several), for
/// `abort_live` (a panic or the watchdog must abort them from any thread, without the
/// `Nccl` at hand). Every call on a communicator holds this lock, so an abort never frees
/// one under a call still using it.
static LIVE: Mutex<Vec<LiveComm>> = Mutex::new(Vec::new());

/// The raw communicator, sendable so the lock above can hold it.
struct LiveComm(ncclComm_t);
unsafe impl Send for LiveComm {}

fn live() -> std::sync::MutexGuard<'static, Vec<LiveComm>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// ncclCommAbort on every live communicator, once: their kernels stop spinning on a dead
/// peer, so MPI_Abort and exit are not held up by the GPU. If a call holds the lock for
/// over two seconds (stuck inside NCCL), it aborts without it rather than wait forever.
pub fn abort_live() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let taken = loop {
        match LIVE.try_lock() {
            Ok(mut guard) => break std::mem::take(&mut *guard),
            Err(std::sync::TryLockError::Poisoned(e)) => break std::mem::take(&mut *e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                eprintln!("NCCL is busy in another thread; ending without aborting its communicator");
                break Vec::new();
            }
        }
    };
    if let Ok(lib) = library() {
        for LiveComm(comm) in taken {
            unsafe { (lib.comm_abort)(comm) };
        }
    }
}

/// cudaSetDevice from the CUDA runtime libtorch_cuda already loaded (NCCL binds a
/// communicator to the current device).
fn set_device(index: usize) -> Result<()> {
    let set: unsafe extern "C" fn(c_int) -> c_int = cuda_symbol(b"cudaSetDevice\0")?;
    let code = unsafe { set(index as c_int) };
    ensure!(code == 0, "cudaSetDevice({index}) failed with CUDA error {code}");
    Ok(())
}

pub struct Nccl {
    host: Box<dyn Comm>,
    lib: &'static Library,
    comm: ncclComm_t,
    opts: CommOptions,
    watchdog: Watchdog,
    agreed: bucket::AgreedLayouts,
    /// True when every collective enqueued so far has completed: only then may `drop`
    /// destroy the communicator (ncclCommDestroy waits for outstanding work); otherwise
    /// it aborts it.
    settled: Cell<bool>,
    /// Where `start_mean`'s all-reduces run, made at the first one.
    side: std::cell::OnceCell<SideStream>,
    /// The divisions still owed by the buckets `start_mean` enqueued this step.
    tails: std::cell::RefCell<Vec<Tail>>,
    /// Each step's gradient all-reduce, watched to completion off the host's path.
    completions: Completions,
}

/// The thread that sees each step's all-reduce finish (see dist/completion.rs): it polls
/// NCCL's asynchronous error meanwhile, and ends the job on an error or the time-out.
fn watch_completions(
    lib: &'static Library,
    comm: LiveComm,
    device: usize,
    rank: usize,
    timeout: std::time::Duration,
) -> Completions {
    let setup = move || {
        if let Err(e) = set_device(device) {
            tracing::warn!("rank {rank}: {e:#}");
        }
    };
    let check = move || {
        let comm = &comm; // the whole (sendable) wrapper, not its raw pointer
        let guard = live();
        if !guard.iter().any(|l| l.0 == comm.0) {
            return Ok(()); // aborted: the job is ending
        }
        let mut err = ncclResult_t::ncclSuccess;
        lib.check(unsafe { (lib.get_async_error)(comm.0, &mut err) }, "ncclCommGetAsyncError", rank)?;
        lib.check(err, "collective (asynchronous error)", rank)
    };
    Completions::start(rank, timeout, setup, check, |m: &str| super::failure::end_job(m))
}

/// A bucket whose sum is enqueued, and the division still owed to its gradients.
struct Tail {
    sum: Tensor,
    group: Vec<Tensor>,
    divisor: f64,
}

impl Tail {
    /// On the default stream, behind the sum.
    fn apply(self) -> Result<()> {
        match bucket::in_place(&self.group).filter(|t| t.data_ptr() == self.sum.data_ptr()) {
            Some(t) => {
                let _ = t.shallow_clone().f_div_scalar_(self.divisor)?;
                Ok(())
            }
            None => bucket::unflatten_divided(&self.sum, &self.group, self.divisor),
        }
    }
}

impl Nccl {
    /// Probes NCCL, checks the device, then bootstraps: rank 0's unique id goes to every
    /// rank over `host`, and each rank joins with ncclCommInitRank.
    pub fn new(host: Box<dyn Comm>, device: Device, opts: CommOptions) -> Result<Nccl> {
        let rank = host.rank();
        let Device::Cuda(index) = device else {
            bail!("rank {rank}: the NCCL backend needs a CUDA device, got {device:?}")
        };
        let lib = library().with_context(|| format!("rank {rank}: NCCL backend"))?;
        let visible = tch::Cuda::device_count();
        ensure!(
            tch::Cuda::is_available() && (index as i64) < visible,
            "rank {rank}: CUDA device cuda:{index} is not available (libtorch sees {visible} CUDA devices); the NCCL backend needs one GPU per rank"
        );
        set_device(index)?;
        let mut id = ncclUniqueId { internal: [0; 128] };
        if rank == 0 {
            lib.check(unsafe { (lib.get_unique_id)(&mut id) }, "ncclGetUniqueId", rank)?;
        }
        let mut bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
        host.broadcast_bytes(&mut bytes, 0)?;
        ensure!(bytes.len() == 128, "rank {rank}: NCCL unique id has {} bytes, expected 128", bytes.len());
        for (dst, src) in id.internal.iter_mut().zip(&bytes) {
            *dst = *src as c_char;
        }
        let watchdog = Watchdog::start(rank, opts.timeout, |m: &str| super::failure::end_job(m));
        let mut comm: ncclComm_t = std::ptr::null_mut();
        {
            let _armed = watchdog.arm(Op::Init);
            lib.check(
                unsafe { (lib.init_rank)(&mut comm, host.world() as c_int, id, rank as c_int) },
                "ncclCommInitRank",
                rank,
            )?;
        }
        live().push(LiveComm(comm));
        let completions = watch_completions(lib, LiveComm(comm), index, rank, opts.timeout);
        super::failure::before_end_job(abort_live);
        tracing::info!(rank, device = index, nccl = lib.version, path = %lib.path.display(), "NCCL communicator ready");
        Ok(Nccl {
            host,
            lib,
            comm,
            opts,
            watchdog,
            agreed: Default::default(),
            settled: Cell::new(true),
            side: Default::default(),
            tails: Default::default(),
            completions,
        })
    }

    /// Runs `call` on the communicator under the live lock; an error once it was aborted
    /// (the job is ending) instead of a call on freed memory.
    fn call(&self, what: &str, call: impl FnOnce(ncclComm_t) -> ncclResult_t) -> Result<()> {
        let guard = live();
        if !guard.iter().any(|l| l.0 == self.comm) {
            bail!("rank {}: {what} on an NCCL communicator that was aborted (the job is ending)", self.rank())
        }
        self.settled.set(false);
        self.lib.check(call(self.comm), what, self.rank())
    }

    /// One bucket made ready to sum on the device: a slice of the flat gradient buffer
    /// as it lies (f32), or packed; f16 divided (in f32) before it is rounded, so
    /// loss-scaled gradients overflow only where their mean would.
    fn prepare(&self, group: &[Tensor]) -> Result<(Tail, ncclDataType_t)> {
        let n = self.world() as f64;
        let group: Vec<Tensor> = group.iter().map(Tensor::shallow_clone).collect();
        if let Some(t) = bucket::in_place(&group).filter(|_| !self.opts.fp16) {
            return Ok((Tail { sum: t.shallow_clone(), group, divisor: n }, ncclDataType_t::ncclFloat32));
        }
        let flat = bucket::flatten(&group)?;
        Ok(match self.opts.fp16 {
            true => (Tail { sum: (flat / n).to_kind(Kind::Half), group, divisor: 1.0 }, ncclDataType_t::ncclFloat16),
            false => (Tail { sum: flat, group, divisor: n }, ncclDataType_t::ncclFloat32),
        })
    }

    /// The in-place sum of a prepared bucket, enqueued on `stream`.
    fn enqueue_sum(&self, tail: &Tail, dtype: ncclDataType_t, stream: cudaStream_t) -> Result<()> {
        let (ptr, count) = (tail.sum.data_ptr(), tail.sum.numel());
        self.call("ncclAllReduce", |comm| unsafe {
            (self.lib.all_reduce)(ptr, ptr, count, dtype, ncclRedOp_t::ncclSum, comm, stream)
        })
    }

    fn broadcast_one(&self, t: &Tensor, root: usize) -> Result<()> {
        in_place_on_contiguous(t, |staged| {
            let bytes = staged.numel() * staged.kind().elt_size_in_bytes();
            let ptr = staged.data_ptr();
            self.call("ncclBroadcast", |comm| unsafe {
                (self.lib.broadcast)(
                    ptr,
                    ptr,
                    bytes,
                    ncclDataType_t::ncclUint8,
                    root as c_int,
                    comm,
                    std::ptr::null_mut(),
                )
            })
        })
    }

    /// Same tensor shapes and dtypes on every rank, or an error on every rank: NCCL given
    /// different counts would hang or write past a buffer.
    fn check_same_layout(&self, tensors: &[Tensor], what: &str) -> Result<()> {
        let h = (bucket::layout_hash(tensors) >> 11) as f64;
        // One reduction gives both the largest hash and (negated) the smallest.
        let mut range = [h, -h];
        self.host.all_reduce_f64(&mut range, ReduceOp::Max)?;
        ensure!(range[0] == -range[1], "rank {}: {what} tensors differ in shape or dtype between ranks", self.rank());
        Ok(())
    }

    /// Once per new layout (see `AgreedLayouts`), over the host communicator.
    fn agree(&self, tensors: &[Tensor], what: &str) -> Result<()> {
        self.agreed.check(tensors, (self.rank(), what), |range| self.host.all_reduce_f64(range, ReduceOp::Max))
    }

    /// `t`'s rows from every rank, in rank order, as one tensor on `t`'s device.
    fn all_gather_rows(&self, t: &Tensor) -> Result<Tensor> {
        let local = t.contiguous();
        let mut shape = t.size();
        match shape.first_mut() {
            Some(rows) => *rows *= self.world() as i64,
            None => shape.push(self.world() as i64),
        }
        let out = Tensor::empty(shape.as_slice(), (t.kind(), t.device()));
        let bytes = local.numel() * local.kind().elt_size_in_bytes();
        let (src, dst) = (local.data_ptr(), out.data_ptr());
        self.call("ncclAllGather", |comm| unsafe {
            (self.lib.all_gather)(src, dst, bytes, ncclDataType_t::ncclUint8, comm, std::ptr::null_mut())
        })?;
        Ok(out)
    }

    /// Reduces `t` in place on every rank.
    fn all_reduce_in_place(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        ensure!(t.kind() == Kind::Float, "rank {}: all_reduce takes f32 tensors, got {:?}", self.rank(), t.kind());
        let op = match op {
            ReduceOp::Sum => ncclRedOp_t::ncclSum,
            ReduceOp::Min => ncclRedOp_t::ncclMin,
            ReduceOp::Max => ncclRedOp_t::ncclMax,
        };
        in_place_on_contiguous(t, |staged| {
            let ptr = staged.data_ptr();
            self.call("ncclAllReduce", |comm| unsafe {
                (self.lib.all_reduce)(
                    ptr,
                    ptr,
                    staged.numel(),
                    ncclDataType_t::ncclFloat32,
                    op,
                    comm,
                    std::ptr::null_mut(),
                )
            })
        })
    }
}

impl Nccl {
    /// Waits for the NULL stream (where every NCCL call and the kernels around it run),
    /// polling NCCL's asynchronous error meanwhile: a peer's failure surfaces here as an
    /// error instead of a wait that only the watchdog ends. On any error the communicator
    /// is aborted before the error returns: its kernels may still be running, and the
    /// watchdog is disarmed once this call is left.
    fn wait(&self) -> Result<()> {
        crate::host_sync::waited();
        let result = self.poll_until_done();
        match &result {
            Ok(()) => self.settled.set(true),
            Err(_) => abort_live(),
        }
        result
    }

    /// No host wait: everything enqueued so far is watched to completion (or its
    /// time-out) by the watching thread, and later kernels on the default stream are
    /// ordered after it anyway.
    fn watch(&self) -> Result<()> {
        self.completions.push(Box::new(DefaultStreamMark::record()?));
        Ok(())
    }

    /// The layout check (once per layout), then every bucket's sum enqueued on the
    /// default stream, each followed by its division.
    fn enqueue_mean(&self, tensors: &[Tensor]) -> Result<()> {
        super::failure::maybe_hang();
        self.agree(tensors, "gradients before the all-reduce")?;
        for group in bucket::buckets(tensors, self.opts.bucket_bytes) {
            let (tail, dtype) = self.prepare(&group)?;
            self.enqueue_sum(&tail, dtype, std::ptr::null_mut())?;
            tail.apply()?;
        }
        Ok(())
    }

    /// `enqueue_mean` with the sums on the side stream, after everything the default
    /// stream holds so far (the stage's backward, the packing); the divisions wait for
    /// `finish_means`.
    fn enqueue_mean_aside(&self, tensors: &[Tensor]) -> Result<()> {
        super::failure::maybe_hang();
        self.agree(tensors, "gradients before the all-reduce")?;
        let prepared: Vec<_> =
            bucket::buckets(tensors, self.opts.bucket_bytes).iter().map(|g| self.prepare(g)).collect::<Result<_>>()?;
        if self.side.get().is_none() {
            let _ = self.side.set(SideStream::new().with_context(|| format!("rank {}: NCCL's stream", self.rank()))?);
        }
        let side = self.side.get().context("NCCL's stream")?;
        side.follow_default()?;
        for (tail, dtype) in prepared {
            self.enqueue_sum(&tail, dtype, side.raw())?;
            self.tails.borrow_mut().push(tail);
        }
        Ok(())
    }

    fn poll_until_done(&self) -> Result<()> {
        type StreamQuery = unsafe extern "C" fn(cudaStream_t) -> c_int;
        let query: StreamQuery = cuda_symbol(b"cudaStreamQuery\0")?;
        loop {
            match unsafe { query(std::ptr::null_mut()) } {
                0 => return Ok(()),
                NOT_READY => {}
                code => bail!("rank {}: CUDA error {code} while waiting for an NCCL collective", self.rank()),
            }
            let mut async_err = ncclResult_t::ncclSuccess;
            self.call("ncclCommGetAsyncError", |comm| unsafe { (self.lib.get_async_error)(comm, &mut async_err) })?;
            self.lib.check(async_err, "collective (asynchronous error)", self.rank())?;
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

/// Runs an in-place collective on `t`'s memory, through a contiguous copy (written back
/// afterwards) when `t` is a strided view: NCCL reads and writes flat buffers.
fn in_place_on_contiguous(t: &Tensor, collective: impl FnOnce(&Tensor) -> Result<()>) -> Result<()> {
    if t.is_contiguous() {
        return collective(t);
    }
    let staged = t.contiguous();
    collective(&staged)?;
    t.shallow_clone().copy_(&staged);
    Ok(())
}

fn all_cuda(tensors: &[Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cuda())
}

impl Comm for Nccl {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world(&self) -> usize {
        self.host.world()
    }
    fn local_rank(&self) -> usize {
        self.host.local_rank()
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<()> {
        if !all_cuda(tensors) {
            return self.host.all_reduce_mean(tensors);
        }
        let _armed = self.watchdog.arm(Op::AllReduceMean);
        let _no_grad = tch::no_grad_guard();
        self.enqueue_mean(tensors)?;
        self.wait()
    }

    /// Enqueued behind the kernels that wrote the gradients; `finish_means` waits once
    /// for every group of the step.
    fn start_mean(&self, tensors: &[Tensor]) -> Result<()> {
        if !all_cuda(tensors) {
            return self.host.start_mean(tensors);
        }
        let _armed = self.watchdog.arm(Op::AllReduceMean);
        let _no_grad = tch::no_grad_guard();
        self.enqueue_mean_aside(tensors)
    }

    fn finish_means(&self) -> Result<f64> {
        let t = std::time::Instant::now();
        let host = self.host.finish_means()?;
        if self.settled.get() {
            return Ok(host);
        }
        let _armed = self.watchdog.arm(Op::AllReduceMean);
        let _no_grad = tch::no_grad_guard();
        if let Some(side) = self.side.get() {
            side.rejoin_default()?;
        }
        for tail in self.tails.take() {
            tail.apply()?;
        }
        self.watch()?;
        Ok(t.elapsed().as_secs_f64())
    }

    fn overlaps(&self) -> bool {
        true
    }

    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if !all_cuda(tensors) {
            return self.host.broadcast(tensors, root);
        }
        ensure!(root < self.world(), "broadcast root {root} is outside the world of {}", self.world());
        self.check_same_layout(tensors, "broadcast")?;
        let _armed = self.watchdog.arm(Op::Broadcast);
        let _no_grad = tch::no_grad_guard();
        for t in tensors {
            self.broadcast_one(t, root)?;
        }
        self.wait()
    }

    fn all_reduce_f64(&self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        self.host.all_reduce_f64(values, op)
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().is_cuda() {
            return self.host.all_gather(t);
        }
        self.agree(std::slice::from_ref(t), "tensors to all-gather")?;
        let _armed = self.watchdog.arm(Op::AllGather);
        let _no_grad = tch::no_grad_guard();
        let out = self.all_gather_rows(t)?;
        self.watch()?;
        Ok(out)
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        if !t.device().is_cuda() {
            return self.host.all_reduce(t, op);
        }
        let _armed = self.watchdog.arm(Op::AllReduce);
        let _no_grad = tch::no_grad_guard();
        self.all_reduce_in_place(t, op)?;
        self.watch()
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        self.host.broadcast_bytes(bytes, root)
    }
    fn barrier(&self) -> Result<()> {
        self.host.barrier()
    }
    fn barrier_within(&self, timeout: std::time::Duration) -> Result<()> {
        self.host.barrier_within(timeout)
    }
    fn abort(&self, reason: &str) -> ! {
        self.host.abort(reason)
    }
}

impl Drop for Nccl {
    /// Destroys the communicator when all its work has completed, aborts it otherwise
    /// (destroy would wait for work that may never finish); nothing if an abort already
    /// took it.
    fn drop(&mut self) {
        if !self.settled.get() {
            // Outstanding steps finish first (an error there aborts the communicator).
            let _armed = self.watchdog.arm(Op::AllReduceMean);
            let _ = self.wait();
        }
        let mut guard = live();
        let Some(at) = guard.iter().position(|l| l.0 == self.comm) else { return };
        guard.remove(at);
        drop(guard);
        let end = if self.settled.get() { self.lib.destroy } else { self.lib.comm_abort };
        unsafe { end(self.comm) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_device_or_no_gpu_is_an_error_not_a_panic() {
        let opts = CommOptions::default();
        let err = Nccl::new(Box::new(super::super::single::Single), Device::Cpu, opts.clone()).err().unwrap();
        assert!(format!("{err:#}").contains("needs a CUDA device"), "{err:#}");
        if !tch::Cuda::is_available() {
            let err = Nccl::new(Box::new(super::super::single::Single), Device::Cuda(0), opts).err().unwrap();
            let msg = format!("{err:#}");
            assert!(msg.contains("NCCL not found") || msg.contains("cuda:0 is not available"), "{msg}");
        }
    }
}
