//! The input pipeline: rank's records → sampler → decode workers → batched NCHW f32.
