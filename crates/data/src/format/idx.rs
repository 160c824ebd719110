//! The text side of the format (spec: `shards/FORMAT.md`): the idx header, one record line,
//! path escaping, and the names of a dataset's files.

use std::borrow::Cow;

/// First token after `#` on a versioned idx's header line.
pub const MAGIC: &str = "trainer-shard";
/// The newest version this reader understands and the one the writer produces.
pub const VERSION: u32 = 1;
/// v1's columns in order; a v1 reader accepts more columns after these and ignores them.
pub const V1_COLUMNS: [&str; 7] = ["path", "label", "start", "end", "gender", "age", "crc32c"];
/// Label ids are below this (2^24 classes): `pack` refuses larger ones, `verify` reports
/// them, and training refuses a dataset declaring more classes (its ArcFace matrix alone
/// would be 32 GiB at 512 dimensions).
pub const MAX_CLASSES: usize = 1 << 24;

/// Which dialect an idx file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The seed's headerless `path<TAB>label<TAB>start<TAB>end`, paths unescaped.
    Legacy,
    /// `# trainer-shard v1 columns=...` then seven columns, paths escaped, crc32c.
    V1,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::Legacy => "legacy (seed, 4 columns, no checksum)",
            Version::V1 => "trainer-shard v1",
        }
    }
}

/// The header line a v1 writer emits (without the newline).
pub fn header_line() -> String {
    format!("# {MAGIC} v{VERSION} columns={}", V1_COLUMNS.join(","))
}

/// Parses a line that starts with `#`; a message says what is wrong otherwise.
pub fn parse_header(line: &str) -> Result<Version, String> {
    let mut tokens = line.trim_start_matches('#').split_whitespace();
    if tokens.next() != Some(MAGIC) {
        return Err(format!("header {line:?} does not start with `# {MAGIC}`"));
    }
    let version = tokens
        .next()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| format!("header {line:?} has no version token like `v1`"))?;
    if version != VERSION {
        return Err(format!(
            "format version v{version} is not supported by this reader (it reads v{VERSION}); upgrade trainer"
        ));
    }
    let columns = tokens
        .find_map(|t| t.strip_prefix("columns="))
        .ok_or_else(|| format!("header {line:?} has no `columns=` token"))?;
    let columns: Vec<&str> = columns.split(',').collect();
    if columns.len() < V1_COLUMNS.len() || columns[..V1_COLUMNS.len()] != V1_COLUMNS {
        return Err(format!("header columns {columns:?} do not begin with v1's {V1_COLUMNS:?}"));
    }
    Ok(Version::V1)
}

/// One parsed line, borrowing the (still escaped, for v1) path from the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    pub path: Cow<'a, str>,
    pub label: u32,
    pub start: u64,
    pub end: u64,
    pub gender: i8,
    pub age: i8,
    pub crc: Option<u32>,
}

/// Parses one record line (no trailing newline) of the given dialect.
pub fn parse_line(line: &str, version: Version) -> Result<Fields<'_>, String> {
    match version {
        Version::V1 => parse_v1(line),
        Version::Legacy => parse_legacy(line),
    }
}

fn parse_v1(line: &str) -> Result<Fields<'_>, String> {
    let mut cols = Cursor { line, pos: 0 };
    let path = unescape_path(cols.next("path")?)?;
    let label = parse_u64(cols.next("label")?, "label")?;
    let start = parse_u64(cols.next("start")?, "start")?;
    let end = parse_u64(cols.next("end")?, "end")?;
    let gender = parse_class(cols.next("gender")?, "gender")?;
    let age = parse_class(cols.next("age")?, "age")?;
    let crc = parse_crc(cols.next("crc32c")?)?;
    finish(path, label, start, end, gender, age, Some(crc))
}

/// TAB-separated fields by a plain byte scan (the hot loop of index loading).
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self, name: &str) -> Result<&'a str, String> {
        let bytes = self.line.as_bytes();
        if self.pos > bytes.len() {
            return Err(format!("missing column `{name}`"));
        }
        let start = self.pos;
        let end = bytes[start..].iter().position(|&b| b == b'\t').map_or(bytes.len(), |n| start + n);
        self.pos = end + 1;
        Ok(&self.line[start..end])
    }
}

