//! trainer's libtorch half, in the order a batch meets it: `model` (ResNet, heads, ArcFace)
//! → `optim` (SGD with state we own) → `dist` (single / MPI / NCCL collectives) → `train`
//! (configuration, session, loop, checkpoints, logs) → `eval` (validation, `trainer
//! eval` and `trainer embed`) → `export` (TorchScript) and `arcface_torch` (its `torch.save`
//! backbone files in and out). `bench` times the training step and the all-reduce; `device` resolves
//! `--device`. The data side (shards, pipeline, plateau rule, metrics) is `trainer_data`.

pub mod amp;
pub mod bench;
pub mod cli;
pub mod config;
pub mod device;
pub mod dist;
pub mod errors;
pub mod eval;
pub mod host_sync;
pub mod model;
pub mod optim;
#[cfg(test)]
mod test_tools;
pub mod train;
pub mod trained;
