//! MXNet's `.idx`: one `key<TAB>byte offset` line per record, written by
//! `MXIndexedRecordIO` as each record starts.

use crate::sidefile::{self, quote, Limit};
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxEntry {
    pub key: u64,
    pub offset: u64,
}

/// Reads an idx file into entries sorted by offset (file order). A line that does not
/// parse, a key listed twice or two keys at one offset is an error naming the line: such
/// an idx cannot be trusted to label records, and the set can still be read without it.
/// The file is read within limits set by the `.rec`'s size (`rec_bytes`): one short line
/// per record at most.
pub fn read_idx(path: &Path, rec_bytes: u64) -> Result<Vec<IdxEntry>> {
    let text = sidefile::read_text(path, Limit::recordio_idx(rec_bytes))?;
    parse_lines(&text).with_context(|| format!("reading idx {}", path.display()))
}

fn parse_lines(text: &str) -> Result<Vec<IdxEntry>> {
    let mut entries = Vec::new();
    let mut key_lines: Vec<(u64, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let text = line.trim_end_matches('\r');
        if text.trim().is_empty() {
            continue;
        }
        let entry = parse_line(text).with_context(|| format!("line {}: {}", i + 1, quote(text)))?;
        key_lines.push((entry.key, i + 1));
        entries.push(entry);
    }
    key_lines.sort_unstable();
    if let Some(w) = key_lines.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("line {}: key {} was already listed on line {}", w[1].1, w[0].0, w[0].1);
    }
    entries.sort_by_key(|e| e.offset);
    if let Some(w) = entries.windows(2).find(|w| w[0].offset == w[1].offset) {
        bail!("keys {} and {} both start at offset {}", w[0].key, w[1].key, w[0].offset);
    }
    Ok(entries)
}

fn parse_line(text: &str) -> Result<IdxEntry> {
    let mut fields = text.split('\t');
    let (Some(key), Some(offset), None) = (fields.next(), fields.next(), fields.next()) else {
        bail!("expected two TAB-separated fields: key and byte offset");
    };
    let key = key.trim().parse::<u64>().context("the key is not a non-negative integer")?;
    let offset = offset.trim().parse::<u64>().context("the offset is not a non-negative integer")?;
    Ok(IdxEntry { key, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_offset_and_rejects_duplicates() {
        let ok = parse_lines("2\t16\n0\t0\n1\t8\n\n").unwrap();
        assert_eq!(ok.iter().map(|e| e.key).collect::<Vec<_>>(), vec![0, 1, 2]);
        let dup_key = parse_lines("0\t0\n0\t8\n").unwrap_err();
        assert!(format!("{dup_key:#}").contains("line 2: key 0 was already listed on line 1"), "{dup_key:#}");
        let dup_offset = parse_lines("0\t0\n1\t0\n").unwrap_err();
        assert!(format!("{dup_offset:#}").contains("both start at offset 0"), "{dup_offset:#}");
        let bad = parse_lines("0\t0\nx\t8\n").unwrap_err();
        assert!(format!("{bad:#}").contains("line 2"), "{bad:#}");
    }
}
