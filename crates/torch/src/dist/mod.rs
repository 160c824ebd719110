//! Communication backends behind one interface: single process, MPI (CPU), NCCL (CUDA).
//!
//! `launch_info()` reads rank/world/local rank before tch touches a device; `init()` then
//! builds the backend. Both share one MPI initialisation (MPI allows only one per process).

pub mod bucket;
#[cfg(feature = "mpi")]
mod comm_thread;
pub mod completion;
#[cfg(feature = "nccl")]
mod cuda_stream;
pub mod failure;
pub mod launch_check;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
#[cfg(feature = "nccl")]
mod nccl_library;
#[cfg(feature = "mpi")]
mod reducer;
pub mod single;
pub mod watchdog;

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Min,
    Max,
}

/// The collectives a data-parallel training step needs.
pub trait Comm {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    fn local_rank(&self) -> usize;
    /// "single", "mpi" or "nccl" (gradients over NCCL; scalars and bytes still over MPI).
    fn backend(&self) -> &'static str;
    /// Averages gradients in place across ranks: flattened buckets of about `bucket_bytes`,
    /// optional fp16 compression. CPU tensors over MPI, CUDA tensors over NCCL.
    fn all_reduce_mean(&self, tensors: &[tch::Tensor]) -> anyhow::Result<()>;
    /// Starts averaging one group of gradients (a backbone stage's, as soon as its
    /// backward is done); `finish_means` waits for all of them. Backends that cannot
    /// overlap average at once. Every rank starts the same groups in the same order.
    fn start_mean(&self, tensors: &[tch::Tensor]) -> anyhow::Result<()> {
        self.all_reduce_mean(tensors)
    }
    /// Waits for every `start_mean` since the last call; the seconds it waited.
    fn finish_means(&self) -> anyhow::Result<f64> {
        Ok(0.0)
    }
    /// Whether `start_mean` returns before the average is done (so a staged backward pays).
    fn overlaps(&self) -> bool {
        false
    }
    /// Overwrites every tensor (any dtype, e.g. BatchNorm's i64 counter) with root's values.
    fn broadcast(&self, tensors: &[tch::Tensor], root: usize) -> anyhow::Result<()>;
    fn all_reduce_f64(&self, values: &mut [f64], op: ReduceOp) -> anyhow::Result<()>;
    /// Every rank's `t` concatenated along dim 0 in rank order, on `t`'s device (Partial FC's
    /// embeddings and labels). Every rank must pass the same shape and dtype.
    fn all_gather(&self, t: &tch::Tensor) -> anyhow::Result<tch::Tensor>;
    /// Sums (or takes the min or max of) an f32 tensor over ranks, in place (Partial FC's
    /// softmax terms and embedding gradients).
    fn all_reduce(&self, t: &tch::Tensor, op: ReduceOp) -> anyhow::Result<()>;
    /// Root's bytes to every rank; the other ranks' vectors are resized to match.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> anyhow::Result<()>;
    fn barrier(&self) -> anyhow::Result<()>;
    /// A barrier that may wait up to `timeout` (rank 0 writing a checkpoint) instead of
    /// the collective time-out.
    fn barrier_within(&self, timeout: Duration) -> anyhow::Result<()> {
        let _ = timeout;
        self.barrier()
    }
    /// Ends the whole job: "rank K: <reason>" on stderr, then MPI_Abort (exit(1) single).
    fn abort(&self, reason: &str) -> !;
}

/// Bucket sizes are given in MiB, as DDP's `bucket_cap_mb`.
pub fn mib_to_bytes(mib: f64) -> usize {
    (mib * (1u64 << 20) as f64) as usize
}

#[derive(Clone, Debug)]
pub struct CommOptions {
    /// Gradients are reduced in flat buffers of about this size (DDP and Horovod use 25 MiB).
    pub bucket_bytes: usize,
    /// Send gradients as f16 (halves the bytes; see `mpi.rs` / `nccl.rs` for the numerics).
    pub fp16: bool,
    /// A collective in flight longer than this aborts the job (a peer died or hung).
    pub timeout: Duration,
}

