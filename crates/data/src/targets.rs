//! What each record teaches each head: the FR head learns the identity in the `label`
//! column; the Gender and Age heads learn the `gender` / `age` column — or, as the seed's
//! Gender and Age bins were written, the `label` column, when a dataset that serves only
//! that task has no gender (age) filled in. Datasets can be given per task
//! (`fr=shards/ms1m gender=shards/g`), and any dataset can name its column (`...@label`).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A task head of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum Head {
    #[serde(rename = "FR")]
    #[value(name = "FR", alias = "fr")]
    Fr,
    #[value(name = "Gender", alias = "gender")]
    Gender,
    #[value(name = "Age", alias = "age")]
    Age,
}

impl Head {
    pub const ALL: [Head; 3] = [Head::Fr, Head::Gender, Head::Age];

    /// As in file names and log keys: `FR_loss.txt`, `loss_Gender`.
    pub fn name(self) -> &'static str {
        match self {
            Head::Fr => "FR",
            Head::Gender => "Gender",
            Head::Age => "Age",
        }
    }

    /// As in dataset prefixes and metric keys: `fr=...`, `valid_gender_acc`.
    pub fn key(self) -> &'static str {
        match self {
            Head::Fr => "fr",
            Head::Gender => "gender",
            Head::Age => "age",
        }
    }

    /// The column a head reads when nothing says otherwise.
    pub fn own_column(self) -> Column {
        match self {
            Head::Fr => Column::Label,
            Head::Gender => Column::Gender,
            Head::Age => Column::Age,
        }
    }

    fn parse_key(s: &str) -> Option<Head> {
        Head::ALL.into_iter().find(|h| h.key().eq_ignore_ascii_case(s))
    }
}

/// A class column of the index (FORMAT.md: `label`, `gender`, `age`; -1 = unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Column {
    Label,
    Gender,
    Age,
}

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::Label => "label",
            Column::Gender => "gender",
            Column::Age => "age",
        }
    }
}

impl FromStr for Column {
    type Err = String;
    fn from_str(s: &str) -> Result<Column, String> {
        match s.to_ascii_lowercase().as_str() {
            "label" => Ok(Column::Label),
            "gender" => Ok(Column::Gender),
            "age" => Ok(Column::Age),
            _ => Err(format!("{s:?} is not a column: label, gender or age")),
        }
    }
}

/// A dataset as the user names it: `[fr=|gender=|age=]DIR/NAME[@label|@gender|@age]`.
/// Without a task prefix it serves every task of the run (each record carries the
/// columns its tasks need); `@column` says which column holds its class for a Gender or
/// Age task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SetSpec {
    pub head: Option<Head>,
    pub path: PathBuf,
    pub column: Option<Column>,
}

impl FromStr for SetSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<SetSpec, String> {
        let (head, rest) = match s.split_once('=') {
            Some((prefix, rest)) if !prefix.contains('/') => {
                let head = Head::parse_key(prefix)
                    .ok_or_else(|| format!("{s:?}: the task prefix {prefix:?} is not fr, gender or age"))?;
                (Some(head), rest)
            }
            _ => (None, s),
        };
        let (path, column) = match rest.rsplit_once('@') {
            Some((path, col)) if !col.contains('/') => {
                (path, Some(col.parse::<Column>().map_err(|e| format!("{s:?}: {e}"))?))
            }
            _ => (rest, None),
        };
        if path.is_empty() {
            return Err(format!("{s:?} names no dataset"));
        }
        Ok(SetSpec { head, path: PathBuf::from(path), column })
    }
}

impl fmt::Display for SetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(h) = self.head {
            write!(f, "{}=", h.key())?;
        }
        write!(f, "{}", self.path.display())?;
        if let Some(c) = self.column {
            write!(f, "@{}", c.name())?;
        }
        Ok(())
    }
}

impl TryFrom<String> for SetSpec {
    type Error = String;
    fn try_from(s: String) -> Result<SetSpec, String> {
        s.parse()
    }
}

impl From<SetSpec> for String {
    fn from(s: SetSpec) -> String {
        s.to_string()
    }
}

impl SetSpec {
    /// The heads this dataset teaches in a run training `run_heads`.
    pub fn serves(&self, run_heads: &[Head]) -> Vec<Head> {
        match self.head {
            Some(h) => vec![h],
            None => run_heads.to_vec(),
        }
    }

    /// The heads of a run that `specs` leave without data, as an error naming them; and a
    /// prefix for a head the run does not train, too.
    pub fn check_coverage(specs: &[SetSpec], run_heads: &[Head], what: &str) -> Result<()> {
        for spec in specs {
            if let Some(h) = spec.head.filter(|h| !run_heads.contains(h)) {
                bail!("{what} {spec}: this run does not train {} (it trains {})", h.name(), names(run_heads));
            }
        }
        for &h in run_heads {
            if !specs.iter().any(|s| s.serves(run_heads).contains(&h)) {
                bail!("no {what} for {}: give {}=DIR/NAME (or a dataset without a task prefix)", h.name(), h.key());
            }
        }
        Ok(())
    }
}

