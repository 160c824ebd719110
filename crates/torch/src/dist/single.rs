//! World of one: every collective is the identity.

use super::{Comm, ReduceOp};

pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn backend(&self) -> &'static str {
        "single"
    }
    fn all_reduce_mean(&self, _tensors: &[tch::Tensor]) -> anyhow::Result<()> {
        Ok(())
    }
    fn broadcast(&self, _tensors: &[tch::Tensor], root: usize) -> anyhow::Result<()> {
        check_root(root)
    }
    fn all_reduce_f64(&self, _values: &mut [f64], _op: ReduceOp) -> anyhow::Result<()> {
        Ok(())
    }
    fn all_gather(&self, t: &tch::Tensor) -> anyhow::Result<tch::Tensor> {
        Ok(t.copy())
    }
    fn all_reduce(&self, _t: &tch::Tensor, _op: ReduceOp) -> anyhow::Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>, root: usize) -> anyhow::Result<()> {
        check_root(root)
    }
    fn barrier(&self) -> anyhow::Result<()> {
        Ok(())
    }
    fn abort(&self, reason: &str) -> ! {
        eprintln!("rank 0: {reason}");
        std::process::exit(1)
    }
}

fn check_root(root: usize) -> anyhow::Result<()> {
    anyhow::ensure!(root == 0, "broadcast root {root} does not exist in a world of 1");
    Ok(())
}