/// A record path that stays inside whatever folder it is joined to: relative, no `..`,
/// no NUL. `pack` stores only such paths and `unpack` writes only such paths.
pub fn is_contained_path(rel: &str) -> bool {
    use std::path::{Component, Path};
    !rel.is_empty()
        && !rel.contains('\0')
        && Path::new(rel).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// `path` with `.` components and repeated `/` removed (`./a//b.jpg` → `a/b.jpg`), or
/// None when it is not a contained path (see [`is_contained_path`]) or names nothing.
pub fn normalise_path(path: &str) -> Option<String> {
    use std::path::{Component, Path};
    if !is_contained_path(path) {
        return None;
    }
    let parts: Vec<&str> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => p.to_str(),
            _ => None,
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The seed's paths are raw and may in principle hold TABs, so split from the right.
fn parse_legacy(line: &str) -> Result<Fields<'_>, String> {
    let mut cols = line.rsplitn(4, '\t');
    let end = cols.next().unwrap_or("");
    let (start, label, path) = match (cols.next(), cols.next(), cols.next()) {
        (Some(s), Some(l), Some(p)) => (s, l, p),
        _ => return Err("expected 4 TAB-separated columns `path label start end` (seed format, no header)".into()),
    };
    if path.is_empty() {
        return Err("empty path".into());
    }
    let label = parse_u64(label, "label")?;
    let start = parse_u64(start, "start")?;
    let end = parse_u64(end, "end")?;
    finish(Cow::Borrowed(path), label, start, end, -1, -1, None)
}

fn finish(
    path: Cow<'_, str>,
    label: u64,
    start: u64,
    end: u64,
    gender: i8,
    age: i8,
    crc: Option<u32>,
) -> Result<Fields<'_>, String> {
    let label = u32::try_from(label).map_err(|_| format!("label {label} does not fit in u32"))?;
    if start > end {
        return Err(format!("start {start} is after end {end}"));
    }
    Ok(Fields { path, label, start, end, gender, age, crc })
}

/// Decimal digits only: no sign, no spaces, no empty field.
fn parse_u64(s: &str, what: &str) -> Result<u64, String> {
    let mut v: u64 = 0;
    for &b in s.as_bytes() {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(format!("{what} {s:?} is not an unsigned decimal integer"));
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(d as u64))
            .ok_or_else(|| format!("{what} {s:?} overflows u64"))?;
    }
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(v)
}

/// `-1` (unknown) or a class index 0..=127.
fn parse_class(s: &str, what: &str) -> Result<i8, String> {
    if s == "-1" {
        return Ok(-1);
    }
    match parse_u64(s, what) {
        Ok(v) if v <= 127 && s.len() <= 3 => Ok(v as i8),
        _ => Err(format!("{what} {s:?} is neither -1 nor a class index 0..=127")),
    }
}

/// Exactly eight lowercase hex digits.
fn parse_crc(s: &str) -> Result<u32, String> {
    let bad = || format!("crc32c {s:?} is not 8 lowercase hex digits");
    if s.len() != 8 {
        return Err(bad());
    }
    let mut v = 0u32;
    for &b in s.as_bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return Err(bad()),
        };
        v = v << 4 | d as u32;
    }
    Ok(v)
}

/// Writes one v1 record line, newline included.
pub fn format_v1(path: &str, label: u32, start: u64, end: u64, gender: i8, age: i8, crc: u32) -> String {
    format!("{}\t{label}\t{start}\t{end}\t{gender}\t{age}\t{crc:08x}\n", escape_path(path))
}

/// v1 escapes `\`, TAB, LF and CR so every path fits on one line and in one column.
pub fn escape_path(path: &str) -> Cow<'_, str> {
    if !path.contains(['\\', '\t', '\n', '\r']) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The inverse of [`escape_path`]; any other `\x` sequence is an error.
pub fn unescape_path(s: &str) -> Result<Cow<'_, str>, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    if !s.contains('\\') {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => return Err(format!("bad escape `\\{}` in path", other.map(String::from).unwrap_or_default())),
        }
    }
    Ok(Cow::Owned(out))
}

