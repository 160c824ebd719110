//! `--device`: one meaning everywhere (training, evaluation, benchmarks).
//!
//! `auto` is this rank's GPU when libtorch sees CUDA, else the CPU; `cuda` is this rank's
//! GPU: the local rank (as DDP's `LOCAL_RANK`) modulo the GPUs this process sees, so a
//! launcher that gives each task its own visible GPU (Slurm's `--gpus-per-task`, a
//! per-rank `CUDA_VISIBLE_DEVICES`) gets cuda:0 on every rank; `cuda:N` names one GPU,
//! which only makes sense with one rank per machine; `cpu` is the CPU.

use anyhow::{bail, Context, Result};
use tch::Device;

use crate::dist::LaunchInfo;

/// `--device`: the one definition every command that runs a model flattens in. It is
/// stored as a plain string (`"device": "auto"`) in `config.json` and recipes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(transparent)]
pub struct DeviceArg {
    /// auto (this rank's GPU when CUDA exists, else cpu), cpu, cuda (cuda:<local rank>), cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_spec)]
    pub device: String,
}

impl Default for DeviceArg {
    fn default() -> Self {
        trainer_data::settings::clap_defaults()
    }
}

impl DeviceArg {
    pub fn resolve(&self, launch: &LaunchInfo) -> Result<Device> {
        resolve(&self.device, launch)
    }
}

/// The spelling only; whether the GPU exists is known when the device is opened.
fn parse_spec(s: &str) -> Result<String, String> {
    let gpu = s.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
    match s {
        "auto" | "cpu" | "cuda" => Ok(s.to_string()),
        _ if gpu => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not auto, cpu, cuda or cuda:N")),
    }
}

fn resolve(spec: &str, launch: &LaunchInfo) -> Result<Device> {
    match spec {
        "auto" if tch::Cuda::is_available() => local_gpu(launch),
        "auto" | "cpu" => Ok(Device::Cpu),
        "cuda" => {
            require_cuda(spec)?;
            local_gpu(launch)
        }
        s => {
            let n: usize = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("--device {s:?} is not auto, cpu, cuda or cuda:N"))?;
            require_cuda(s)?;
            if launch.local_world > 1 {
                bail!(
                    "--device {s} with {} ranks on this machine would put them all on one GPU; \
                     use --device cuda (each rank takes cuda:<local rank>)",
                    launch.local_world
                );
            }
            gpu(n)
        }
    }
}

fn local_gpu(launch: &LaunchInfo) -> Result<Device> {
    let visible = tch::Cuda::device_count().max(0) as usize;
    let index = gpu_index(launch.local_rank, visible)?;
    tracing::info!(
        "rank {}: device cuda:{index} (local rank {} of {}, {visible} GPU(s) visible)",
        launch.rank,
        launch.local_rank,
        launch.local_world
    );
    gpu(index)
}

/// The local rank modulo the GPUs this process sees. Two ranks that see the same GPUs and
/// land on one of them are refused by NCCL ("duplicate GPU"), which names it.
fn gpu_index(local_rank: usize, visible: usize) -> Result<usize> {
    if visible == 0 {
        bail!("no GPU is visible to this process (CUDA_VISIBLE_DEVICES empty?)");
    }
    Ok(local_rank % visible)
}

fn gpu(n: usize) -> Result<Device> {
    let count = tch::Cuda::device_count().max(0) as usize;
    if n >= count {
        bail!("GPU cuda:{n} is not available (libtorch sees {count} GPU(s) on this machine; more ranks per machine than GPUs?)");
    }
    Ok(Device::Cuda(n))
}

fn require_cuda(spec: &str) -> Result<()> {
    if !tch::Cuda::is_available() {
        bail!("--device {spec}: CUDA is not available (libtorch sees 0 GPUs on this machine; see docs/install.md#another-libtorch-older-gpus)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(local_rank: usize, local_world: usize) -> LaunchInfo {
        LaunchInfo { rank: local_rank, world: local_world, local_rank, local_world, launcher: "single" }
    }

    #[test]
    fn cpu_and_auto_without_cuda() {
        assert_eq!(resolve("cpu", &launch(1, 2)).unwrap(), Device::Cpu);
        if !tch::Cuda::is_available() {
            assert_eq!(resolve("auto", &launch(1, 2)).unwrap(), Device::Cpu);
            assert!(resolve("cuda", &launch(0, 1))
                .unwrap_err()
                .to_string()
                .contains("CUDA is not available (libtorch sees 0"));
        }
    }

    #[test]
    fn local_rank_wraps_over_the_visible_gpus() {
        // 8 GPUs seen by each of 8 ranks; one GPU seen by each (Slurm --gpus-per-task=1).
        assert_eq!((0..8).map(|r| gpu_index(r, 8).unwrap()).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
        assert!((0..4).all(|r| gpu_index(r, 1).unwrap() == 0));
        assert_eq!(gpu_index(5, 4).unwrap(), 1);
        assert!(gpu_index(0, 0).unwrap_err().to_string().contains("no GPU is visible"));
    }

    #[test]
    fn bad_specs_are_named() {
        for bad in ["gpu", "cuda:x", "cuda:-1", ""] {
            let err = resolve(bad, &launch(0, 1)).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
