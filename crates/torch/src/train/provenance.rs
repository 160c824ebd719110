//! What ran, for the `start` event of log.txt: versions of everything the numbers depend
//! on, the hosts, and how many records each rank reads.

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::pools::Pools;
use crate::dist::{Comm, ReduceOp};

/// trainer (with its git revision), libtorch, CUDA, cuDNN, NCCL and MPI.
pub fn versions(backend: &str) -> Value {
    let cuda = tch::Cuda::is_available();
    let nccl = if backend == "nccl" { nccl_version() } else { None };
    json!({
        "trainer": env!("CARGO_PKG_VERSION"),
        "git": option_env!("TRAINER_GIT_REV").unwrap_or("unknown"),
        "libtorch": option_env!("TRAINER_LIBTORCH_VERSION").unwrap_or("unknown"),
        "cuda_runtime": cuda.then(tch::utils::version_cudart),
        "cudnn": (cuda && tch::Cuda::cudnn_is_available()).then(tch::utils::version_cudnn),
        "nccl": nccl,
        "mpi": crate::dist::launch_check::mpi_library(),
    })
}

fn nccl_version() -> Option<i32> {
    #[cfg(feature = "nccl")]
    return crate::dist::nccl::library().ok().map(|l| l.version);
    #[cfg(not(feature = "nccl"))]
    None
}

/// Ranks per host, e.g. {"node1": 4, "node2": 4}: each rank's hostname in turn.
pub fn hosts(comm: &dyn Comm) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for r in 0..comm.world() {
        let mut name = if comm.rank() == r { hostname().into_bytes() } else { Vec::new() };
        comm.broadcast_bytes(&mut name, r)?;
        *out.entry(String::from_utf8_lossy(&name).into_owned()).or_insert(0) += 1;
    }
    Ok(out)
}

/// Per pool (task data), the records each rank reads.
pub fn records_per_rank(comm: &dyn Comm, pools: &Pools) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for pool in pools.iter() {
        let mut counts = vec![0.0; comm.world()];
        counts[comm.rank()] = pool.view.records.len() as f64;
        comm.all_reduce_f64(&mut counts, ReduceOp::Sum)?;
        out.insert(pool.key.to_string(), json!(counts.iter().map(|&c| c as u64).collect::<Vec<_>>()));
    }
    Ok(Value::Object(out))
}

/// This machine's name, as the lock file and the start event record it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".into()
    }
}

/// `SLURM_RESTART_COUNT`: how many times Slurm has requeued this job (for the `resume` event).
pub fn slurm_restart_count() -> Option<u64> {
    std::env::var("SLURM_RESTART_COUNT").ok()?.trim().parse().ok()
}
