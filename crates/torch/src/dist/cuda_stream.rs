//! A CUDA stream beside libtorch's default one, ordered against it by events: NCCL's
//! overlapped all-reduces run there while the next stage's backward kernels run on the
//! default stream (the legacy NULL stream, which tch never changes; see nccl.rs). The
//! stream is non-blocking, so only the events order it against the default stream.

use super::completion::Pending;
use anyhow::{bail, ensure, Context, Result};
use cudarc::nccl::sys::cudaStream_t;
use std::ffi::{c_int, c_uint, c_void};

type Event = *mut c_void;

/// `cudaErrorNotReady`: what a query of unfinished work returns.
pub const NOT_READY: c_int = 600;

/// A CUDA runtime entry point that libtorch_cuda already loaded.
pub fn cuda_symbol<T: Copy>(name: &[u8]) -> Result<T> {
    let this = libloading::os::unix::Library::this();
    let sym: libloading::os::unix::Symbol<T> = unsafe { this.get(name) }.with_context(|| {
        format!(
            "{} is not loaded: is this binary linked with libtorch_cuda?",
            String::from_utf8_lossy(&name[..name.len() - 1])
        )
    })?;
    Ok(*sym)
}

pub struct SideStream {
    stream: cudaStream_t,
    /// Recorded on the default stream, waited for by the side stream.
    ahead: Event,
    /// Recorded on the side stream, waited for by the default stream.
    behind: Event,
}

const NON_BLOCKING: c_uint = 1;
const DISABLE_TIMING: c_uint = 2;

fn check(code: c_int, what: &str) -> Result<()> {
    ensure!(code == 0, "{what} failed with CUDA error {code}");
    Ok(())
}

fn new_event() -> Result<Event> {
    let create: unsafe extern "C" fn(*mut Event, c_uint) -> c_int = cuda_symbol(b"cudaEventCreateWithFlags\0")?;
    let mut event = std::ptr::null_mut();
    check(unsafe { create(&mut event, DISABLE_TIMING) }, "cudaEventCreateWithFlags")?;
    Ok(event)
}

/// `waiter` waits (on the device) for the work enqueued on `recorder` so far.
fn order(event: Event, recorder: cudaStream_t, waiter: cudaStream_t) -> Result<()> {
    let record: unsafe extern "C" fn(Event, cudaStream_t) -> c_int = cuda_symbol(b"cudaEventRecord\0")?;
    let wait: unsafe extern "C" fn(cudaStream_t, Event, c_uint) -> c_int = cuda_symbol(b"cudaStreamWaitEvent\0")?;
    check(unsafe { record(event, recorder) }, "cudaEventRecord")?;
    check(unsafe { wait(waiter, event, 0) }, "cudaStreamWaitEvent")
}

impl SideStream {
    /// On the current CUDA device (the communicator's).
    pub fn new() -> Result<SideStream> {
        let create: unsafe extern "C" fn(*mut cudaStream_t, c_uint) -> c_int =
            cuda_symbol(b"cudaStreamCreateWithFlags\0")?;
        let mut stream = std::ptr::null_mut();
        check(unsafe { create(&mut stream, NON_BLOCKING) }, "cudaStreamCreateWithFlags")?;
        Ok(SideStream { stream, ahead: new_event()?, behind: new_event()? })
    }

    pub fn raw(&self) -> cudaStream_t {
        self.stream
    }

    /// Work enqueued here from now on starts after all work enqueued so far on the
    /// default stream (the gradients a stage's backward wrote).
    pub fn follow_default(&self) -> Result<()> {
        order(self.ahead, std::ptr::null_mut(), self.stream)
    }

    /// Work enqueued on the default stream from now on starts after all work enqueued
    /// here so far (the optimiser reads the reduced gradients).
    pub fn rejoin_default(&self) -> Result<()> {
        order(self.behind, self.stream, std::ptr::null_mut())
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        let destroy_event: Result<unsafe extern "C" fn(Event) -> c_int> = cuda_symbol(b"cudaEventDestroy\0");
        let destroy_stream: Result<unsafe extern "C" fn(cudaStream_t) -> c_int> = cuda_symbol(b"cudaStreamDestroy\0");
        if let (Ok(de), Ok(ds)) = (destroy_event, destroy_stream) {
            unsafe {
                de(self.ahead);
                de(self.behind);
                ds(self.stream);
            }
        }
    }
}

/// An event recorded on the default stream: done once everything enqueued there before
/// it has run (the step's all-reduces and the divisions after them).
pub struct DefaultStreamMark {
    event: Event,
    /// `cudaEventQuery`, looked up once per mark rather than at every poll.
    query: unsafe extern "C" fn(Event) -> c_int,
}

impl DefaultStreamMark {
    pub fn record() -> Result<DefaultStreamMark> {
        let record: unsafe extern "C" fn(Event, cudaStream_t) -> c_int = cuda_symbol(b"cudaEventRecord\0")?;
        let mark = DefaultStreamMark { event: new_event()?, query: cuda_symbol(b"cudaEventQuery\0")? };
        check(unsafe { record(mark.event, std::ptr::null_mut()) }, "cudaEventRecord")?;
        Ok(mark)
    }
}

/// SAFETY: a CUDA event is a process-wide handle; the runtime allows any thread to query it.
unsafe impl Send for DefaultStreamMark {}

impl Pending for DefaultStreamMark {
    fn poll(&mut self) -> Result<bool> {
        match unsafe { (self.query)(self.event) } {
            0 => Ok(true),
            NOT_READY => Ok(false),
            code => bail!("CUDA error {code} on the stream the all-reduce ran on"),
        }
    }
}

impl Drop for DefaultStreamMark {
    fn drop(&mut self) {
        if let Ok(destroy) = cuda_symbol::<unsafe extern "C" fn(Event) -> c_int>(b"cudaEventDestroy\0") {
            unsafe { destroy(self.event) };
        }
    }
}
