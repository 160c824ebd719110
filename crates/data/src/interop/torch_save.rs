//! PyTorch's `torch.save` file of a state dict (`backbone.pth`), read and written without
//! Python. The file is a zip archive (entries stored, not compressed) under one folder:
//! `data.pkl`, a pickle of the `OrderedDict` whose values are
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`,
//! each storage a persistent id `('storage', torch.FloatStorage, key, location, numel)`
//! whose little-endian bytes are the entry `data/<key>`; plus `byteorder` and `version`.
//!
//! Reading checks every count against the bytes present before allocating, every view
//! against its storage's extent, and names the tensor in each error.

use super::pickle::{self, Dict, Flavour, Object, Value};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::{Cursor, Read, Seek, Write};
use std::path::Path;
use std::rc::Rc;

/// Element types a state dict holds, by their storage class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

const STORAGES: [(DType, &str, usize); 10] = [
    (DType::F32, "FloatStorage", 4),
    (DType::F64, "DoubleStorage", 8),
    (DType::F16, "HalfStorage", 2),
    (DType::BF16, "BFloat16Storage", 2),
    (DType::I64, "LongStorage", 8),
    (DType::I32, "IntStorage", 4),
    (DType::I16, "ShortStorage", 2),
    (DType::I8, "CharStorage", 1),
    (DType::U8, "ByteStorage", 1),
    (DType::Bool, "BoolStorage", 1),
];

impl DType {
    fn entry(self) -> (DType, &'static str, usize) {
        STORAGES.into_iter().find(|s| s.0 == self).expect("every dtype has a storage")
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        self.entry().2
    }

    /// The storage class torch pickles, e.g. `FloatStorage`.
    pub fn storage(self) -> &'static str {
        self.entry().1
    }

    fn from_storage(name: &str) -> Option<DType> {
        STORAGES.into_iter().find(|s| s.1 == name).map(|s| s.0)
    }
}

/// One tensor of a state dict: contiguous row-major little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl StoredTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Reads the state dict of a `torch.save` file, in the file's order.
pub fn read(path: &Path) -> Result<Vec<StoredTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{}", path.display()))
}

/// Parses the bytes of a `torch.save` file holding a state dict (or arcface_torch's
/// training checkpoint, whose `state_dict_backbone` is taken).
pub fn parse(bytes: &[u8]) -> Result<Vec<StoredTensor>> {
    if bytes.starts_with(b"\x80\x02\x8a\x0a") {
        bail!("this is torch.save's legacy (before PyTorch 1.6) format, which is not read: re-save it with a current torch.save");
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .context("not a torch.save file: not a zip archive (truncated, or another format)")?;
    let prefix = archive_prefix(&zip)?;
    if let Some(order) = entry(&mut zip, &format!("{prefix}byteorder"), 16)? {
        ensure!(order == b"little", "the tensors are stored {:?}-endian; only little-endian is read", order);
    }
    let pkl = entry(&mut zip, &format!("{prefix}data.pkl"), bytes.len() as u64)?.context("no data.pkl")?;
    let root = pickle::load_as(&pkl, Flavour::TorchSave).context("data.pkl")?;
    let dict = state_dict(&root)?;
    let mut storages = Storages { zip: &mut zip, prefix, loaded: HashMap::new(), limit: bytes.len() as u64 };
    let mut out: Vec<StoredTensor> = Vec::new();
    for (key, value) in dict.items.borrow().iter() {
        let Value::Str(name) = key else { bail!("a state dict key that is a {}, not a str", key.kind()) };
        ensure!(!out.iter().any(|t| *t.name == **name), "tensor {name:?} appears twice");
        let t = tensor(value, &mut storages).with_context(|| format!("tensor {name:?}"))?;
        out.push(StoredTensor { name: name.to_string(), ..t });
    }
    Ok(out)
}

/// The folder all entries sit in (torch names it after the file), with its slash.
fn archive_prefix<R: Read + Seek>(zip: &zip::ZipArchive<R>) -> Result<String> {
    let pkls: Vec<&str> =
        zip.file_names().filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1).collect();
    match pkls[..] {
        [one] => Ok(one.trim_end_matches("data.pkl").to_string()),
        [] => bail!("not a torch.save file: the zip archive has no <folder>/data.pkl"),
        _ => bail!("the zip archive holds {} data.pkl files, torch.save writes one", pkls.len()),
    }
}

/// An entry's bytes (None when absent), refused above `limit` bytes; the zip reader checks
/// its CRC once it is read to the end.
fn entry<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let mut file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("zip entry {name}")),
    };
    let size = file.size();
    ensure!(size <= limit, "zip entry {name} claims {size} bytes, more than the {limit} expected");
    let mut data = Vec::with_capacity(size as usize);
    (&mut file).take(size + 1).read_to_end(&mut data).with_context(|| format!("zip entry {name} is damaged"))?;
    ensure!(data.len() as u64 == size, "zip entry {name}: {} bytes, its header says {size}", data.len());
    Ok(Some(data))
}

/// The top dict: a state dict, or arcface_torch's checkpoint around one.
fn state_dict(root: &Value) -> Result<Rc<Dict>> {
    let Value::Dict(dict) = root else {
        bail!("not a state dict: the file holds a {} (save `model.state_dict()`, not the model)", root.kind())
    };
    let items = dict.items.borrow();
    let inner = items.iter().find(|(k, _)| matches!(k, Value::Str(s) if &**s == "state_dict_backbone"));
    match inner {
        Some((_, Value::Dict(inner))) => Ok(inner.clone()),
        _ => Ok(dict.clone()),
    }
}

struct Storages<'a, R: Read + Seek> {
    zip: &'a mut zip::ZipArchive<R>,
    prefix: String,
    loaded: HashMap<String, (DType, Rc<Vec<u8>>)>,
    limit: u64,
}

impl<R: Read + Seek> Storages<'_, R> {
    /// The storage a persistent id names, read once however many tensors view it.
    fn get(&mut self, pid: &[Value]) -> Result<(DType, Rc<Vec<u8>>)> {
        let [Value::Str(tag), Value::Global(class), Value::Str(key), Value::Str(_location), Value::Int(numel)] = pid
        else {
            bail!("its storage is not ('storage', torch.XStorage, key, location, numel)");
        };
        ensure!(&**tag == "storage", "its persistent id is a {tag:?}, not a storage");
        let dtype = match (class.0.as_str(), DType::from_storage(&class.1)) {
            ("torch", Some(d)) => d,
            _ => bail!("its storage type {}.{} is not one a state dict holds", class.0, class.1),
        };
        ensure!(!key.contains('/') && !key.is_empty(), "its storage key {key:?} is not a plain name");
        if let Some((d, data)) = self.loaded.get(&**key) {
            ensure!(*d == dtype, "storage {key} is read both as {d:?} and {dtype:?}");
            return Ok((dtype, data.clone()));
        }
        let bytes = u64::try_from(*numel)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size() as u64))
            .filter(|&b| b <= self.limit)
            .with_context(|| format!("its storage {key} claims {numel} elements, more than the file holds"))?;
        let name = format!("{}data/{key}", self.prefix);
        let data = entry(self.zip, &name, bytes)?.with_context(|| format!("its storage {name} is missing"))?;
        ensure!(data.len() as u64 == bytes, "storage {name} holds {} bytes, {numel} elements need {bytes}", data.len());
        let data = Rc::new(data);
        self.loaded.insert(key.to_string(), (dtype, data.clone()));
        Ok((dtype, data))
    }
}

/// A `_rebuild_tensor_v2` (or `_rebuild_parameter` around one) as contiguous bytes.
fn tensor<R: Read + Seek>(value: &Value, storages: &mut Storages<'_, R>) -> Result<StoredTensor> {
    let Value::Object(obj) = value else { bail!("is a {}, not a tensor: this is not a state dict", value.kind()) };
    match (obj.callable.0.as_str(), obj.callable.1.as_str(), &obj.args.items[..]) {
        ("torch._utils", "_rebuild_parameter", [inner, ..]) => tensor(inner, storages),
        ("torch._utils", "_rebuild_tensor_v2", [Value::Persistent(pid), Value::Int(offset), size, stride, ..]) => {
            let (dtype, data) = storages.get(&pid.items)?;
            let (shape, strides) = (ints(size, "size")?, ints(stride, "stride")?);
            ensure!(shape.len() == strides.len(), "size {shape:?} and stride {strides:?} differ in rank");
            let data = gather(&data, dtype.size(), *offset, &shape, &strides)?;
            Ok(StoredTensor { name: String::new(), dtype, shape, data })
        }
        _ => bail!("is a {}: not a plain dense tensor", describe(obj)),
    }
}

fn describe(obj: &Object) -> String {
    format!("{}.{}(...)", obj.callable.0, obj.callable.1)
}

fn ints(value: &Value, what: &str) -> Result<Vec<usize>> {
    let Value::Tuple(t) = value else { bail!("its {what} is a {}, not a tuple", value.kind()) };
    t.items
        .iter()
        .map(|v| match v {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => bail!("its {what} holds {}, not a count", other.kind()),
        })
        .collect()
}

/// The elements a strided view selects, checked to lie inside the storage, in row-major order.
fn gather(storage: &[u8], esize: usize, offset: i64, shape: &[usize], strides: &[usize]) -> Result<Vec<u8>> {
    let numel = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).context("its size overflows")?;
    let offset = usize::try_from(offset).ok().context("its storage offset is negative")?;
    let elements = storage.len() / esize;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let last = shape.iter().zip(strides).try_fold(offset, |a, (&s, &st)| a.checked_add((s - 1).checked_mul(st)?));
    ensure!(
        last.is_some_and(|l| l < elements),
        "its view (offset {offset}, size {shape:?}, stride {strides:?}) reaches past its storage of {elements} elements"
    );
    let contiguous = shape
        .iter()
        .rev()
        .zip(strides.iter().rev())
        .try_fold(1usize, |want, (&s, &st)| (s == 1 || st == want).then_some(want * s));
    if contiguous.is_some() {
        return Ok(storage[offset * esize..(offset + numel) * esize].to_vec());
    }
    let mut out = Vec::with_capacity(numel * esize);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        let at = offset + index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * esize..(at + 1) * esize]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

/// Writes `tensors` as `torch.save(state_dict)` does (uncompressed, storages 64-byte
/// aligned), to a temporary file renamed into place, so a failure leaves no partial file.
pub fn write(path: &Path, tensors: &[StoredTensor]) -> Result<()> {
    for t in tensors {
        ensure!(t.data.len() == t.numel() * t.dtype.size(), "tensor {:?}: data does not match its shape", t.name);
    }
    let stem =
        path.file_stem().and_then(|s| s.to_str()).filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    let prefix = format!("{}/", stem.filter(|s| !s.is_empty()).unwrap_or("archive"));
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let written = write_zip(std::io::BufWriter::new(file), &prefix, tensors)
        .and_then(|f| f.sync_all().map_err(Into::into))
        .with_context(|| format!("writing {}", partial.display()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path).with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
}

fn write_zip(out: std::io::BufWriter<std::fs::File>, prefix: &str, tensors: &[StoredTensor]) -> Result<std::fs::File> {
    let mut zip = zip::ZipWriter::new(out);
    let opts = |len: usize| {
        zip::write::FileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(len as u64 >= u32::MAX as u64)
    };
    let pkl = pickle_state_dict(tensors);
    let put = |zip: &mut zip::ZipWriter<_>, name: String, data: &[u8]| -> Result<()> {
        zip.start_file_aligned(name, opts(data.len()), 64)?;
        zip.write_all(data)?;
        Ok(())
    };
    put(&mut zip, format!("{prefix}data.pkl"), &pkl)?;
    put(&mut zip, format!("{prefix}byteorder"), b"little")?;
    for (i, t) in tensors.iter().enumerate() {
        put(&mut zip, format!("{prefix}data/{i}"), &t.data)?;
    }
    put(&mut zip, format!("{prefix}version"), b"3\n")?;
    let buffered = zip.finish()?;
    buffered.into_inner().map_err(|e| e.into_error().into())
}

/// Protocol 2, as torch: `OrderedDict()` filled by `SETITEMS` with `_rebuild_tensor_v2`
/// calls, storage `i` holding tensor `i`.
fn pickle_state_dict(tensors: &[StoredTensor]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    let global = |p: &mut Vec<u8>, module: &str, name: &str| {
        p.push(b'c');
        p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    };
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| match i32::try_from(v) {
        Ok(v) => {
            p.push(b'J');
            p.extend_from_slice(&v.to_le_bytes());
        }
        Err(_) => {
            p.extend_from_slice(&[0x8a, 8]);
            p.extend_from_slice(&(v as i64).to_le_bytes());
        }
    };
    let ordered_dict = |p: &mut Vec<u8>| {
        global(p, "collections", "OrderedDict");
        p.extend_from_slice(b")R");
    };
    ordered_dict(&mut p);
    p.push(b'(');
    for (i, t) in tensors.iter().enumerate() {
        text(&mut p, &t.name);
        global(&mut p, "torch._utils", "_rebuild_tensor_v2");
        p.extend_from_slice(b"((");
        text(&mut p, "storage");
        global(&mut p, "torch", t.dtype.storage());
        text(&mut p, &i.to_string());
        text(&mut p, "cpu");
        int(&mut p, t.numel());
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        t.shape.iter().for_each(|&s| int(&mut p, s));
        p.extend_from_slice(b"t(");
        contiguous_strides(&t.shape).into_iter().for_each(|s| int(&mut p, s));
        p.extend_from_slice(b"t\x89");
        ordered_dict(&mut p);
        p.extend_from_slice(b"tR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// Row-major strides, as torch gives a contiguous tensor (a size-0 dimension counts as 1).
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1].max(1);
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[usize], values: &[f32]) -> StoredTensor {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        StoredTensor { name: name.into(), dtype: DType::F32, shape: shape.to_vec(), data }
    }

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backbone.pth");
        let mut count = t("bn.num_batches_tracked", &[], &[]);
        count.dtype = DType::I64;
        count.data = 7i64.to_le_bytes().to_vec();
        let tensors = vec![t("w", &[2, 3], &[1., 2., 3., 4., 5., 6.]), count, t("empty", &[0, 4], &[])];
        write(&path, &tensors).unwrap();
        assert_eq!(read(&path).unwrap(), tensors);
        assert!(!path.with_extension("partial").exists());
    }

    #[test]
    fn strided_views_are_gathered_and_bounded() {
        let storage: Vec<u8> = (0u8..12).collect();
        assert_eq!(gather(&storage, 1, 0, &[3, 2], &[1, 3]).unwrap(), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(gather(&storage, 2, 1, &[2], &[1]).unwrap(), vec![2, 3, 4, 5]);
        let err = gather(&storage, 1, 2, &[3, 4], &[4, 1]).unwrap_err().to_string();
        assert!(err.contains("reaches past its storage of 12 elements"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pth");
        write(&path, &[t("a.weight", &[4], &[1., 2., 3., 4.])]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut} of {} parsed", bytes.len());
        }
    }
}
