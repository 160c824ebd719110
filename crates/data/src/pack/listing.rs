//! What to pack: every file under SRC's class folders (labels in sorted folder order), or
//! the rows of a list table.

use crate::format::LabelTable;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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
    /// (path, reason) of inputs rejected before reading, e.g. a name that is not UTF-8.
    pub rejected: Vec<(String, String)>,
    /// Files directly in SRC, outside any class folder, which are not packed.
    pub loose_files: usize,
}

/// Class folders: label i is the i-th subfolder of SRC in byte order of its name; every
/// file below it (recursively, dot-files excluded) is one record.
pub fn from_folders(src: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    for entry in sorted_entries(src)? {
        let name = entry.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if !entry.is_dir() {
            listing.loose_files += 1;
            continue;
        }
        let label = listing.classes.entries.len() as u32;
        let Some(class) = entry.file_name().and_then(|n| n.to_str()) else {
            listing.rejected.push((name, "class folder name is not UTF-8".into()));
            continue;
        };
        listing.classes.entries.push((label, class.to_string()));
        walk(&entry, class, label, &mut listing)?;
    }
    Ok(listing)
}

fn walk(dir: &Path, rel: &str, label: u32, listing: &mut Listing) -> Result<()> {
    for entry in sorted_entries(dir)? {
        let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
            let lossy = entry.file_name().unwrap_or_default().to_string_lossy();
            listing.rejected.push((format!("{rel}/{lossy}"), "file name is not UTF-8".into()));
            continue;
        };
        let child = format!("{rel}/{name}");
        if entry.is_dir() {
            walk(&entry, &child, label, listing)?;
        } else {
            listing.items.push(Item { rel: child, label, gender: -1, age: -1 });
        }
    }
    Ok(())
}

/// Entries of `dir` (dot-files excluded) sorted by name bytes, so labels and order are
/// the same on every file system.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if !entry.file_name().as_encoded_bytes().starts_with(b".") {
            out.push(entry.path());
        }
    }
    out.sort_by(|a, b| a.file_name().map(|n| n.as_encoded_bytes()).cmp(&b.file_name().map(|n| n.as_encoded_bytes())));
    Ok(out)
}

/// A TAB-separated table whose header names its columns: `path` and `label` required,
/// `gender` and `age` optional (-1 or empty = unknown). Paths are relative to SRC.
pub fn from_table(table: &Path) -> Result<Listing> {
    let text = std::fs::read_to_string(table).with_context(|| format!("reading list table {}", table.display()))?;
    parse_table(&text).with_context(|| format!("parsing list table {}", table.display()))
}

pub fn parse_table(text: &str) -> Result<Listing> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().context("the table is empty (it needs a header line: path<TAB>label[<TAB>gender][<TAB>age])")?;
    let names: Vec<&str> = header.split('\t').map(str::trim).collect();
    let col = |n: &str| names.iter().position(|c| *c == n);
    let (Some(path_col), Some(label_col)) = (col("path"), col("label")) else {
        bail!("line 1: header {header:?} must name TAB-separated columns `path` and `label` (optional `gender`, `age`)");
    };
    let (gender_col, age_col) = (col("gender"), col("age"));
    let mut listing = Listing::default();
    for (n, line) in lines {
        let fields: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        if fields.len() != names.len() {
            bail!("line {}: {} columns, the header has {}", n + 1, fields.len(), names.len());
        }
        let label = fields[label_col].trim().parse::<u32>().map_err(|_| anyhow::anyhow!("line {}: label {:?} is not a non-negative integer", n + 1, fields[label_col]))?;
        let class = |c: Option<usize>, what: &str| -> Result<i8> {
            match c.map(|c| fields[c].trim()) {
                None | Some("") | Some("-1") => Ok(-1),
                Some(v) => v.parse::<u8>().ok().filter(|v| *v <= 127).map(|v| v as i8).with_context(|| format!("line {}: {what} {v:?} is neither -1 nor 0..=127", n + 1)),
            }
        };
        let (gender, age) = (class(gender_col, "gender")?, class(age_col, "age")?);
        let rel = fields[path_col].to_string();
        if !crate::format::idx::is_contained_path(&rel) {
            bail!("line {}: path {rel:?} must be relative to SRC without `..` (unpack could not recreate it)", n + 1);
        }
        listing.items.push(Item { rel, label, gender, age });
    }
    let mut ids: Vec<u32> = listing.items.iter().map(|i| i.label).collect();
    ids.sort_unstable();
    ids.dedup();
    listing.classes.entries = ids.into_iter().map(|id| (id, id.to_string())).collect();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_get_sorted_labels_and_recursive_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b_cls/2.jpg", "b_cls/1.jpg", "a cls/sub/x (1).jpg", "a cls/.hidden", "loose.jpg"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let l = from_folders(dir.path()).unwrap();
        let got: Vec<(&str, u32)> = l.items.iter().map(|i| (i.rel.as_str(), i.label)).collect();
        assert_eq!(got, [("a cls/sub/x (1).jpg", 0), ("b_cls/1.jpg", 1), ("b_cls/2.jpg", 1)]);
        assert_eq!(l.classes.entries, [(0, "a cls".to_string()), (1, "b_cls".to_string())]);
        assert_eq!(l.loose_files, 1);
    }

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
}
