//! The input pipeline: rank's records → sampler → decode workers → batched NCHW u8 (flip
//! flags beside; flipped and normalised on the device).
//!
//! `partition` picks the rank's records, `sampler` orders them per epoch, and `loader` runs
//! `codec::Decoder`s on worker threads to fill batches. `redeal` resumes an epoch in
//! another rank layout.

pub mod batch;
pub mod ijb;
pub mod loader;
pub mod partition;
pub mod redeal;
pub mod sampler;
#[cfg(test)]
pub(crate) mod testdata;

pub use batch::Batch;
pub use loader::{Loader, LoaderConfig};
pub use partition::{RankView, RecordId, SetInfo, ViewOptions};
pub use redeal::{Layout, PoolPosition, Resume};
pub use sampler::{RestEpoch, Sampler, SamplerKind, SamplerPosition};
