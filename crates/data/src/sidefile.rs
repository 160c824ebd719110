//! Side files — a RecordIO set's `.idx` and `property`, list tables (`--list`) and label
//! tables — are read with limits on their size and on each line, proportionate to the data
//! they describe (docs/hostile-input.md lists them): a sparse 1 GB `.idx`, `/dev/zero` or a
//! 10 MB line is refused before it costs memory, and a message quotes at most the first
//! `QUOTE_BYTES` of a bad line.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// How much of a bad line a message quotes.
pub const QUOTE_BYTES: usize = 200;

/// The longest line of a list or label table: a 4096-byte path, escaped, and its columns.
pub const TABLE_LINE: usize = 16 << 10;

/// A list table of a folder pack (whose inputs are only known from the table): 40 million
/// rows of 100 bytes.
pub const FOLDER_TABLE_BYTES: u64 = 4 << 30;

/// A label table: one line per class, at most 2^24 classes of names up to 256 bytes.
pub const LABEL_TABLE_BYTES: u64 = (1 << 24) * 256;

/// The `property` file: three numbers.
pub const PROPERTY_BYTES: u64 = 4 << 10;

/// The longest `.idx` line: two 20-digit numbers, a TAB, spaces and a CR/LF to spare.
pub const IDX_LINE: usize = 64;

/// What a side file may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// What the file is, for messages ("RecordIO idx").
    pub what: &'static str,
    pub max_bytes: u64,
    pub max_line: usize,
}

impl Limit {
    /// A RecordIO `.idx` beside a `.rec` of `rec_bytes`: one line per record, and no record
    /// is shorter than its 8-byte frame header.
    pub fn recordio_idx(rec_bytes: u64) -> Limit {
        Limit { what: "RecordIO idx", max_bytes: (rec_bytes / 8 + 1) * IDX_LINE as u64, max_line: IDX_LINE }
    }

    pub fn property() -> Limit {
        Limit { what: "property file", max_bytes: PROPERTY_BYTES, max_line: 256 }
    }

    /// A list table naming the records of a `.rec` of `rec_bytes` (at most one row each).
    pub fn recordio_table(rec_bytes: u64) -> Limit {
        let rows = rec_bytes / 8 + 2;
        Limit { what: "list table", max_bytes: rows.saturating_mul(TABLE_LINE as u64), max_line: TABLE_LINE }
    }

    pub fn folder_table() -> Limit {
        Limit { what: "list table", max_bytes: FOLDER_TABLE_BYTES, max_line: TABLE_LINE }
    }

    pub fn label_table() -> Limit {
        Limit { what: "label table", max_bytes: LABEL_TABLE_BYTES, max_line: TABLE_LINE }
    }
}

/// The first `QUOTE_BYTES` of `line` (cut on a character boundary), saying how long it was.
pub fn quote(line: &str) -> String {
    if line.len() <= QUOTE_BYTES {
        return format!("{line:?}");
    }
    let mut end = QUOTE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &line[..end], line.len())
}

/// Reads a regular file of at most `limit.max_bytes` whose lines are at most
/// `limit.max_line` bytes, as UTF-8. Lines are checked while reading, so a long one stops
/// the read where it starts.
pub fn read_text(path: &Path, limit: Limit) -> Result<String> {
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {} {}", limit.what, path.display()))?;
    let meta = file.metadata().with_context(|| format!("opening {} {}", limit.what, path.display()))?;
    let t = meta.file_type();
    if !t.is_file() {
        let kind = if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_fifo() {
            "a FIFO"
        } else {
            "not a regular file"
        };
        bail!("{} {} is {kind}; it must be a regular file", limit.what, path.display());
    }
    if meta.len() > limit.max_bytes {
        bail!(
            "{} {} is {} bytes, more than the {} bytes it can need for this data (see docs/hostile-input.md#limits-on-side-files)",
            limit.what,
            path.display(),
            meta.len(),
            limit.max_bytes
        );
    }
    let mut reader = BufReader::new(file.take(limit.max_bytes + 1));
    let mut text = String::with_capacity(meta.len() as usize);
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(limit.max_line as u64 + 2)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {} {}", limit.what, path.display()))?;
        if read == 0 {
            break;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let shown = || String::from_utf8_lossy(body).into_owned();
        if body.len() > limit.max_line {
            bail!(
                "{} {}: line {n} is longer than the {} bytes a line may have: {}",
                limit.what,
                path.display(),
                limit.max_line,
                quote(&shown())
            );
        }
        let Ok(s) = std::str::from_utf8(&line) else {
            bail!("{} {}: line {n} is not UTF-8: {}", limit.what, path.display(), quote(&shown()));
        };
        text.push_str(s);
        if text.len() as u64 > limit.max_bytes {
            bail!("{} {} grew past {} bytes while it was read", limit.what, path.display(), limit.max_bytes);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_cut_and_limits_hold() {
        let long = "é".repeat(300);
        let q = quote(&long);
        assert!(q.len() < 230 && q.ends_with("(600 bytes)"), "{q}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, format!("a\tb\n{}\nc\n", "x".repeat(100))).unwrap();
        let small = Limit { what: "table", max_bytes: 1000, max_line: 50 };
        let err = format!("{:#}", read_text(&p, small).unwrap_err());
        assert!(err.contains("line 2 is longer than the 50 bytes") && err.len() < 400, "{err}");
        assert_eq!(read_text(&p, Limit { max_line: 100, ..small }).unwrap().lines().count(), 3);
        let err = format!("{:#}", read_text(&p, Limit { max_bytes: 10, ..small }).unwrap_err());
        assert!(err.contains("more than the 10 bytes"), "{err}");
        let err = format!("{:#}", read_text(Path::new("/dev/zero"), small).unwrap_err());
        assert!(err.contains("is a device"), "{err}");
    }
}
