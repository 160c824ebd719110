//! Whitespace-separated text tables read on all cores: the file is cut into chunks at line
//! ends, each chunk parsed on its own, and an error names the file and the line (counted
//! only when one happens, so the common path never counts lines).

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::Path;

/// Chunks of about this many bytes are parsed per task.
const CHUNK_BYTES: usize = 1 << 20;

/// A parse failure inside a chunk: where its line starts, and what is wrong with it.
struct LineError {
    offset: usize,
    message: String,
}

/// Parses every line of `path` with `parse`, which gets the line's fields and returns a row
/// or a message. A blank line is an error like any malformed one, except after the last
/// line ending, where the file simply ends. `\r\n` endings are accepted.
pub fn parse_file<T: Send>(path: &Path, parse: impl Fn(&[&str]) -> Result<T, String> + Sync) -> Result<Vec<T>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_bytes(&bytes, &parse).map_err(|e| {
        let line = bytes[..e.offset].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("{}, line {line}: {}", path.display(), e.message)
    })
}

fn parse_bytes<T: Send>(
    bytes: &[u8],
    parse: &(impl Fn(&[&str]) -> Result<T, String> + Sync),
) -> Result<Vec<T>, LineError> {
    let chunks = chunk_bounds(bytes);
    let parts: Vec<Vec<T>> = chunks
        .par_iter()
        .map(|&(start, end)| parse_chunk(&bytes[start..end], start, parse))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for p in parts {
        rows.extend(p);
    }
    Ok(rows)
}

/// Byte ranges that each end just after a newline (the last one at the end of the file).
fn chunk_bounds(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let mut end = (start + CHUNK_BYTES).min(bytes.len());
        while end < bytes.len() && bytes[end - 1] != b'\n' {
            end += 1;
        }
        out.push((start, end));
        start = end;
    }
    out
}

fn parse_chunk<T>(
    chunk: &[u8],
    base: usize,
    parse: &impl Fn(&[&str]) -> Result<T, String>,
) -> Result<Vec<T>, LineError> {
    let mut rows = Vec::new();
    let mut fields: Vec<&str> = Vec::with_capacity(16);
    let mut at = 0;
    while at < chunk.len() {
        let end = chunk[at..].iter().position(|&b| b == b'\n').map_or(chunk.len(), |p| at + p);
        let offset = base + at;
        let fail = |message: String| LineError { offset, message };
        let line = std::str::from_utf8(&chunk[at..end]).map_err(|_| fail("not UTF-8 text".into()))?;
        fields.clear();
        fields.extend(line.split_ascii_whitespace());
        if fields.is_empty() {
            return Err(fail("empty line".into()));
        }
        rows.push(parse(&fields).map_err(fail)?);
        at = end + 1;
    }
    Ok(rows)
}

/// Checks the field count; `what` describes the expected layout for the message.
pub fn expect_fields(fields: &[&str], n: usize, what: &str) -> Result<(), String> {
    if fields.len() != n {
        return Err(format!("{} fields where {n} are expected ({what})", fields.len()));
    }
    Ok(())
}

/// An integer field (template, media id, label).
pub fn int(field: &str, name: &str) -> Result<i64, String> {
    field.parse().map_err(|_| format!("{name} {field:?} is not an integer"))
}

/// A finite real field (landmark coordinate, faceness score).
pub fn real(field: &str, name: &str) -> Result<f32, String> {
    match field.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("{name} {field:?} is not a finite number")),
        Err(_) => Err(format!("{name} {field:?} is not a number")),
    }
}

/// Refuses an empty table: a benchmark with no rows is not that benchmark.
pub fn non_empty<T>(rows: Vec<T>, path: &Path) -> Result<Vec<T>> {
    if rows.is_empty() {
        bail!("{} has no lines", path.display());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Result<Vec<(i64, i64)>, (usize, String)> {
        let bytes = text.as_bytes();
        parse_bytes(bytes, &|f: &[&str]| {
            expect_fields(f, 2, "a b")?;
            Ok((int(f[0], "a")?, int(f[1], "b")?))
        })
        .map_err(|e| (bytes[..e.offset].iter().filter(|&&b| b == b'\n').count() + 1, e.message))
    }

    #[test]
    fn lines_parse_and_errors_name_the_line() {
        assert_eq!(pairs("1 2\n3 4\n").unwrap(), [(1, 2), (3, 4)]);
        assert_eq!(pairs("1 2\r\n3\t4").unwrap(), [(1, 2), (3, 4)]);
        assert_eq!(pairs("1 2\n3 x\n").unwrap_err(), (2, "b \"x\" is not an integer".into()));
        assert_eq!(pairs("1 2\n\n3 4\n").unwrap_err().0, 2);
        assert!(pairs("1 2\n3 4 5\n").unwrap_err().1.starts_with("3 fields where 2"));
        assert!(real("nan", "x").is_err() && real("1e3", "x") == Ok(1000.0));
    }

    #[test]
    fn chunks_end_at_line_ends_and_cover_the_file() {
        let text: String = (0..300_000).map(|i| format!("{i} {}\n", i * 2)).collect();
        let bounds = chunk_bounds(text.as_bytes());
        assert!(bounds.len() > 2);
        assert_eq!(bounds.last().unwrap().1, text.len());
        assert!(bounds.windows(2).all(|w| w[0].1 == w[1].0 && text.as_bytes()[w[0].1 - 1] == b'\n'));
        let rows = pairs(&text).unwrap();
        assert_eq!(rows.len(), 300_000);
        assert_eq!(rows[123_456], (123_456, 246_912));
        let bad = text.replace("250000 500000\n", "250000 oops\n");
        assert_eq!(pairs(&bad).unwrap_err().0, 250_001);
    }
}
