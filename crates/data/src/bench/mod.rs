//! Benchmarks that need no libtorch: the input pipeline (`data`) and the plateau rule
//! (`plateau`). Each returns its figures; `trainer bench data|plateau` prints them.

pub mod data;
pub mod ijb;
pub mod plateau;
