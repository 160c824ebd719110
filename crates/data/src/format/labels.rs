//! `<name>.labels.tsv`: which class name each label id stands for.

use super::idx::{escape_path, unescape_path};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub const LABELS_HEADER: &str = "label\tname";

/// Label id → class name; ids need not be dense, `num_classes` is max id + 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelTable {
    pub entries: Vec<(u32, String)>,
}

impl LabelTable {
    pub fn load(path: &Path) -> Result<LabelTable> {
        let text = crate::sidefile::read_text(path, crate::sidefile::Limit::label_table())?;
        LabelTable::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<LabelTable> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, h)) if h == LABELS_HEADER => {}
            other => bail!(
                "line 1: expected header {LABELS_HEADER:?}, found {}",
                crate::sidefile::quote(other.map(|o| o.1).unwrap_or(""))
            ),
        }
        let mut entries = Vec::new();
        for (n, line) in lines.filter(|(_, l)| !l.is_empty()) {
            let parsed =
                line.split_once('\t').and_then(|(id, name)| Some((id.parse::<u32>().ok()?, unescape_path(name).ok()?)));
            match parsed {
                Some((id, name)) => entries.push((id, name.into_owned())),
                None => bail!("line {}: expected `<label id>\\t<name>`, found {}", n + 1, crate::sidefile::quote(line)),
            }
        }
        Ok(LabelTable { entries })
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("{LABELS_HEADER}\n");
        for (id, name) in &self.entries {
            s.push_str(&format!("{id}\t{}\n", escape_path(name)));
        }
        s
    }

    pub fn num_classes(&self) -> usize {
        self.entries.iter().map(|(id, _)| *id as usize + 1).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_counts_classes() {
        let t = LabelTable { entries: vec![(0, "0_male".into()), (4, "tab\tname é".into())] };
        let back = LabelTable::parse(&t.to_text()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.num_classes(), 5);
        assert!(LabelTable::parse("id\tname\n").is_err());
        assert!(LabelTable::parse("label\tname\nx\ty\n").is_err());
    }
}
