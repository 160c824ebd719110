//! Benchmarks that need libtorch: the training step (`train`, beside PyTorch's in
//! `benches/train.sh`), the gradient all-reduce (`allreduce`) and the ArcFace head at
//! large identity counts, replicated against Partial FC (`head`).

pub mod allreduce;
pub mod head;
pub mod selftest;
pub mod train;