/// `<name>-KKKKK-of-NNNNN`, zero-padded to five digits.
pub fn shard_stem(name: &str, k: usize, n: usize) -> String {
    format!("{name}-{k:05}-of-{n:05}")
}

/// `(k, n)` when `file_stem` is `<name>-KKKKK-of-NNNNN` with k < n.
pub fn parse_shard_stem(file_stem: &str, name: &str) -> Option<(usize, usize)> {
    let rest = file_stem.strip_prefix(name)?.strip_prefix('-')?;
    let (k, n) = rest.split_once("-of-")?;
    let digits = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(k) || !digits(n) {
        return None;
    }
    let (k, n) = (k.parse().ok()?, n.parse().ok()?);
    (k < n).then_some((k, n))
}

pub fn labels_file(name: &str) -> String {
    format!("{name}.labels.tsv")
}

pub fn manifest_file(name: &str) -> String {
    format!("{name}.manifest.json")
}

pub fn skipped_file(name: &str) -> String {
    format!("{name}.skipped.tsv")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_line_round_trips_awkward_paths() {
        for path in ["a/b (1).jpg", "ü/日本\\x.png", "tab\there", "new\nline\r"] {
            let line = format_v1(path, 7, 10, 20, 1, -1, 0xdeadbeef);
            let f = parse_line(line.trim_end_matches('\n'), Version::V1).unwrap();
            assert_eq!(f.path, path);
            assert_eq!((f.label, f.start, f.end, f.gender, f.age, f.crc), (7, 10, 20, 1, -1, Some(0xdeadbeef)));
        }
    }

    #[test]
    fn legacy_line_keeps_spaces_and_has_no_checksum() {
        let f = parse_line("__gender_test/0_male/enroll (10).jpg\t0\t0\t1234", Version::Legacy).unwrap();
        assert_eq!(f.path, "__gender_test/0_male/enroll (10).jpg");
        assert_eq!((f.label, f.start, f.end, f.crc), (0, 0, 1234, None));
    }

    #[test]
    fn header_checks_magic_version_and_columns() {
        assert_eq!(parse_header(&header_line()), Ok(Version::V1));
        assert!(parse_header("# trainer-shard v2 columns=path").unwrap_err().contains("v2"));
        assert!(parse_header("# something else").is_err());
        assert!(parse_header("# trainer-shard v1 columns=path,label").is_err());
        let extra = format!("{},extra", header_line());
        assert_eq!(parse_header(&extra), Ok(Version::V1));
    }

    #[test]
    fn bad_fields_are_errors() {
        for line in [
            "p\t-1\t0\t1\t-1\t-1\t00000000",
            "p\t1\t5\t1\t-1\t-1\t00000000",
            "p\t1\t0\t1\t-2\t-1\t00000000",
            "p\t1\t0\t1\t-1\t-1\tDEADBEEF",
            "p\t1\t0\t1\t-1\t-1",
            "\t1\t0\t1\t-1\t-1\t00000000",
            "p\\q\t1\t0\t1\t-1\t-1\t00000000",
        ] {
            assert!(parse_line(line, Version::V1).is_err(), "{line:?}");
        }
    }

    #[test]
    fn paths_normalise_to_one_spelling() {
        assert_eq!(normalise_path("./a//b/./c.jpg").as_deref(), Some("a/b/c.jpg"));
        assert_eq!(normalise_path("a/b.jpg/").as_deref(), Some("a/b.jpg"));
        assert_eq!(normalise_path("x (1).jpg").as_deref(), Some("x (1).jpg"));
        for bad in [".", "./", "../a", "/a", "", "a/../b"] {
            assert_eq!(normalise_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn shard_names_parse_back() {
        let stem = shard_stem("faces", 3, 8);
        assert_eq!(stem, "faces-00003-of-00008");
        assert_eq!(parse_shard_stem(&stem, "faces"), Some((3, 8)));
        assert_eq!(parse_shard_stem("faces-00008-of-00008", "faces"), None);
        assert_eq!(parse_shard_stem("faces2-00000-of-00008", "faces"), None);
        assert_eq!(parse_shard_stem("faces-0-of-8", "faces"), None);
    }
}
