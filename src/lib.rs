//! Distributed face-recognition training over sharded bin/idx datasets: the data half.
//!
//! This library is what runs without libtorch: `shards` (on-disk format and reader) →
//! `pack` / `synth` (writing datasets) → `pipeline` (sampling, decoding, batching), plus
//! `plateau` (dlib's learning-rate rule) and the `trainer` command line. The libtorch half
//! — `model` (ResNet, heads, ArcFace) → `optim` → `dist` (MPI / NCCL all-reduce) → `train`
//! (the loop, checkpoints, logs) → `eval` — is the `trainer-torch` binary
//! (`src/trainer_torch.rs`), to which `trainer` hands `train`, `eval` and the training
//! benchmarks. The split keeps libtorch's start-up (about half a second of static
//! initialisers) and its CUDA and MPI libraries out of the data commands.

pub mod bench;
pub mod cli;
pub mod pack;
pub mod pipeline;
pub mod plateau;
pub mod rng;
pub mod shards;
pub mod synth;
