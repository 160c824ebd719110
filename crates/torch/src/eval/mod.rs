//! Metrics on a model: validation during training and `trainer eval` (`validate`), with
//! insightface's verification on pair sets (`pairs`), IJB-B/IJB-C 1:1 (`ijb`), what a
//! validation produces (`metrics`) and `trainer eval`'s table (`table`). The commands
//! that read a trained run are in `trained/`.

pub mod ijb;
pub mod metrics;
pub mod pairs;
pub mod table;
pub mod validate;
