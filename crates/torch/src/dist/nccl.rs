//! NCCL backend: gradients, parameter broadcasts and Partial FC's all-gather and
//! all-reduces on CUDA tensors' memory; scalars and bytes still go through the host
//! communicator (MPI, or Single for a world of one).
//!
//! Loading: cudarc's dynamic loader panics when it finds nothing and never tries the real
//! soname `libnccl.so.2` (the name PyTorch's wheel ships), and it honours no variable to
//! point it elsewhere. So the library is probed here, by path, and its few entry points
//! are called through cudarc's NCCL types (`cudarc::nccl::sys`).
//!
//! Ordering: tch never changes libtorch's current stream, which stays the device's default
//! (legacy NULL) stream, so every NCCL call is enqueued on stream NULL, after the kernels
//! that wrote the gradients and before the copies that read them back. The device is
//! synchronised once at the end of each collective so it completes under the watchdog and
//! its errors surface in the call that caused them.

use super::cuda_stream::SideStream;
use super::watchdog::{Op, Watchdog};
use super::{bucket, Comm, CommOptions, ReduceOp};
use anyhow::{bail, ensure, Context, Result};
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> ncclResult_t;
type InitRank = unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> ncclResult_t;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclRedOp_t,
    ncclComm_t,
    cudaStream_t,
) -> ncclResult_t;
type AllGather =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclComm_t, cudaStream_t) -> ncclResult_t;
type Broadcast = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    c_int,
    ncclComm_t,
    cudaStream_t,
) -> ncclResult_t;
type Destroy = unsafe extern "C" fn(ncclComm_t) -> ncclResult_t;
type ErrorString = unsafe extern "C" fn(ncclResult_t) -> *const c_char;
type GetVersion = unsafe extern "C" fn(*mut c_int) -> ncclResult_t;
type CommAbort = unsafe extern "C" fn(ncclComm_t) -> ncclResult_t;
type GetAsyncError = unsafe extern "C" fn(ncclComm_t, *mut ncclResult_t) -> ncclResult_t;

/// The NCCL entry points this backend uses, from one probed library.
pub struct Library {
    pub path: PathBuf,
    /// e.g. 22805 for 2.28.5.
    pub version: i32,
    get_unique_id: GetUniqueId,
    init_rank: InitRank,
    all_reduce: AllReduce,
    all_gather: AllGather,
    broadcast: Broadcast,
    destroy: Destroy,
    error_string: ErrorString,
    comm_abort: CommAbort,
    get_async_error: GetAsyncError,
    _lib: libloading::Library,
}

/// Where to look, in order: $NCCL_LIBRARY, the system's soname and dev name, and the
/// `nvidia/nccl` wheel beside the libtorch this process runs (PyTorch's own NCCL).
pub fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("NCCL_LIBRARY").map(PathBuf::from).into_iter().collect();
    out.extend(["libnccl.so.2", "libnccl.so"].map(PathBuf::from));
    let torch_dirs =
        loaded_libtorch_dir().into_iter().chain(std::env::var_os("LIBTORCH").map(|d| PathBuf::from(d).join("lib")));
    for dir in torch_dirs {
        let wheel = dir.join("../../nvidia/nccl/lib/libnccl.so.2");
        if !out.contains(&wheel) {
            out.push(wheel);
        }
    }
    out
}

/// The directory of the libtorch_cpu.so mapped into this process.
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so"))?;
    Some(PathBuf::from(path).parent()?.to_path_buf())
}

/// Opens the first candidate that loads and has every entry point.
pub fn probe_from(candidates: &[PathBuf]) -> Result<Library> {
    let mut tried = Vec::new();
    for path in candidates {
        match open(path) {
            Ok(lib) => return Ok(lib),
            Err(e) => tried.push(format!("{} ({e})", path.display())),
        }
    }
    bail!("NCCL not found (tried: {}); install nvidia-nccl-cu13 or set NCCL_LIBRARY", tried.join(", "))
}

fn open(path: &PathBuf) -> Result<Library> {
    unsafe {
        let lib = libloading::Library::new(path)?;
        let get_version: GetVersion = *lib.get(b"ncclGetVersion\0")?;
        let mut version = 0;
        get_version(&mut version);
        Ok(Library {
            path: path.clone(),
            version,
            get_unique_id: *lib.get(b"ncclGetUniqueId\0")?,
            init_rank: *lib.get(b"ncclCommInitRank\0")?,
            all_reduce: *lib.get(b"ncclAllReduce\0")?,
            all_gather: *lib.get(b"ncclAllGather\0")?,
            broadcast: *lib.get(b"ncclBroadcast\0")?,
            destroy: *lib.get(b"ncclCommDestroy\0")?,
            error_string: *lib.get(b"ncclGetErrorString\0")?,
            comm_abort: *lib.get(b"ncclCommAbort\0")?,
            get_async_error: *lib.get(b"ncclCommGetAsyncError\0")?,
            _lib: lib,
        })
    }
}

/// The process-wide NCCL, probed once.
pub fn library() -> Result<&'static Library> {
    static LIB: OnceLock<Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(|| probe_from(&candidates()).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

impl Library {
    fn check(&self, r: ncclResult_t, what: &str, rank: usize) -> Result<()> {
        if r == ncclResult_t::ncclSuccess {
            return Ok(());
        }
        let msg = unsafe { CStr::from_ptr((self.error_string)(r)) }.to_string_lossy();
        bail!("rank {rank}: NCCL {what} failed: {msg} ({r:?})")
    }
}

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

/// A CUDA runtime entry point that libtorch_cuda already loaded.
pub(super) fn cuda_symbol<T: Copy>(name: &[u8]) -> Result<T> {
    let this = libloading::os::unix::Library::this();
    let sym: libloading::os::unix::Symbol<T> = unsafe { this.get(name) }.with_context(|| {
        format!(
            "{} is not loaded: is this binary linked with libtorch_cuda?",
            String::from_utf8_lossy(&name[..name.len() - 1])
        )
    })?;
    Ok(*sym)
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
        const CUDA_ERROR_NOT_READY: c_int = 600;
        let query: StreamQuery = cuda_symbol(b"cudaStreamQuery\0")?;
        loop {
            match unsafe { query(std::ptr::null_mut()) } {
                0 => return Ok(()),
                CUDA_ERROR_NOT_READY => {}
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
        self.wait()?;
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
        self.wait()?;
        Ok(out)
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        if !t.device().is_cuda() {
            return self.host.all_reduce(t, op);
        }
        let _armed = self.watchdog.arm(Op::AllReduce);
        let _no_grad = tch::no_grad_guard();
        self.all_reduce_in_place(t, op)?;
        self.wait()
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
    fn missing_library_is_a_clear_error() {
        let err = probe_from(&[PathBuf::from("/nonexistent/libnccl.so.2"), PathBuf::from("libnccl-missing.so")])
            .err()
            .expect("a missing library must not load");
        let msg = format!("{err:#}");
        assert!(msg.starts_with("NCCL not found (tried: /nonexistent/libnccl.so.2"), "{msg}");
        assert!(msg.contains("libnccl-missing.so") && msg.contains("set NCCL_LIBRARY"), "{msg}");
    }

    #[test]
    fn candidates_include_the_torch_wheel() {
        let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu)); // libtorch is mapped
        let c = candidates();
        assert!(c.iter().any(|p| p.ends_with("nvidia/nccl/lib/libnccl.so.2")), "{c:?}");
    }

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
