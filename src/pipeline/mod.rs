//! The input pipeline: rank's records → sampler → decode workers → batched NCHW f32.

pub mod decode;
pub mod sampler;

pub use sampler::{SamplerKind, SamplerPosition};
