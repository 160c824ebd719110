//! An idx file parsed into compact columns: one byte blob for all paths plus offsets, and a
//! flat array per numeric column, so a million records cost no million `String`s.

use super::format::{self, Version};
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Columns {
    /// All (unescaped) paths back to back; path i is `paths[path_ends[i-1]..path_ends[i]]`.
    pub paths: String,
    pub path_ends: Vec<usize>,
    pub starts: Vec<u64>,
    pub ends: Vec<u64>,
    pub labels: Vec<u32>,
    pub genders: Vec<i8>,
    pub ages: Vec<i8>,
    /// Empty for the legacy format, which carries no checksum.
    pub crcs: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Index {
    pub version: Version,
    pub cols: Columns,
}

impl Index {
    /// Reads and parses an idx file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Index> {
        let bytes = std::fs::read(path).with_context(|| format!("reading index {}", path.display()))?;
        Index::parse(&bytes).with_context(|| format!("parsing index {}", path.display()))
    }

    /// Parses idx text: a `#` header line selects v1, no header means the seed's format.
    pub fn parse(bytes: &[u8]) -> Result<Index> {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
                bail!("line {line}: not valid UTF-8");
            }
        };
        let mut lines = text.split('\n').enumerate().peekable();
        let version = match lines.peek() {
            Some((_, first)) if first.starts_with('#') => {
                let v = format::parse_header(first.trim_end_matches('\r')).map_err(|e| anyhow::anyhow!("line 1: {e}"))?;
                lines.next();
                v
            }
            _ => Version::Legacy,
        };
        let mut cols = Columns::with_capacity(estimate_records(bytes), version);
        for (n, line) in lines {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let fields = format::parse_line(line, version).map_err(|e| {
                let hint = if version == Version::Legacy { " (no `# trainer-shard` header, so read as the seed's 4-column format)" } else { "" };
                anyhow::anyhow!("line {}: {e}{hint}", n + 1)
            })?;
            cols.push(&fields);
        }
        Ok(Index { version, cols })
    }

    pub fn len(&self) -> usize {
        self.cols.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.cols.path_ends[i - 1] };
        &self.cols.paths[start..self.cols.path_ends[i]]
    }

    pub fn range(&self, i: usize) -> (u64, u64) {
        (self.cols.starts[i], self.cols.ends[i])
    }

    pub fn checksum(&self, i: usize) -> Option<u32> {
        self.cols.crcs.get(i).copied()
    }

    /// The largest `end` and the record holding it, to check against the bin's length.
    pub fn max_end(&self) -> Option<(usize, u64)> {
        self.cols.ends.iter().copied().enumerate().max_by_key(|&(i, e)| (e, std::cmp::Reverse(i)))
    }
}

impl Columns {
    fn with_capacity(n: usize, version: Version) -> Columns {
        Columns {
            paths: String::with_capacity(n * 48),
            path_ends: Vec::with_capacity(n),
            starts: Vec::with_capacity(n),
            ends: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            genders: Vec::with_capacity(n),
            ages: Vec::with_capacity(n),
            crcs: Vec::with_capacity(if version == Version::V1 { n } else { 0 }),
        }
    }

    fn push(&mut self, f: &format::Fields<'_>) {
        self.paths.push_str(&f.path);
        self.path_ends.push(self.paths.len());
        self.starts.push(f.start);
        self.ends.push(f.end);
        self.labels.push(f.label);
        self.genders.push(f.gender);
        self.ages.push(f.age);
        if let Some(c) = f.crc {
            self.crcs.push(c);
        }
    }
}

fn estimate_records(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn v1(lines: &[&str]) -> Vec<u8> {
        let mut s = format::header_line() + "\n";
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s.into_bytes()
    }

    #[test]
    fn parses_v1_columns() {
        let text = v1(&[
            "a b/(1).jpg\t3\t0\t10\t1\t4\t0000000a",
            "ü\\t.png\t0\t10\t25\t-1\t-1\tffffffff",
        ]);
        let idx = Index::parse(&text).unwrap();
        assert_eq!(idx.version, Version::V1);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.path(0), "a b/(1).jpg");
        assert_eq!(idx.path(1), "ü\t.png");
        assert_eq!(idx.cols.labels, [3, 0]);
        assert_eq!(idx.range(1), (10, 25));
        assert_eq!(idx.checksum(1), Some(0xffff_ffff));
        assert_eq!(idx.max_end(), Some((1, 25)));
    }

    #[test]
    fn parses_seed_format_with_crlf() {
        let idx = Index::parse(b"__gender_test/0_male/enroll (10).jpg\t0\t0\t5\r\nx/y.jpg\t1\t5\t9\r\n").unwrap();
        assert_eq!(idx.version, Version::Legacy);
        assert_eq!(idx.path(0), "__gender_test/0_male/enroll (10).jpg");
        assert_eq!(idx.checksum(0), None);
        assert_eq!(idx.cols.genders, [-1, -1]);
    }

    #[test]
    fn errors_name_the_line() {
        let err = Index::parse(&v1(&["ok\t0\t0\t1\t-1\t-1\t00000000", "broken line"])).unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
        let err = Index::parse(b"a\t0\t0\t1\n\xff\xfe\t0\t1\t2\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    /// Garbage of every shape (random bytes, shuffled fields, near-valid lines) is an error
    /// or a parse, never a panic.
    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng::new(0x5eed);
        let pieces = ["\t", "\n", "\r", "#", "-", "-1", "0", "99999999999999999999999", "ab", "\\", "\\t", "é", " ", "ffffffff", "trainer-shard", "v1", "columns=path,label,start,end,gender,age,crc32c"];
        let (mut ok, mut err) = (0, 0);
        for round in 0..3000 {
            let mut text: Vec<u8> = Vec::new();
            if round % 3 == 0 {
                text.extend_from_slice(format::header_line().as_bytes());
                text.push(b'\n');
            }
            for _ in 0..rng.below(40) {
                if rng.below(4) == 0 {
                    text.push(rng.next_u64() as u8);
                } else {
                    text.extend_from_slice(pieces[rng.below(pieces.len())].as_bytes());
                }
            }
            match Index::parse(&text) {
                Ok(idx) => {
                    ok += 1;
                    for i in 0..idx.len() {
                        let _ = (idx.path(i), idx.range(i), idx.checksum(i));
                    }
                }
                Err(_) => err += 1,
            }
        }
        assert!(ok > 0 && err > 0, "ok {ok} err {err}");
    }
}
