//! Counts each time the training loop makes the host wait: a device→host read of a
//! tensor, a wait for the device's queue (NCCL's completion wait), or a round trip of
//! scalars between ranks (layout checks, Partial FC's size checks). On a GPU each one
//! drains the queue the step relies on to run ahead, so they are counted where they are
//! made: every such read in the loop's code goes through here (a test fails on one that
//! does not), and each progress line reports `host_syncs`, the count since the previous
//! line. Collectives over MPI on CPU tensors (the gradient all-reduce, the settle's
//! all-gather) stand for NCCL's, queued on the device; they are the step's work, not a
//! sync, and are not counted.

use anyhow::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::Tensor;

static SYNCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's waits, for tests that must see none while other tests run.
    static HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// One wait that is not a tensor read (a stream wait, a scalar round trip).
pub fn waited() {
    SYNCS.fetch_add(1, Ordering::Relaxed);
    HERE.with(|c| c.set(c.get() + 1));
}

/// The waits this thread has counted so far.
pub fn on_this_thread() -> u64 {
    HERE.with(|c| c.get())
}

/// The value of a one-element tensor.
pub fn f64_of(t: &Tensor) -> f64 {
    waited();
    t.double_value(&[])
}

/// `f64_of` of a tensor read from a file (which may hold anything).
pub fn try_f64_of(t: &Tensor) -> Result<f64> {
    waited();
    Ok(t.f_double_value(&[])?)
}

pub fn i64_of(t: &Tensor) -> i64 {
    waited();
    t.int64_value(&[])
}

/// A tensor's elements, read to the host.
pub fn vec_of<T: tch::kind::Element>(t: &Tensor) -> Result<Vec<T>> {
    waited();
    let flat = t.reshape([-1]).to_kind(T::KIND);
    let n = flat.numel();
    let mut out = vec![T::ZERO; n];
    flat.f_copy_data(&mut out, n)?;
    Ok(out)
}

/// A copy on the host; a sync only when `t` lives on a GPU.
pub fn to_host(t: &Tensor) -> Tensor {
    if t.device().is_cuda() {
        waited();
    }
    t.to_device(tch::Device::Cpu)
}

/// Runs `f` without counting its waits (validation, checkpoints).
pub fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    let before = SYNCS.load(Ordering::Relaxed);
    let out = f();
    SYNCS.store(before, Ordering::Relaxed);
    out
}

/// The count since the previous call.
pub fn take() -> u64 {
    SYNCS.swap(0, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_waits_are_counted() {
        let t = Tensor::from_slice(&[2.5f32]);
        let before = SYNCS.load(Ordering::Relaxed);
        assert_eq!(f64_of(&t), 2.5);
        assert_eq!(vec_of::<f32>(&t).unwrap(), vec![2.5]);
        waited();
        // Other tests in this process may count too: at least these three.
        assert!(SYNCS.load(Ordering::Relaxed) >= before + 3);
    }
}
