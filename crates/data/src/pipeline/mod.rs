//! The input pipeline: rank's records → sampler → decode workers → batched NCHW f32.
//!
//! `partition` picks the rank's records, `sampler` orders them per epoch, and `loader` runs
//! `codec::Decoder`s on worker threads to fill batches.

pub mod ijb;
pub mod loader;
pub mod partition;
pub mod sampler;
#[cfg(test)]
pub(crate) mod testdata;

pub use loader::{Batch, Loader, LoaderConfig};
pub use partition::{RankView, RecordId, SetInfo, ViewOptions};
pub use sampler::{Sampler, SamplerKind, SamplerPosition};
