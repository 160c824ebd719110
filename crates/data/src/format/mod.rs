//! The on-disk dataset format, as `shards/FORMAT.md` specifies it: idx lines and headers
//! (`idx`), the parsed index columns (`index`), and the sidecar files (`labels`,
//! `manifest`). Reading shards is `reader`'s job; writing them is `pack`'s.

pub mod idx;
pub mod index;
pub mod labels;
pub mod manifest;

pub use idx::Version;
pub use index::Index;
pub use labels::LabelTable;
pub use manifest::Manifest;
