//! An idx file parsed into compact columns: one byte blob for all paths plus offsets, and a
//! flat array per numeric column, so a million records cost no million `String`s.

use super::idx::{self as format, Version};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
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

/// Below this many bytes an idx is parsed on the calling thread.
const PARALLEL_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct Index {
    pub version: Version,
    pub cols: Columns,
}

impl Index {
    /// Reads and parses an idx file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Index> {
        let file = std::fs::File::open(path).with_context(|| format!("opening index {}", path.display()))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
        // SAFETY: read-only map of a file we only read; an idx rewritten underneath us can at
        // worst produce a parse error, since every byte is validated.
        let map = if empty {
            None
        } else {
            Some(
                unsafe { memmap2::MmapOptions::new().populate().map(&file) }
                    .with_context(|| format!("mapping index {}", path.display()))?,
            )
        };
        Index::parse(map.as_deref().unwrap_or(&[])).with_context(|| format!("parsing index {}", path.display()))
    }

    /// Parses idx text: a `#` header line selects v1, no header means the seed's format.
    /// Large files are parsed in parallel chunks split at line ends.
    pub fn parse(bytes: &[u8]) -> Result<Index> {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
                bail!("line {line}: not valid UTF-8");
            }
        };
        let (version, body, first_line) = match text.strip_prefix('#') {
            Some(_) => {
                let (header, body) = text.split_once('\n').unwrap_or((text, ""));
                let v =
                    format::parse_header(header.trim_end_matches('\r')).map_err(|e| anyhow::anyhow!("line 1: {e}"))?;
                (v, body, 2)
            }
            None => (Version::Legacy, text, 1),
        };
        let chunks = split_chunks(body, if body.len() < PARALLEL_BYTES { 1 } else { rayon::current_num_threads() * 2 });
        let parts: Vec<Result<Columns, (usize, String)>> = chunks.par_iter().map(|c| parse_chunk(c, version)).collect();
        let mut cols: Option<Columns> = None;
        for (j, part) in parts.into_iter().enumerate() {
            match part {
                Ok(p) => match cols.as_mut() {
                    None => cols = Some(p),
                    Some(c) => c.append(p),
                },
                Err((local, e)) => {
                    let before: usize = chunks[..j].iter().map(|c| c.bytes().filter(|&b| b == b'\n').count()).sum();
                    let hint = if version == Version::Legacy {
                        " (no `# trainer-shard` header, so read as the seed's 4-column format)"
                    } else {
                        ""
                    };
                    bail!("line {}: {e}{hint}", first_line + before + local);
                }
            }
        }
        Ok(Index { version, cols: cols.unwrap_or_default() })
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

/// Splits `body` into about `n` pieces, each ending at a line end.
fn split_chunks(body: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::with_capacity(n);
    let mut rest = body;
    let target = body.len() / n.max(1) + 1;
    while !rest.is_empty() {
        let cut = match rest.get(target..).and_then(|tail| tail.find('\n')) {
            Some(i) => target + i + 1,
            None => rest.len(),
        };
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

/// Parses whole lines; an error carries its 0-based line number within the chunk.
fn parse_chunk(chunk: &str, version: Version) -> Result<Columns, (usize, String)> {
    let mut cols = Columns::with_capacity(chunk.len(), version);
    for (n, line) in chunk.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let fields = format::parse_line(line, version).map_err(|e| (n, e))?;
        cols.push(&fields);
    }
    Ok(cols)
}

impl Columns {
    /// Moves `other`'s records after this one's.
    fn append(&mut self, other: Columns) {
        let base = self.paths.len();
        self.paths.push_str(&other.paths);
        self.path_ends.extend(other.path_ends.iter().map(|e| e + base));
        self.starts.extend_from_slice(&other.starts);
        self.ends.extend_from_slice(&other.ends);
        self.labels.extend_from_slice(&other.labels);
        self.genders.extend_from_slice(&other.genders);
        self.ages.extend_from_slice(&other.ages);
        self.crcs.extend_from_slice(&other.crcs);
    }

    /// Reserves for the most records `text_len` bytes can hold (a v1 line is at least 24
    /// bytes, a seed line 8); pages never written are never touched, so this costs no memory.
    fn with_capacity(text_len: usize, version: Version) -> Columns {
        let n = text_len / if version == Version::V1 { 24 } else { 8 } + 1;
        Columns {
            paths: String::with_capacity(text_len),
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
        let text = v1(&["a b/(1).jpg\t3\t0\t10\t1\t4\t0000000a", "ü\\t.png\t0\t10\t25\t-1\t-1\tffffffff"]);
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

    #[test]
    fn chunked_parse_matches_and_counts_lines_across_chunks() {
        let lines: Vec<String> = (0..5000)
            .map(|i| format!("p{i}/x y.jpg\t{}\t{}\t{}\t-1\t{}\t{:08x}", i % 7, i * 3, i * 3 + 3, i % 5, i))
            .collect();
        let text = v1(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        let whole = std::str::from_utf8(&text).unwrap();
        let body = whole.split_once('\n').unwrap().1;
        let pieces = split_chunks(body, 7);
        assert!(pieces.len() > 1 && pieces.iter().all(|p| p.ends_with('\n')));
        assert_eq!(pieces.concat(), body);
        let mut merged = parse_chunk(pieces[0], Version::V1).unwrap();
        for p in &pieces[1..] {
            merged.append(parse_chunk(p, Version::V1).unwrap());
        }
        let idx = Index::parse(&text).unwrap();
        assert_eq!(idx.len(), 5000);
        assert_eq!(merged.path_ends, idx.cols.path_ends);
        assert_eq!(merged.paths, idx.cols.paths);
        let merged = Index { version: Version::V1, cols: merged };
        assert_eq!(
            (merged.path(4321), merged.range(4321), merged.checksum(4321)),
            ("p4321/x y.jpg", (12963, 12966), Some(4321))
        );
    }

    #[test]
    fn error_line_is_right_in_a_parallel_parse() {
        let good = "some/path (1).jpg\t1\t0\t0\t-1\t-1\t00000000";
        let n = PARALLEL_BYTES / good.len() + 1000;
        let mut lines = vec![good; n];
        lines[n - 3] = "oops";
        let err = Index::parse(&v1(&lines)).unwrap_err();
        assert!(format!("{err:#}").starts_with(&format!("line {}:", n - 3 + 2)), "{err:#}");
    }

    /// Garbage of every shape (random bytes, shuffled fields, near-valid lines) is an error
    /// or a parse, never a panic.
    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng::new(0x5eed);
        let pieces = [
            "\t",
            "\n",
            "\r",
            "#",
            "-",
            "-1",
            "0",
            "99999999999999999999999",
            "ab",
            "\\",
            "\\t",
            "é",
            " ",
            "ffffffff",
            "trainer-shard",
            "v1",
            "columns=path,label,start,end,gender,age,crc32c",
        ];
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