fn names(heads: &[Head]) -> String {
    heads.iter().map(|h| h.name()).collect::<Vec<_>>().join(", ")
}

/// How many records of a dataset have each column known, and each column's largest value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnStats {
    pub records: usize,
    pub known: [usize; 3],
    pub max: [i64; 3],
}

impl ColumnStats {
    pub fn of(&self, c: Column) -> (usize, i64) {
        (self.known[c as usize], self.max[c as usize])
    }

    pub fn add(&mut self, c: Column, v: i64) {
        if v >= 0 {
            self.known[c as usize] += 1;
            self.max[c as usize] = self.max[c as usize].max(v);
        }
    }
}

/// Which column a dataset's records give `head` its class from: the one the user named;
/// else the head's own column when any record has it; else, for a dataset that serves
/// only this Gender or Age head, the label column (the seed's bins); else the own column
/// (all unknown, which the caller reports).
pub fn resolve_column(spec: &SetSpec, head: Head, serves_only_this: bool, stats: &ColumnStats) -> Column {
    if head == Head::Fr {
        return Column::Label;
    }
    if let Some(c) = spec.column {
        return c;
    }
    let own = head.own_column();
    if stats.of(own).0 > 0 || !serves_only_this {
        return own;
    }
    Column::Label
}

/// A Gender class must be below the head's class count; the first record that is not
/// makes an error naming the dataset, the column and that record. (Ages above the last
/// bucket clip to it, as the seed's did; identities size the FR head.)
pub fn check_classes(
    dataset: &str,
    head: Head,
    column: Column,
    classes: usize,
    stats: &ColumnStats,
    first_bad: impl Fn() -> Option<String>,
) -> Result<()> {
    let (known, max) = stats.of(column);
    if head != Head::Gender || known == 0 || max < classes as i64 {
        return Ok(());
    }
    let record = first_bad().unwrap_or_else(|| "a record".into());
    bail!(
        "{dataset}: {} reads its class from the `{}` column, but {record} has {max}, and {} has {classes} classes \
         (name the dataset's column with @label/@gender/@age, e.g. {}=DIR/NAME@gender)",
        head.name(),
        column.name(),
        head.name(),
        head.key()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for (text, head, path, column) in [
            ("shards/faces", None, "shards/faces", None),
            ("gender=shards/g", Some(Head::Gender), "shards/g", None),
            ("FR=/data/ms1m@label", Some(Head::Fr), "/data/ms1m", Some(Column::Label)),
            ("age=a/b.idx@age", Some(Head::Age), "a/b.idx", Some(Column::Age)),
            ("x/name=with=equals", None, "x/name=with=equals", None),
            ("dir@v2/name", None, "dir@v2/name", None),
        ] {
            let s: SetSpec = text.parse().unwrap();
            assert_eq!((s.head, s.path.to_str().unwrap(), s.column), (head, path, column), "{text}");
            assert_eq!(s.to_string().parse::<SetSpec>().unwrap(), s);
        }
        assert!("face=shards/x".parse::<SetSpec>().unwrap_err().contains("not fr, gender or age"));
        assert!("gender=shards/x@colour".parse::<SetSpec>().unwrap_err().contains("not a column"));
        assert!("gender=".parse::<SetSpec>().is_err());
    }

    #[test]
    fn the_label_column_stands_in_only_for_a_single_task_set_without_the_column() {
        let spec: SetSpec = "gender=g".parse().unwrap();
        let mut none = ColumnStats::default();
        none.add(Column::Label, 1);
        let mut filled = none.clone();
        filled.add(Column::Gender, 0);
        assert_eq!(resolve_column(&spec, Head::Gender, true, &none), Column::Label);
        assert_eq!(resolve_column(&spec, Head::Gender, true, &filled), Column::Gender);
        assert_eq!(resolve_column(&spec, Head::Gender, false, &none), Column::Gender, "a Multi set keeps its columns");
        let named: SetSpec = "gender=g@age".parse().unwrap();
        assert_eq!(resolve_column(&named, Head::Gender, true, &filled), Column::Age);
        assert_eq!(resolve_column(&spec, Head::Fr, true, &filled), Column::Label);
    }

    #[test]
    fn coverage_names_the_missing_task_and_the_stray_prefix() {
        let specs: Vec<SetSpec> = ["fr=a", "gender=b"].iter().map(|s| s.parse().unwrap()).collect();
        let all = [Head::Fr, Head::Gender, Head::Age];
        assert!(SetSpec::check_coverage(&specs, &all, "training set")
            .unwrap_err()
            .to_string()
            .contains("no training set for Age"));
        assert!(SetSpec::check_coverage(&specs, &[Head::Fr], "training set")
            .unwrap_err()
            .to_string()
            .contains("does not train Gender"));
        assert!(SetSpec::check_coverage(&specs, &[Head::Fr, Head::Gender], "training set").is_ok());
    }
}
