//! Opening a dataset spec (`<dir>/<name>`): its shards memory-mapped, records handed out as
//! zero-copy slices checked against the bin.

mod dataset;

pub use dataset::{Dataset, Layout, Record, Shard};