impl Default for CommOptions {
    fn default() -> Self {
        CommArgs::default().options()
    }
}

/// The collective settings as flags: `trainer train`'s `[comm]` section and `trainer bench
/// allreduce`'s flags, one definition for both.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct CommArgs {
    /// All-reduce bucket size in MiB (DDP's bucket_cap_mb).
    #[arg(long, default_value_t = 25.0, value_parser = trainer_data::bounds::positive(65536.0))]
    pub bucket_mb: f64,
    /// Compress gradients to fp16 for the all-reduce.
    #[arg(long)]
    pub fp16_allreduce: bool,
    /// Seconds a collective may wait for a peer before the job is aborted.
    #[arg(long, default_value_t = 60.0, value_parser = trainer_data::bounds::seconds)]
    pub collective_timeout: f64,
    /// All-reduce each backbone stage's gradients while the earlier stages' backward runs
    /// (training steps; the results are bit-identical either way).
    #[arg(long, value_enum, default_value = "on")]
    pub overlap: Overlap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    On,
    Off,
}

impl Overlap {
    pub fn on(self) -> bool {
        self == Overlap::On
    }
}

impl Default for CommArgs {
    fn default() -> Self {
        trainer_data::settings::clap_defaults()
    }
}

impl CommArgs {
    pub fn options(&self) -> CommOptions {
        CommOptions {
            bucket_bytes: mib_to_bytes(self.bucket_mb),
            fp16: self.fp16_allreduce,
            timeout: Duration::from_secs_f64(self.collective_timeout),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchInfo {
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes on this machine (MPI shared-memory split): the GPU index.
    pub local_rank: usize,
    /// Ranks on this machine: split the cores (libtorch threads, decoders) between them.
    pub local_world: usize,
    /// "mpirun", "srun" or "single".
    pub launcher: &'static str,
}

impl LaunchInfo {
    /// A process on its own: rank 0 of 1.
    pub fn single() -> LaunchInfo {
        LaunchInfo { rank: 0, world: 1, local_rank: 0, local_world: 1, launcher: "single" }
    }

    /// This rank's share of the machine's cores (libtorch threads): the ranks on one
    /// machine must not fight each other, or MPI, for them.
    pub fn threads_per_rank(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / self.local_world.max(1)).max(1)
    }
}

/// Which launcher started us, from the variables launchers set; None when run directly,
/// so a plain `trainer ...` never initialises MPI.
pub fn launcher_from_env(var: impl Fn(&str) -> bool) -> Option<&'static str> {
    let hydra_or_ompi = var("HYDI_CONTROL_FD") || var("OMPI_COMM_WORLD_SIZE");
    if var("SLURM_STEP_ID") && var("SLURM_PROCID") && !hydra_or_ompi {
        return Some("srun");
    }
    let pmi = ["PMI_SIZE", "PMI_RANK", "PMIX_RANK"].iter().any(|v| var(v));
    (hydra_or_ompi || pmi).then_some("mpirun")
}

fn env_launcher() -> Option<&'static str> {
    launcher_from_env(|v| std::env::var_os(v).is_some())
}

/// This process's rank as its launcher numbered it, read before MPI starts (to quiet
/// the logs of ranks other than 0 from the first line on).
pub fn env_rank() -> Option<usize> {
    let read = |v: &str| std::env::var(v).ok()?.trim().parse().ok();
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|v| read(v))
        .or_else(|| std::env::var_os("SLURM_STEP_ID").and_then(|_| read("SLURM_PROCID")))
}

/// Whether a launcher (mpirun, srun) started this process.
pub fn under_launcher() -> bool {
    env_launcher().is_some()
}

