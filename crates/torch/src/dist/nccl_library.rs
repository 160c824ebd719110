//! Finding and loading NCCL: cudarc's dynamic loader panics when it finds nothing and
//! never tries the real soname `libnccl.so.2` (the name PyTorch's wheel ships), and it
//! honours no variable to point it elsewhere. So the library is probed here, by path, and
//! its few entry points are called through cudarc's NCCL types (`cudarc::nccl::sys`).

use anyhow::{bail, Result};
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::OnceLock;

type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> ncclResult_t;
type InitRank = unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> ncclResult_t;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclRedOp_t,
    ncclComm_t,
    cudaStream_t,
) -> ncclResult_t;
type AllGather =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclComm_t, cudaStream_t) -> ncclResult_t;
type Broadcast = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    c_int,
    ncclComm_t,
    cudaStream_t,
) -> ncclResult_t;
type Destroy = unsafe extern "C" fn(ncclComm_t) -> ncclResult_t;
type ErrorString = unsafe extern "C" fn(ncclResult_t) -> *const c_char;
type GetVersion = unsafe extern "C" fn(*mut c_int) -> ncclResult_t;
type CommAbort = unsafe extern "C" fn(ncclComm_t) -> ncclResult_t;
type GetAsyncError = unsafe extern "C" fn(ncclComm_t, *mut ncclResult_t) -> ncclResult_t;

/// The NCCL entry points this backend uses, from one probed library.
pub struct Library {
    pub path: PathBuf,
    /// e.g. 22805 for 2.28.5.
    pub version: i32,
    pub(super) get_unique_id: GetUniqueId,
    pub(super) init_rank: InitRank,
    pub(super) all_reduce: AllReduce,
    pub(super) all_gather: AllGather,
    pub(super) broadcast: Broadcast,
    pub(super) destroy: Destroy,
    pub(super) error_string: ErrorString,
    pub(super) comm_abort: CommAbort,
    pub(super) get_async_error: GetAsyncError,
    _lib: libloading::Library,
}

/// Where to look, in order: $NCCL_LIBRARY, the system's soname and dev name, and the
/// `nvidia/nccl` wheel beside the libtorch this process runs (PyTorch's own NCCL).
pub fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("NCCL_LIBRARY").map(PathBuf::from).into_iter().collect();
    out.extend(["libnccl.so.2", "libnccl.so"].map(PathBuf::from));
    let torch_dirs =
        loaded_libtorch_dir().into_iter().chain(std::env::var_os("LIBTORCH").map(|d| PathBuf::from(d).join("lib")));
    for dir in torch_dirs {
        let wheel = dir.join("../../nvidia/nccl/lib/libnccl.so.2");
        if !out.contains(&wheel) {
            out.push(wheel);
        }
    }
    out
}

/// The directory of the libtorch_cpu.so mapped into this process.
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so"))?;
    Some(PathBuf::from(path).parent()?.to_path_buf())
}

/// Opens the first candidate that loads and has every entry point.
pub fn probe_from(candidates: &[PathBuf]) -> Result<Library> {
    let mut tried = Vec::new();
    for path in candidates {
        match open(path) {
            Ok(lib) => return Ok(lib),
            Err(e) => tried.push(format!("{} ({e})", path.display())),
        }
    }
    bail!("NCCL not found (tried: {}); install nvidia-nccl-cu13 or set NCCL_LIBRARY", tried.join(", "))
}

fn open(path: &PathBuf) -> Result<Library> {
    unsafe {
        let lib = libloading::Library::new(path)?;
        let get_version: GetVersion = *lib.get(b"ncclGetVersion\0")?;
        let mut version = 0;
        get_version(&mut version);
        Ok(Library {
            path: path.clone(),
            version,
            get_unique_id: *lib.get(b"ncclGetUniqueId\0")?,
            init_rank: *lib.get(b"ncclCommInitRank\0")?,
            all_reduce: *lib.get(b"ncclAllReduce\0")?,
            all_gather: *lib.get(b"ncclAllGather\0")?,
            broadcast: *lib.get(b"ncclBroadcast\0")?,
            destroy: *lib.get(b"ncclCommDestroy\0")?,
            error_string: *lib.get(b"ncclGetErrorString\0")?,
            comm_abort: *lib.get(b"ncclCommAbort\0")?,
            get_async_error: *lib.get(b"ncclCommGetAsyncError\0")?,
            _lib: lib,
        })
    }
}

/// The process-wide NCCL, probed once.
pub fn library() -> Result<&'static Library> {
    static LIB: OnceLock<Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(|| probe_from(&candidates()).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

impl Library {
    pub(super) fn check(&self, r: ncclResult_t, what: &str, rank: usize) -> Result<()> {
        if r == ncclResult_t::ncclSuccess {
            return Ok(());
        }
        let msg = unsafe { CStr::from_ptr((self.error_string)(r)) }.to_string_lossy();
        bail!("rank {rank}: NCCL {what} failed: {msg} ({r:?})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn missing_library_is_a_clear_error() {
        let err = probe_from(&[PathBuf::from("/nonexistent/libnccl.so.2"), PathBuf::from("libnccl-missing.so")])
            .err()
            .expect("a missing library must not load");
        let msg = format!("{err:#}");
        assert!(msg.starts_with("NCCL not found (tried: /nonexistent/libnccl.so.2"), "{msg}");
        assert!(msg.contains("libnccl-missing.so") && msg.contains("set NCCL_LIBRARY"), "{msg}");
    }

    #[test]
    fn candidates_include_the_torch_wheel() {
        let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu)); // libtorch is mapped
        let c = candidates();
        assert!(c.iter().any(|p| p.ends_with("nvidia/nccl/lib/libnccl.so.2")), "{c:?}");
    }
}
