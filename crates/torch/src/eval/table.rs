//! The table `trainer eval` prints: one row per validation set, one column per metric any
//! set has (in the order they first appear), `-` where a set has none.

/// One set's row: its name and (column, formatted value) cells.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub set: String,
    pub cells: Vec<(String, String)>,
}

impl Row {
    pub fn new(set: &str) -> Row {
        Row { set: set.to_string(), cells: Vec::new() }
    }

    pub fn cell(mut self, column: &str, value: impl std::fmt::Display) -> Row {
        self.cells.push((column.to_string(), value.to_string()));
        self
    }
}

/// Left-aligned, space-padded columns; rows of the same set are merged into one; an empty
/// string for no rows.
pub fn render(rows: &[Row]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut merged: Vec<Row> = Vec::new();
    for r in rows {
        match merged.iter_mut().find(|m| m.set == r.set) {
            Some(m) => m.cells.extend(r.cells.iter().cloned()),
            None => merged.push(r.clone()),
        }
    }
    let rows = &merged;
    let mut columns: Vec<&str> = Vec::new();
    for (c, _) in rows.iter().flat_map(|r| &r.cells) {
        if !columns.contains(&c.as_str()) {
            columns.push(c);
        }
    }
    let mut lines: Vec<Vec<&str>> = vec![std::iter::once("set").chain(columns.iter().copied()).collect()];
    for r in rows {
        let value = |c: &str| r.cells.iter().find(|(k, _)| k == c).map_or("-", |(_, v)| v.as_str());
        lines.push(std::iter::once(r.set.as_str()).chain(columns.iter().map(|c| value(c))).collect());
    }
    let widths: Vec<usize> =
        (0..=columns.len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_set_with_the_union_of_columns() {
        let rows = [
            Row::new("lfw").cell("verification", "0.9950 ± 0.0030").cell("pairs", 6000),
            Row::new("faces").cell("pairs", 20),
            Row::new("faces").cell("gender", "0.91"),
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("set    verification") && lines[0].ends_with("gender"), "{text}");
        assert!(lines[1].starts_with("lfw    0.9950 ± 0.0030  6000"), "{text}");
        assert!(lines[2].starts_with("faces  -") && lines[2].ends_with("0.91"), "{text}");
        assert_eq!(render(&[]), "");
    }
}
