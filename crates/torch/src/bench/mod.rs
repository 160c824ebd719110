//! Benchmarks that need libtorch: the training step (`train`, beside PyTorch's in
//! `benches/train.sh`) and the gradient all-reduce (`allreduce`).

pub mod allreduce;
pub mod train;
