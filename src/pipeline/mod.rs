//! The input pipeline: rank's records → sampler → decode workers → batched NCHW f32.
//!
//! `partition` picks the rank's records, `sampler` orders them per epoch, `decode` turns
//! one payload into a normalised slot, and `loader` runs it all on worker threads.

pub mod decode;
pub mod loader;
pub mod partition;
pub mod sampler;
#[cfg(test)]
pub(crate) mod testdata;

pub use loader::{Batch, Loader, LoaderConfig};
pub use partition::{RankView, RecordId};
pub use sampler::{Sampler, SamplerKind, SamplerPosition};
