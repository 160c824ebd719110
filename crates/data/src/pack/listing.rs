//! What to pack: every file under SRC's class folders (`walk`), or the rows of a list
//! table (here), plus what was left out and why.

use crate::format::idx::{normalise_path, MAX_CLASSES};
use crate::format::LabelTable;
use crate::sidefile::{self, quote};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// One input file, its path relative to SRC (with `/` separators) and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub rel: String,
    pub label: u32,
    pub gender: i8,
    pub age: i8,
}

#[derive(Debug, Default)]
pub struct Listing {
    pub items: Vec<Item>,
    pub classes: LabelTable,
    /// (path, reason) of bad inputs found before reading (a FIFO, a broken link, a name
    /// that is not UTF-8): skipped, or fatal under `--strict`.
    pub rejected: Vec<(String, String)>,
    /// (path, reason) of entries left out on purpose (hidden, outside any class folder, a
    /// folder link not followed): listed in skipped.tsv, never fatal.
    pub excluded: Vec<(String, String)>,
}

/// A TAB-separated table whose header names its columns: `path` and `label` required,
/// `gender` and `age` optional (-1 or empty = unknown). Paths are relative to SRC.
pub fn from_table(table: &Path) -> Result<Listing> {
    let text = sidefile::read_text(table, sidefile::Limit::folder_table())?;
    parse_table(&text).with_context(|| format!("parsing list table {}", table.display()))
}

pub fn parse_table(text: &str) -> Result<Listing> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) =
        lines.next().context("the table is empty (it needs a header line: path<TAB>label[<TAB>gender][<TAB>age])")?;
    let names: Vec<&str> = header.trim_end_matches('\r').split('\t').map(str::trim).collect();
    check_unique_columns(&names)?;
    let col = |n: &str| names.iter().position(|c| *c == n);
    let (Some(path_col), Some(label_col)) = (col("path"), col("label")) else {
        bail!(
            "line 1: header {} must name TAB-separated columns `path` and `label` (optional `gender`, `age`)",
            quote(header)
        );
    };
    let (gender_col, age_col) = (col("gender"), col("age"));
    let mut listing = Listing::default();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        if fields.len() != names.len() {
            bail!("line {}: {} columns, the header has {}", n + 1, fields.len(), names.len());
        }
        let label = fields[label_col].trim().parse::<u32>().ok().filter(|&l| (l as usize) < MAX_CLASSES);
        let label = label.with_context(|| {
            format!(
                "line {}: label {} is not an integer in 0..{MAX_CLASSES} (at most 2^24 classes)",
                n + 1,
                quote(fields[label_col])
            )
        })?;
        let class = |c: Option<usize>, what: &str| -> Result<i8> {
            match c.map(|c| fields[c].trim()) {
                None | Some("") | Some("-1") => Ok(-1),
                Some(v) => v
                    .parse::<u8>()
                    .ok()
                    .filter(|v| *v <= 127)
                    .map(|v| v as i8)
                    .with_context(|| format!("line {}: {what} {} is neither -1 nor 0..=127", n + 1, quote(v))),
            }
        };
        let (gender, age) = (class(gender_col, "gender")?, class(age_col, "age")?);
        let raw = fields[path_col];
        let Some(rel) = normalise_path(raw) else {
            bail!(
                "line {}: path {} must name a file relative to SRC without `..` (unpack could not recreate it)",
                n + 1,
                quote(raw)
            );
        };
        if let Some(before) = first_line.insert(rel.clone(), n + 1) {
            bail!("lines {before} and {} both name {}: each file may be listed once (remove one; a file cannot have two labels)", n + 1, quote(&rel));
        }
        listing.items.push(Item { rel, label, gender, age });
    }
    let mut ids: Vec<u32> = listing.items.iter().map(|i| i.label).collect();
    ids.sort_unstable();
    ids.dedup();
    listing.classes.entries = ids.into_iter().map(|id| (id, id.to_string())).collect();
    Ok(listing)
}

/// A header naming one column twice is an error: which copy would win is a guess.
pub fn check_unique_columns(names: &[&str]) -> Result<()> {
    for (i, name) in names.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
        if let Some(j) = names[..i].iter().position(|n| n == name) {
            bail!(
                "line 1: column {} is named twice (columns {} and {}); name each column once",
                quote(name),
                j + 1,
                i + 1
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_in_any_order() {
        let l = parse_table("label\tage\tpath\n3\t5\ta/b c.jpg\n1\t\tx.png\n").unwrap();
        assert_eq!(l.items[0], Item { rel: "a/b c.jpg".into(), label: 3, gender: -1, age: 5 });
        assert_eq!(l.items[1].age, -1);
        assert_eq!(l.classes.num_classes(), 4);
        assert!(parse_table("path\tlabel\nx\n").is_err());
        assert!(parse_table("file\tclass\nx\t1\n").is_err());
        assert!(parse_table("path\tlabel\tgender\nx\t1\t2000\n").is_err());
        assert!(parse_table("path\tlabel\n../x\t1\n").is_err());
        assert!(parse_table("path\tlabel\n/etc/x\t1\n").is_err());
    }

    #[test]
    fn table_paths_are_normalised_and_listed_once() {
        let l = parse_table("path\tlabel\n./a//b.jpg\t0\nc/./d.jpg\t1\n").unwrap();
        assert_eq!(l.items.iter().map(|i| i.rel.as_str()).collect::<Vec<_>>(), ["a/b.jpg", "c/d.jpg"]);
        let err = format!("{:#}", parse_table("path\tlabel\nx/y.jpg\t0\nz.jpg\t0\n./x//y.jpg\t1\n").unwrap_err());
        assert!(err.contains("lines 2 and 4") && err.contains("x/y.jpg"), "{err}");
        assert!(parse_table("path\tlabel\nx\t16777215\n").is_ok());
        let err = format!("{:#}", parse_table("path\tlabel\nx\t4294967295\n").unwrap_err());
        assert!(err.contains("line 2") && err.contains("16777216"), "{err}");
    }
}
