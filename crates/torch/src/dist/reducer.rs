//! Gradient buckets averaged over one MPI communicator: what `Mpi::all_reduce_mean` does
//! on the main thread, and the overlapped all-reduce's thread (comm_thread.rs) on its own.
//!
//! fp16 compression sends gradients as IEEE half (u16 on the wire) with a user-defined sum
//! that adds in f32 and rounds each partial sum back to half, as NCCL's f16 all-reduce
//! does: half the bytes, about 3 significant digits, overflow above 65504. Each rank
//! divides by the world size before it rounds to half, so the sum is of means: it
//! overflows only where the mean itself would.

use super::{bucket, CommOptions};
use anyhow::Result;
use mpi::collective::{CommunicatorCollectives, SystemOperation, UserOperation};
use mpi::topology::{Communicator, SimpleCommunicator};
use tch::{Device, Kind, Tensor};

/// Sums gradient buckets over one communicator and writes the means back. The main
/// thread and the communication thread each have one, on duplicates of `world` of their
/// own (so neither's messages can match the other's).
pub struct Reducer {
    comm: SimpleCommunicator,
    fp16: bool,
    f16_sum: UserOperation<'static>,
    mean_of_two: UserOperation<'static>,
    buffers: std::cell::RefCell<Vec<(Tensor, Tensor)>>,
    bucket_bytes: usize,
    /// `TRAINER_COMM_DELAY_MS`: a simulated slower network, added to every bucket.
    delay: std::time::Duration,
}

/// SAFETY: MPI handles are process-wide, and under MPI_THREAD_MULTIPLE any thread may use
/// them; the reducer moves to the communication thread whole and is used there only.
unsafe impl Send for Reducer {}

impl Reducer {
    pub fn new(comm: SimpleCommunicator, opts: &CommOptions) -> Reducer {
        Reducer {
            comm,
            fp16: opts.fp16,
            f16_sum: UserOperation::commutative(f16_sum),
            mean_of_two: UserOperation::commutative(mean_of_two),
            buffers: Default::default(),
            bucket_bytes: opts.bucket_bytes,
            delay: comm_delay(),
        }
    }

    pub fn buckets(&self, tensors: &[Tensor]) -> Vec<Vec<Tensor>> {
        bucket::buckets(tensors, self.bucket_bytes)
    }

    /// The buckets in order, bucket i in buffer slot `first + i`.
    pub fn reduce_all(&self, first: usize, buckets: &[Vec<Tensor>]) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        for (b, group) in buckets.iter().enumerate() {
            self.reduce(first + b, group)?;
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
        }
        Ok(())
    }

    fn reduce(&self, slot: usize, group: &[Tensor]) -> Result<()> {
        if let Some(t) = bucket::in_place(group).filter(|t| !self.fp16 && t.device() == Device::Cpu) {
            return self.reduce_from(slot, t);
        }
        let n = self.comm.size() as f64;
        let (send, recv) = self.bucket_buffers(slot, group.iter().map(|t| t.numel()).sum());
        // f16 divides before the sum (see `pack_divided_into`), f32 after it.
        let after = if self.fp16 {
            bucket::pack_divided_into(&send, group, n);
            1.0
        } else {
            bucket::pack_into(&send, group);
            n
        };
        unsafe {
            if self.fp16 {
                self.comm.all_reduce_into(as_slice::<u16>(&send), as_mut_slice::<u16>(&recv), &self.f16_sum);
            } else {
                self.comm.all_reduce_into(as_slice::<f32>(&send), as_mut_slice::<f32>(&recv), SystemOperation::sum());
            }
        }
        bucket::unflatten_divided(&recv, group, after)
    }

    /// The send and receive buffers of bucket `b`, kept between steps (fresh 25 MiB
    /// allocations every step cost page faults): f32, or f16 when compressing.
    fn bucket_buffers(&self, b: usize, numel: usize) -> (Tensor, Tensor) {
        let kind = if self.fp16 { Kind::Half } else { Kind::Float };
        let mut bufs = self.buffers.borrow_mut();
        if bufs.len() <= b {
            bufs.resize_with(b + 1, || (Tensor::new(), Tensor::new()));
        }
        if bufs[b].0.numel() != numel {
            let make = || Tensor::empty([numel as i64], (kind, Device::Cpu));
            bufs[b] = (make(), make());
        }
        (bufs[b].0.shallow_clone(), bufs[b].1.shallow_clone())
    }

    /// Averages `t` (a contiguous CPU f32 bucket) over ranks straight from its memory, as
    /// a reduce-scatter (each rank sums one N-th), the division of that N-th alone, and an
    /// all-gather back into `t`: an all-reduce's own two halves, with a mean's pass over
    /// 1/N of the bytes instead of all of them; with two ranks the halving happens in the
    /// sum itself (`mean_of_two`), so there is no extra pass. Elements past the last whole
    /// N-th go through a plain all-reduce.
    fn reduce_from(&self, b: usize, t: &Tensor) -> Result<()> {
        let t = t.view([-1]);
        let world = self.comm.size() as usize;
        let n = world as f64;
        let (numel, share) = (t.numel(), t.numel() / world);
        let (mine, _) = self.bucket_buffers(b, share);
        if share > 0 {
            let body = t.narrow(0, 0, (share * world) as i64);
            let (send, recv) = unsafe { (as_slice::<f32>(&body), as_mut_slice::<f32>(&mine)) };
            if world == 2 {
                self.comm.reduce_scatter_block_into(send, recv, &self.mean_of_two);
            } else {
                self.comm.reduce_scatter_block_into(send, recv, SystemOperation::sum());
                let _ = mine.shallow_clone().f_div_scalar_(n)?;
            }
            unsafe {
                self.comm.all_gather_into(as_slice::<f32>(&mine), as_mut_slice::<f32>(&body));
            }
        }
        if numel > share * world {
            let tail = t.narrow(0, (share * world) as i64, (numel - share * world) as i64);
            let sum = Tensor::empty([tail.numel() as i64], (Kind::Float, Device::Cpu));
            unsafe {
                self.comm.all_reduce_into(as_slice::<f32>(&tail), as_mut_slice::<f32>(&sum), SystemOperation::sum());
            }
            let _ = sum.f_div_scalar_out(&tail, n)?;
        }
        Ok(())
    }
}

