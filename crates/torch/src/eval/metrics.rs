//! What one validation produces: every metric by its log key, the one that picks the best
//! checkpoint, the printable reports and `trainer eval`'s table rows. Pair sets, IJB and
//! datasets each add theirs.

use std::collections::BTreeMap;

use super::table::Row;

#[derive(Default)]
pub struct Metrics {
    pub values: BTreeMap<String, f64>,
    pub primary: Option<f64>,
    pub reports: Vec<String>,
    /// One row per set for `trainer eval`'s table.
    pub rows: Vec<Row>,
}
