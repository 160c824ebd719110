//! The list table's landmark columns `x1 y1 … x5 y5`, read from one TSV row.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use super::{Landmarks, LANDMARK_NAMES};

/// Header names of the landmark columns, in the order x, y of each point of [`Landmarks`].
pub const LANDMARK_COLUMNS: [&str; 10] = ["x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5"];

/// Where the ten landmark columns sit in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LandmarkColumns {
    index: [usize; 10],
}

impl LandmarkColumns {
    /// Looks the columns up in a header map (name → 0-based column). `None` when the table has
    /// none of them (no alignment possible); an error when it has only some, which is a typo.
    pub fn from_header(header: &HashMap<String, usize>) -> Result<Option<Self>> {
        let found = LANDMARK_COLUMNS.map(|name| header.get(name).copied());
        if found.iter().all(Option::is_none) {
            return Ok(None);
        }
        let missing: Vec<&str> =
            LANDMARK_COLUMNS.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(n, _)| *n).collect();
        if !missing.is_empty() {
            bail!(
                "the header has some landmark columns but lacks {} (all of {} are needed)",
                missing.join(", "),
                LANDMARK_COLUMNS.join(" ")
            );
        }
        Ok(Some(Self { index: found.map(|f| f.unwrap_or_default()) }))
    }

    /// Reads the five points of one row (already split on tabs).
    pub fn parse(&self, row: &[&str]) -> Result<Landmarks> {
        let mut lm = [[0.0; 2]; 5];
        for (k, (&col, name)) in self.index.iter().zip(LANDMARK_COLUMNS).enumerate() {
            let point = LANDMARK_NAMES[k / 2];
            lm[k / 2][k % 2] = parse_cell(row, col, name).with_context(|| format!("{point} landmark"))?;
        }
        Ok(lm)
    }
}

/// One coordinate: present, a number, and finite.
fn parse_cell(row: &[&str], col: usize, name: &str) -> Result<f64> {
    let Some(raw) = row.get(col) else {
        bail!("column {name} (field {}) is missing: the row has only {} fields", col + 1, row.len());
    };
    let text = raw.trim();
    if text.is_empty() {
        bail!("column {name} is empty (missing landmark)");
    }
    let value: f64 = text.parse().map_err(|_| anyhow::anyhow!("column {name}: {text:?} is not a number"))?;
    if !value.is_finite() {
        bail!("column {name}: {text:?} is not finite (missing landmark?)");
    }
    Ok(value)
}
