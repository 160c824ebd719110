//! NumPy `.npy` files (format version 1.0, little-endian, C order) for `trainer embed`'s
//! embeddings. Rows are streamed: the header is written with room for any row count and
//! rewritten at `finish`; the file appears under its name only then (written as
//! `<name>.partial`, fsynced, renamed), so an interrupted run leaves no valid-looking array.

use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use crate::output::Output;

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

/// Writes a `(rows, columns)` array one row at a time, under the output rule
/// (`crate::output`): `<path>.partial` is renamed into place by `finish`, or, for an array
/// staged with other files (`create_staged`), by the caller's `Output::commit`.
pub struct NpyWriter<T: Element> {
    out: Option<BufWriter<File>>,
    /// The array's own staging; `None` when the caller commits it with other files.
    own: Option<Output>,
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
        let mut own = Output::new();
        let mut w = NpyWriter::open(&mut own, path, Some(columns))?;
        w.own = Some(own);
        Ok(w)
    }

    /// A 2-D array staged in `output`: `finish` completes it, `output.commit()` names it.
    pub fn create_staged(output: &mut Output, path: &Path, columns: usize) -> Result<NpyWriter<T>> {
        NpyWriter::open(output, path, Some(columns))
    }

    fn open(output: &mut Output, path: &Path, columns: Option<usize>) -> Result<NpyWriter<T>> {
        let (file, partial) = output.create(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header(T::DESCR, 0, columns)).with_context(|| format!("writing {}", partial.display()))?;
        Ok(NpyWriter {
            out: Some(out),
            own: None,
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

    /// Writes the final shape, syncs and (unless staged with other files) gives the file its name.
    pub fn finish(mut self) -> Result<()> {
        let out = self.out.take().context("writer already finished")?;
        let context = || format!("finishing {}", self.partial.display());
        let mut file = out.into_inner().map_err(|e| e.into_error()).with_context(context)?;
        file.seek(SeekFrom::Start(0)).with_context(context)?;
        file.write_all(&header(T::DESCR, self.rows, self.columns)).with_context(context)?;
        file.sync_all().with_context(context)?;
        match self.own.take() {
            Some(own) => own.commit(),
            None => Ok(()),
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
    let mut own = Output::new();
    let mut w = NpyWriter::open(&mut own, path, None)?;
    w.own = Some(own);
    data.iter().try_for_each(|v| w.write_row(std::slice::from_ref(v)))?;
    w.finish()
}

/// Reads a 2-D little-endian float32 C-order array (NumPy's default for `np.save` of a
/// float32 matrix, header version 1 to 3): (rows, columns, values). The data is read in
/// pieces straight into the result, so a 1 GB array takes 1 GB, not two.
pub fn read_f32_matrix(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    use std::io::Read;
    let bad = |why: &str| anyhow::anyhow!("{}: {why}", path.display());
    let mut file = std::io::BufReader::new(File::open(path).with_context(|| format!("reading {}", path.display()))?);
    let mut head = [0u8; 12];
    file.read_exact(&mut head[..10]).map_err(|_| bad("not a .npy file"))?;
    ensure!(&head[..6] == b"\x93NUMPY", bad("not a .npy file"));
    let len = match head[6] {
        1 => u16::from_le_bytes([head[8], head[9]]) as usize,
        2 | 3 => {
            file.read_exact(&mut head[10..12]).map_err(|_| bad("truncated header"))?;
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize
        }
        v => return Err(bad(&format!("unsupported .npy version {v}"))),
    };
    ensure!(len <= 1 << 20, bad("header too long"));
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).map_err(|_| bad("truncated header"))?;
    let (rows, columns) = matrix_shape(&String::from_utf8_lossy(&header)).map_err(|e| bad(&e))?;
    let total = rows.checked_mul(columns).ok_or_else(|| bad("shape overflows"))?;
    let mut values = Vec::with_capacity(total);
    let mut buf = vec![0u8; 1 << 20];
    while values.len() < total {
        let want = ((total - values.len()) * 4).min(buf.len());
        file.read_exact(&mut buf[..want]).map_err(|_| bad(&format!("holds fewer than {rows}x{columns} values")))?;
        values.extend(buf[..want].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    }
    ensure!(file.read(&mut buf[..1])? == 0, bad(&format!("holds more than {rows}x{columns} values")));
    Ok((rows, columns, values))
}

/// (rows, columns) from a header dictionary, which must describe a float32 C-order matrix.
fn matrix_shape(header: &str) -> Result<(usize, usize), String> {
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains("'descr':'<f4'") {
        return Err(format!("not float32 little-endian: {header}"));
    }
    if !compact.contains("'fortran_order':False") {
        return Err("Fortran order is not supported".into());
    }
    let shape = compact.split("'shape':(").nth(1).and_then(|s| s.split(')').next()).ok_or("no shape")?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad shape ({shape})"))?;
    match dims[..] {
        [r, c] => Ok((r, c)),
        _ => Err(format!("shape ({shape}) is not 2-D")),
    }
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
