//! insightface's verification pair sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...):
//! a pickle of `(list of encoded images, list of issame)`, images 2i and 2i+1 forming pair
//! i. Read without Python by a strict unpickler that knows Python 2's `str` opcodes,
//! Python 3's `bytes` (protocols 2 to 5, including protocol 2's `_codecs.encode`), and an
//! issame given as Python bools, numpy bool scalars or a 1-D numpy bool array.

use super::pickle::{self, Object, Value};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSet {
    /// Encoded images (JPEG or PNG bytes), shared where the pickle shares them.
    pub images: Vec<Arc<[u8]>>,
    pub issame: Vec<bool>,
}

impl PairSet {
    pub fn read(path: &Path) -> Result<PairSet> {
        let data = std::fs::read(path).with_context(|| format!("reading pair set {}", path.display()))?;
        PairSet::parse(&data).with_context(|| format!("pair set {}", path.display()))
    }

    /// Parses the bytes of a pair file; errors say what was wrong, and where.
    pub fn parse(data: &[u8]) -> Result<PairSet> {
        let value = pickle::load(data)?;
        let (images, issame) = top_pair(&value)?;
        let images = image_list(images)?;
        let issame = bool_list(issame)?;
        if images.len() % 2 != 0 {
            bail!("{} images: an odd number cannot form pairs", images.len());
        }
        if images.len() != 2 * issame.len() {
            bail!("{} images but {} issame labels: expected 2 images per label", images.len(), issame.len());
        }
        Ok(PairSet { images, issame })
    }

    pub fn len(&self) -> usize {
        self.issame.len()
    }

    pub fn is_empty(&self) -> bool {
        self.issame.is_empty()
    }

    /// Pair `i`: its two encoded images and whether they show the same person.
    pub fn pair(&self, i: usize) -> (&[u8], &[u8], bool) {
        (&self.images[2 * i], &self.images[2 * i + 1], self.issame[i])
    }
}

fn top_pair(value: &Value) -> Result<(Value, Value)> {
    let items: Vec<Value> = match value {
        Value::Tuple(t) => t.items.clone(),
        Value::List(l) => l.items.borrow().clone(),
        other => bail!("the pickle holds a {}, expected a (images, issame) tuple", other.kind()),
    };
    match <[Value; 2]>::try_from(items) {
        Ok([images, issame]) => Ok((images, issame)),
        Err(items) => bail!("the pickle holds {} values, expected 2: (images, issame)", items.len()),
    }
}

fn image_list(value: Value) -> Result<Vec<Arc<[u8]>>> {
    let Value::List(list) = value else {
        bail!("the images are a {}, expected a list of bytes", value.kind());
    };
    let items = list.items.borrow();
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Bytes(b) => Ok(b.clone()),
            other => bail!("image {i} is a {}, expected bytes", other.kind()),
        })
        .collect()
}

fn bool_list(value: Value) -> Result<Vec<bool>> {
    match value {
        Value::List(list) => {
            let items = list.items.borrow();
            items.iter().enumerate().map(|(i, v)| one_bool(v).with_context(|| format!("issame[{i}]"))).collect()
        }
        Value::Object(o) => numpy_array(&o).context("issame"),
        other => bail!("issame is a {}, expected a list of bools or a numpy bool array", other.kind()),
    }
}

fn one_bool(value: &Value) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Object(o) if is_numpy(&o.callable, "multiarray", "scalar") => {
            let [dtype, Value::Bytes(data)] = &o.args.items[..] else {
                bail!("a numpy scalar whose arguments are not (dtype, bytes)")
            };
            check_bool_dtype(dtype)?;
            bools(data, 1)?.pop().context("empty numpy scalar")
        }
        other => bail!("a {}, expected a bool", other.kind()),
    }
}

/// `numpy.core.X.name` or numpy 2's `numpy._core.X.name`.
fn is_numpy(callable: &(String, String), module: &str, name: &str) -> bool {
    let m = callable.0.as_str();
    callable.1 == name
        && (m.strip_prefix("numpy.core.") == Some(module) || m.strip_prefix("numpy._core.") == Some(module))
}

/// A 1-D bool ndarray, pickled as `_reconstruct(...)` + BUILD (protocols 2–4) or as
/// `_frombuffer(data, dtype, shape, order)` (protocol 5).
fn numpy_array(o: &Object) -> Result<Vec<bool>> {
    let (shape, dtype, data) = if is_numpy(&o.callable, "multiarray", "_reconstruct") {
        let state = o.state.borrow();
        let Some(Value::Tuple(state)) = &*state else { bail!("a numpy array without its state") };
        let [_version, shape, dtype, _fortran, data] = &state.items[..] else {
            bail!("a numpy array state of {} values, expected 5", state.items.len());
        };
        (shape.clone(), dtype.clone(), data.clone())
    } else if is_numpy(&o.callable, "numeric", "_frombuffer") {
        let [data, dtype, shape, _order] = &o.args.items[..] else {
            bail!("numpy _frombuffer with {} arguments, expected 4", o.args.items.len())
        };
        (shape.clone(), dtype.clone(), data.clone())
    } else {
        bail!("a {}.{}(...) object, expected a numpy bool array", o.callable.0, o.callable.1);
    };
    check_bool_dtype(&dtype)?;
    let Value::Tuple(shape) = shape else { bail!("a numpy array whose shape is a {}", shape.kind()) };
    let [Value::Int(n)] = shape.items[..] else {
        bail!("a numpy array of {} dimensions, expected 1", shape.items.len())
    };
    let Value::Bytes(data) = data else { bail!("a numpy bool array whose data is a {}", data.kind()) };
    bools(&data, n)
}

fn check_bool_dtype(dtype: &Value) -> Result<()> {
    let Value::Object(d) = dtype else { bail!("a numpy dtype that is a {}", dtype.kind()) };
    if d.callable != ("numpy".to_string(), "dtype".to_string()) {
        bail!("a dtype made by {}.{}", d.callable.0, d.callable.1);
    }
    let descr = match d.args.items.first() {
        Some(Value::Str(s)) => s.to_string(),
        Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        other => bail!("a numpy dtype described by {}", other.map_or("nothing".into(), Value::kind)),
    };
    if descr != "b1" {
        bail!("a numpy array of dtype {descr:?}, expected bool (\"b1\")");
    }
    Ok(())
}

fn bools(data: &[u8], n: i64) -> Result<Vec<bool>> {
    if n < 0 || n as u64 != data.len() as u64 {
        bail!("a numpy bool array of shape ({n},) with {} data bytes", data.len());
    }
    data.iter()
        .enumerate()
        .map(|(i, &b)| match b {
            0 | 1 => Ok(b == 1),
            _ => bail!("numpy bool {i} has byte value {b}"),
        })
        .collect()
}
