//! Distributed face-recognition training over sharded bin/idx datasets.
//!
//! The modules follow the data: `shards` (on-disk format and reader) → `pack` / `synth`
//! (writing datasets) → `pipeline` (sampling, decoding, batching) → `model` (ResNet,
//! heads, ArcFace) → `optim` and `plateau` (SGD and dlib's learning-rate rule) → `dist`
//! (MPI / NCCL all-reduce) → `train` (the loop, checkpoints, logs) → `eval` (metrics).

pub mod bench;
pub mod cli;
pub mod dist;
pub mod eval;
pub mod model;
pub mod optim;
pub mod pack;
pub mod pipeline;
pub mod plateau;
pub mod rng;
pub mod shards;
pub mod synth;
pub mod train;
