//! NumPy `.npy` files (format version 1.0, little-endian, C order) for `trainer embed`'s
//! embeddings. Rows are streamed: the header is written with room for any row count and
//! rewritten at `finish`; the file appears under its name only then (written as
//! `<name>.partial`, fsynced, renamed), so an interrupted run leaves no valid-looking array.

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// Header bytes, magic included: room for 20-digit dimensions, a multiple of 64 as NumPy
/// itself aligns the data.
const HEADER_BYTES: usize = 128;

/// An element type and its NumPy `descr`.
pub trait Element: Copy {
    const DESCR: &'static str;
    fn put(self, out: &mut Vec<u8>);
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for f64 {
    const DESCR: &'static str = "<f8";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for u8 {
    const DESCR: &'static str = "|u1";
    fn put(self, out: &mut Vec<u8>) {
        out.push(self);
    }
}

/// The version 1.0 header for `shape` (`None` columns: a 1-D array).
fn header(descr: &str, rows: u64, columns: Option<usize>) -> Vec<u8> {
    let shape = match columns {
        Some(c) => format!("({rows}, {c})"),
        None => format!("({rows},)"),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&((HEADER_BYTES - 10) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(HEADER_BYTES - 1, b' ');
    out.push(b'\n');
    out
}

/// Writes a `(rows, columns)` array one row at a time.
pub struct NpyWriter<T: Element> {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    partial: PathBuf,
    columns: Option<usize>,
    rows: u64,
    buf: Vec<u8>,
    _element: PhantomData<T>,
}

impl<T: Element> NpyWriter<T> {
    /// A 2-D array of `columns` columns.
    pub fn create(path: &Path, columns: usize) -> Result<NpyWriter<T>> {
        NpyWriter::open(path, Some(columns))
    }

    fn open(path: &Path, columns: Option<usize>) -> Result<NpyWriter<T>> {
        let mut name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?.to_os_string();
        name.push(".partial");
        let partial = path.with_file_name(name);
        let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header(T::DESCR, 0, columns)).with_context(|| format!("writing {}", partial.display()))?;
        Ok(NpyWriter {
            out: Some(out),
            path: path.to_path_buf(),
            partial,
            columns,
            rows: 0,
            buf: Vec::new(),
            _element: PhantomData,
        })
    }

    pub fn write_row(&mut self, row: &[T]) -> Result<()> {
        let width = self.columns.unwrap_or(1);
        ensure!(
            row.len() == width,
            "row {} of {} has {} values, expected {width}",
            self.rows,
            self.path.display(),
            row.len()
        );
        self.buf.clear();
        row.iter().for_each(|v| v.put(&mut self.buf));
        let out = self.out.as_mut().context("writer already finished")?;
        out.write_all(&self.buf).with_context(|| format!("writing {}", self.partial.display()))?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the final shape, syncs and gives the file its name.
    pub fn finish(mut self) -> Result<()> {
        let out = self.out.take().context("writer already finished")?;
        let context = || format!("finishing {}", self.partial.display());
        let mut file = out.into_inner().map_err(|e| e.into_error()).with_context(context)?;
        file.seek(SeekFrom::Start(0)).with_context(context)?;
        file.write_all(&header(T::DESCR, self.rows, self.columns)).with_context(context)?;
        file.sync_all().with_context(context)?;
        std::fs::rename(&self.partial, &self.path)
            .with_context(|| format!("renaming {} to {}", self.partial.display(), self.path.display()))
    }
}

impl<T: Element> Drop for NpyWriter<T> {
    /// An unfinished array is not left behind.
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Writes `data` (row-major) as a `(data.len() / columns, columns)` array.
pub fn write_matrix<T: Element>(path: &Path, columns: usize, data: &[T]) -> Result<()> {
    ensure!(columns > 0 && data.len().is_multiple_of(columns), "{} values do not make rows of {columns}", data.len());
    let mut w = NpyWriter::create(path, columns)?;
    data.chunks(columns).try_for_each(|row| w.write_row(row))?;
    w.finish()
}

/// Writes `data` as a 1-D array.
pub fn write_vector<T: Element>(path: &Path, data: &[T]) -> Result<()> {
    let mut w = NpyWriter::open(path, None)?;
    data.iter().try_for_each(|v| w.write_row(std::slice::from_ref(v)))?;
    w.finish()
}

/// Reads a 2-D little-endian float32 C-order array (NumPy's default for `np.save` of a
/// float32 matrix, header version 1 or 2): (rows, columns, values).
pub fn read_f32_matrix(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{}: {why}", path.display());
    ensure!(bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY", bad("not a .npy file"));
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(&format!("unsupported .npy version {v}"))),
    };
    let header =
        bytes.get(start..start + len).and_then(|h| std::str::from_utf8(h).ok()).ok_or_else(|| bad("bad header"))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    ensure!(compact.contains("'descr':'<f4'"), bad(&format!("not float32 little-endian: {header}")));
    ensure!(compact.contains("'fortran_order':False"), bad("Fortran order is not supported"));
    let shape = compact.split("'shape':(").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad(&format!("bad shape ({shape})")))?;
    ensure!(dims.len() == 2, bad(&format!("shape ({shape}) is not 2-D")));
    let data = &bytes[start + len..];
    ensure!(data.len() == dims[0] * dims[1] * 4, bad(&format!("{} data bytes for shape ({shape})", data.len())));
    let values = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((dims[0], dims[1], values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_version_1_aligned_and_ends_in_newline() {
        let h = header("<f4", u64::MAX, Some(usize::MAX));
        assert_eq!(h.len(), 128);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([h[8], h[9]]), 118);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(
            text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, "),
            "{text}"
        );
        assert!(text.ends_with(" \n"));
        assert!(std::str::from_utf8(&header("<f8", 3, None)[10..]).unwrap().contains("'shape': (3,), }"));
    }

    #[test]
    fn a_written_matrix_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        write_matrix(&p, 3, &[1f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(read_f32_matrix(&p).unwrap(), (2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        write_vector(&p, &[1f32, 2.0]).unwrap();
        assert!(read_f32_matrix(&p).unwrap_err().to_string().contains("not 2-D"));
    }
}
