//! Columns a list table adds to records by their path: gender, age, and the five landmarks
//! `x1 y1 … x5 y5` that `--align` needs. For class folders the paths are those of the files;
//! for a `.rec` source they are the names pack gives its records (`train.rec#123`).

use crate::codec::align::{LandmarkColumns, Landmarks};
use crate::sidefile::{self, quote, Limit};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// One row's additions; a landmark problem is kept as the reason to skip the record.
#[derive(Clone, Debug, PartialEq)]
pub struct Extra {
    pub gender: i8,
    pub age: i8,
    pub landmarks: Option<Result<Landmarks, String>>,
}

#[derive(Debug, Default)]
pub struct Extras {
    by_path: HashMap<String, Extra>,
    /// Whether the table has landmark columns at all.
    pub has_landmarks: bool,
    /// The line of each path, for rows that name nothing.
    lines: HashMap<String, usize>,
}

impl Extras {
    /// Reads the table within `limit` (`sidefile::Limit::recordio_table` or `folder_table`).
    pub fn read(table: &Path, limit: Limit) -> Result<Extras> {
        let text = sidefile::read_text(table, limit)?;
        Extras::parse(&text).with_context(|| format!("parsing list table {}", table.display()))
    }

    /// A TAB-separated table with a header naming `path` and any of `gender`, `age` (-1 or
    /// empty = unknown) and the landmark columns; other columns are ignored.
    pub fn parse(text: &str) -> Result<Extras> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().context("the table is empty (it needs a header line naming `path`)")?;
        let columns: Vec<&str> = header.trim_end_matches('\r').split('\t').map(str::trim).collect();
        super::listing::check_unique_columns(&columns)?;
        let names: HashMap<String, usize> = columns.iter().enumerate().map(|(i, n)| (n.to_string(), i)).collect();
        let Some(&path_col) = names.get("path") else {
            bail!("line 1: header {} names no `path` column", quote(header))
        };
        let (gender_col, age_col) = (names.get("gender").copied(), names.get("age").copied());
        let landmark_cols = LandmarkColumns::from_header(&names).context("line 1")?;
        let mut extras =
            Extras { by_path: HashMap::new(), has_landmarks: landmark_cols.is_some(), lines: HashMap::new() };
        for (n, line) in lines {
            let fields: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
            let path = fields
                .get(path_col)
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .with_context(|| format!("line {}: no path", n + 1))?;
            let gender = class_cell(&fields, gender_col).with_context(|| format!("line {}: gender", n + 1))?;
            let age = class_cell(&fields, age_col).with_context(|| format!("line {}: age", n + 1))?;
            let landmarks = landmark_cols.map(|c| c.parse(&fields).map_err(|e| format!("{e:#}")));
            if extras.by_path.contains_key(path) {
                bail!("line {}: {} is listed twice; list each path once", n + 1, quote(path));
            }
            extras.lines.insert(path.to_string(), n + 1);
            extras.by_path.insert(path.to_string(), Extra { gender, age, landmarks });
        }
        Ok(extras)
    }

    /// The first row (by line) whose path is not among `seen`: a row naming a record or
    /// file that does not exist.
    pub fn first_unused(&self, seen: &std::collections::HashSet<String>) -> Option<(usize, &str)> {
        self.lines.iter().filter(|(p, _)| !seen.contains(*p)).map(|(p, &n)| (n, p.as_str())).min()
    }

    pub fn get(&self, path: &str) -> Option<&Extra> {
        self.by_path.get(path)
    }

    /// The landmarks of `path`, or why the record cannot be aligned.
    pub fn landmarks(&self, path: &str) -> Result<Landmarks, String> {
        match self.get(path).map(|e| &e.landmarks) {
            Some(Some(Ok(lm))) => Ok(*lm),
            Some(Some(Err(e))) => Err(format!("bad landmarks: {e}")),
            Some(None) | None => Err(NO_LANDMARKS.into()),
        }
    }
}

/// The skip reason of an input the `--align` table gives no landmarks: with a table that
/// lists part of a set, that is most inputs, so they get one summary warning, not one each.
pub const NO_LANDMARKS: &str = "no landmarks in the list table (--align needs x1 y1 … x5 y5)";

/// Whether a skip is one of those the summary reports (`warn_unlisted`) instead.
pub fn is_unlisted(reason: &str) -> bool {
    reason == NO_LANDMARKS
}

/// One warning for every input skipped for want of landmarks.
pub fn warn_unlisted(skipped: &[(String, String)], name: &str, progress: &indicatif::ProgressBar) {
    let mut unlisted = skipped.iter().filter(|(_, r)| is_unlisted(r)).map(|(p, _)| p);
    if let Some(first) = unlisted.next() {
        let n = 1 + unlisted.count();
        progress.suspend(|| {
            tracing::warn!(
                "skipped {n} inputs the list table gives no landmarks (first: {first}): --align packs only the \
                 listed faces; all are named in {}",
                crate::format::idx::skipped_file(name)
            )
        });
    }
}

/// A gender or age cell: -1 or empty for unknown, else a class index 0..=127.
fn class_cell(fields: &[&str], col: Option<usize>) -> Result<i8> {
    let text = col.and_then(|c| fields.get(c)).map_or("", |t| t.trim());
    if text.is_empty() || text == "-1" {
        return Ok(-1);
    }
    match text.parse::<i8>() {
        Ok(v) if v >= 0 => Ok(v),
        _ => bail!("{} is neither -1 nor 0..=127", quote(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_by_path_with_landmarks_and_classes() {
        let text = "path\tgender\tx1\ty1\tx2\ty2\tx3\ty3\tx4\ty4\tx5\ty5\tage\n\
                    a.rec#1\t1\t30\t40\t70\t40\t50\t60\t35\t80\t65\t80\t3\r\n\
                    a.rec#2\t\t30\t40\t70\t40\t\t60\t35\t80\t65\t80\t-1\n";
        let x = Extras::parse(text).unwrap();
        assert!(x.has_landmarks);
        let one = x.get("a.rec#1").unwrap();
        assert_eq!((one.gender, one.age), (1, 3));
        assert_eq!(x.landmarks("a.rec#1").unwrap()[4], [65.0, 80.0]);
        assert!(x.landmarks("a.rec#2").unwrap_err().contains("x3"), "{:?}", x.landmarks("a.rec#2"));
        assert!(x.landmarks("a.rec#3").unwrap_err().contains("no landmarks"));
        assert_eq!(x.get("a.rec#2").unwrap().gender, -1);
        assert!(Extras::parse("path\tgender\nx\t200\n").is_err());
        assert!(Extras::parse("file\tgender\nx\t1\n").is_err());
        assert!(Extras::parse("path\tx1\ty1\nx\t1\t2\n").unwrap_err().to_string().contains("line 1"));
        assert!(!Extras::parse("path\tage\nx\t2\n").unwrap().has_landmarks);
    }
}
