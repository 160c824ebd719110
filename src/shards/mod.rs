//! The sharded bin/idx dataset format (see `shards/FORMAT.md`) and its memory-mapped reader.

pub mod dataset;
pub mod format;
pub mod index;
pub mod inspect;
pub mod labels;
pub mod manifest;
pub mod unpack;
pub mod verify;

pub use dataset::{Dataset, Layout, Record, Shard};
pub use format::Version;
pub use index::Index;
pub use labels::LabelTable;
pub use manifest::Manifest;
