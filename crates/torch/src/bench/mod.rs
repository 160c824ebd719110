//! Benchmarks that need libtorch: the training step (`train`, beside PyTorch's in
//! `benches/train.sh`), the gradient all-reduce (`allreduce`) and the ArcFace head at
//! large identity counts, replicated against Partial FC (`head`).

pub mod allreduce;
pub mod head;
pub mod selftest;
pub mod train;

use crate::dist::{self, Comm, CommOptions, LaunchInfo};
use tch::Device;

/// Like `dist::init`, but a single process with `--device cuda` still gets NCCL (a 1-rank
/// communicator), so one GPU measures the NCCL code paths (gradients, Partial FC's
/// all-gather and all-reduces) instead of the single-process backend.
pub fn communicator(device: Device, info: &LaunchInfo, opts: CommOptions) -> anyhow::Result<Box<dyn Comm>> {
    #[cfg(feature = "nccl")]
    if device.is_cuda() && info.world == 1 {
        return Ok(Box::new(dist::nccl::Nccl::new(Box::new(dist::single::Single), device, opts)?));
    }
    dist::init(info, device, opts)
}