/// Rank info before tch is touched (to choose cuda:<local_rank>). Initialises MPI when
/// started by a launcher; `init` reuses that initialisation. A world that disagrees with
/// the launcher's own count is refused (`launch_check`).
pub fn launch_info() -> anyhow::Result<LaunchInfo> {
    let info = launch_info_unchecked();
    let expected = launch_check::expected(|v| std::env::var(v).ok());
    if let Err(e) = launch_check::check(info.world, expected, &launch_check::mpi_library()) {
        finalize();
        return Err(e);
    }
    failure::set_rank(info.rank);
    Ok(info)
}

fn launch_info_unchecked() -> LaunchInfo {
    #[cfg(feature = "mpi")]
    if let Some(launcher) = env_launcher() {
        if let Some(info) = mpi::launch_info(launcher) {
            return info;
        }
    }
    #[cfg(not(feature = "mpi"))]
    if let Some(launcher) = env_launcher() {
        tracing::warn!("started by {launcher}, but built without the mpi feature: every process runs alone");
    }
    LaunchInfo::single()
}

/// Single process when not under a launcher, world is 1, or the mpi feature is off; MPI
/// otherwise; NCCL for gradients when `device` is CUDA (probing libnccl first). `info` is
/// what `launch_info` returned (it chose the device).
pub fn init(info: &LaunchInfo, device: tch::Device, opts: CommOptions) -> anyhow::Result<Box<dyn Comm>> {
    if info.world == 1 {
        return Ok(Box::new(single::Single));
    }
    #[cfg(feature = "mpi")]
    {
        let mpi = Box::new(mpi::Mpi::new(info.clone(), opts.clone())?);
        if device.is_cuda() {
            #[cfg(feature = "nccl")]
            return Ok(Box::new(nccl::Nccl::new(mpi, device, opts)?));
            #[cfg(not(feature = "nccl"))]
            tracing::warn!("built without the nccl feature: CUDA gradients go through host memory and MPI");
        }
        Ok(mpi)
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = (device, opts);
        unreachable!("world > 1 requires the mpi feature")
    }
}

/// Ends the whole job with `reason` on stderr: MPI_Abort under a launcher, exit(1) alone.
/// For errors that happen where no `Comm` is at hand.
pub fn abort_job(reason: &str) -> ! {
    failure::say(reason);
    abort_job_after_saying()
}

/// `abort_job` once the reason is on stderr.
fn abort_job_after_saying() -> ! {
    #[cfg(feature = "mpi")]
    if env_launcher().is_some() && mpi::initialized() {
        mpi::abort_world_after_saying();
    }
    std::process::exit(1)
}

/// Ends MPI cleanly at the end of a successful run (idempotent; no-op when single).
pub fn finalize() {
    #[cfg(feature = "mpi")]
    mpi::finalize();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |v| vars.contains(&v)
    }

    #[test]
    fn launcher_detection() {
        assert_eq!(launcher_from_env(env_of(&[])), None);
        assert_eq!(launcher_from_env(env_of(&["PMI_RANK", "PMI_SIZE", "HYDI_CONTROL_FD"])), Some("mpirun"));
        assert_eq!(launcher_from_env(env_of(&["OMPI_COMM_WORLD_SIZE"])), Some("mpirun"));
        assert_eq!(launcher_from_env(env_of(&["SLURM_STEP_ID", "SLURM_PROCID", "PMI_RANK"])), Some("srun"));
        // mpirun inside a Slurm allocation is still mpirun.
        let nested = env_of(&["SLURM_STEP_ID", "SLURM_PROCID", "HYDI_CONTROL_FD", "PMI_RANK"]);
        assert_eq!(launcher_from_env(nested), Some("mpirun"));
        // An sbatch script's own shell (no step) is not a launch.
        assert_eq!(launcher_from_env(env_of(&["SLURM_PROCID"])), None);
    }

    #[test]
    fn direct_run_is_single() {
        if env_launcher().is_none() {
            let info = launch_info().unwrap();
            assert_eq!((info.rank, info.world, info.launcher), (0, 1, "single"));
        }
    }
}