/// `TRAINER_COMM_DELAY_MS=D`: every gradient bucket's all-reduce takes D ms longer (a
/// sleep: no CPU), to see on one machine what overlap hides on a slow network.
fn comm_delay() -> std::time::Duration {
    let ms = std::env::var("TRAINER_COMM_DELAY_MS").ok().and_then(|v| v.trim().parse::<f64>().ok());
    std::time::Duration::from_secs_f64(ms.unwrap_or(0.0).max(0.0) / 1e3)
}

fn f16_sum(x: mpi::datatype::DynBuffer, y: mpi::datatype::DynBufferMut) {
    use half::f16;
    let (Some(x), Some(y)) = (x.downcast::<u16>(), y.downcast::<u16>()) else {
        panic!("fp16 all-reduce got a non-u16 buffer");
    };
    for (a, b) in x.iter().zip(y.iter_mut()) {
        *b = f16::from_f32(f16::from_bits(*a).to_f32() + f16::from_bits(*b).to_f32()).to_bits();
    }
}

/// Two ranks' f32 values to their mean in one pass: a sum of two is one application of
/// the operation, so halving there gives `(a + b) / 2` to the bit (halving is exact).
fn mean_of_two(x: mpi::datatype::DynBuffer, y: mpi::datatype::DynBufferMut) {
    let (Some(x), Some(y)) = (x.downcast::<f32>(), y.downcast::<f32>()) else {
        panic!("the mean of two got a non-f32 buffer");
    };
    for (a, b) in x.iter().zip(y.iter_mut()) {
        *b = (*a + *b) * 0.5;
    }
}

/// The elements of a contiguous CPU tensor of element type `T`.
pub(super) unsafe fn as_slice<T>(t: &Tensor) -> &[T] {
    debug_assert!(t.is_contiguous() && t.device() == Device::Cpu);
    std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel())
}

#[allow(clippy::mut_from_ref)]
pub(super) unsafe fn as_mut_slice<T>(t: &Tensor) -> &mut [T] {
    debug_assert!(t.is_contiguous() && t.device() == Device::Cpu);
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, t.numel())
}

#[allow(clippy::mut_from_ref)]
pub(super) unsafe fn as_mut_bytes(t: &Tensor) -> &mut [u8] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, t.numel() * t.kind().elt_size_in_bytes())
}
