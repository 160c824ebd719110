//! Refuses a mis-launched job. A binary built against one MPI and started by another's
//! launcher (OpenMPI's `mpirun` for this MPICH build, or `srun` without a PMI plugin)
//! sees a world of 1 in every process: N independent runs on one GPU, all writing the
//! same run directory. The launcher's own variables say how many processes it started;
//! when MPI's world size disagrees, every process stops with the fix.

use anyhow::{bail, Result};

/// How many processes a launcher says it started, and which variable says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub launcher: &'static str,
    pub variable: &'static str,
    pub size: usize,
}

/// Reads the launchers' variables, most specific first. Slurm counts only inside a job
/// step (`SLURM_STEP_NUM_TASKS`, set by srun), never a batch script's `SLURM_NTASKS`,
/// and not under an mpirun started inside the allocation.
pub fn expected(var: impl Fn(&str) -> Option<String>) -> Option<Expected> {
    let size = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
    let known: [(&'static str, &'static str); 2] = [
        ("OpenMPI's mpirun (or srun --mpi=pmix with OpenMPI)", "OMPI_COMM_WORLD_SIZE"),
        ("a PMI launcher (MPICH's mpirun/mpiexec.hydra, or srun --mpi=pmi2)", "PMI_SIZE"),
    ];
    for (launcher, variable) in known {
        if let Some(n) = size(variable) {
            return Some(Expected { launcher, variable, size: n });
        }
    }
    let inside_mpirun = var("HYDI_CONTROL_FD").is_some() || var("OMPI_COMM_WORLD_SIZE").is_some();
    if var("SLURM_STEP_ID").is_some() && !inside_mpirun {
        if let Some(n) = size("SLURM_STEP_NUM_TASKS") {
            return Some(Expected { launcher: "srun (Slurm job step)", variable: "SLURM_STEP_NUM_TASKS", size: n });
        }
    }
    None
}

/// The MPI this binary runs with (MPI_Get_library_version's first line).
pub fn mpi_library() -> String {
    #[cfg(feature = "mpi")]
    if let Ok(v) = mpi::environment::library_version() {
        return v.lines().next().unwrap_or("").trim().trim_end_matches('\0').to_string();
    }
    "no MPI (built without the mpi feature)".into()
}

/// `Err` with the whole explanation when `world` disagrees with the launcher.
pub fn check(world: usize, expected: Option<Expected>, library: &str) -> Result<()> {
    let Some(e) = expected else { return Ok(()) };
    if e.size == world {
        return Ok(());
    }
    let other = if library.to_lowercase().contains("open mpi") { "MPICH" } else { "OpenMPI" };
    bail!(
        "mis-launched: {} started {} processes ({}={}), but MPI here sees a world of {world}. This \
         trainer-torch runs with {library}; the launcher belongs to another MPI (or srun has no PMI plugin), \
         so every process would train alone on the same GPU and run directory. Start it with this MPI's own \
         launcher (launch/mpirun.sh picks it; mpirun.mpich for MPICH, mpirun.openmpi for OpenMPI), build \
         against {other} (TRAINER_MPI={} . launch/setup.sh), or under Slurm use srun --mpi=pmi2 (MPICH) / \
         --mpi=pmix (OpenMPI)",
        e.launcher,
        e.size,
        e.variable,
        e.size,
        other.to_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn each_launcher_is_read() {
        assert_eq!(expected(env(&[("OMPI_COMM_WORLD_SIZE", "4")])).unwrap().size, 4);
        assert_eq!(expected(env(&[("PMI_SIZE", "2"), ("PMI_RANK", "0")])).unwrap().variable, "PMI_SIZE");
        let step =
            expected(env(&[("SLURM_STEP_ID", "0"), ("SLURM_STEP_NUM_TASKS", "8"), ("SLURM_NTASKS", "8")])).unwrap();
        assert_eq!((step.variable, step.size), ("SLURM_STEP_NUM_TASKS", 8));
    }

    #[test]
    fn a_batch_script_or_mpirun_inside_slurm_is_not_a_step() {
        assert_eq!(expected(env(&[("SLURM_NTASKS", "8"), ("SLURM_JOB_ID", "1")])), None);
        let nested = env(&[("SLURM_STEP_ID", "0"), ("SLURM_STEP_NUM_TASKS", "1"), ("HYDI_CONTROL_FD", "5")]);
        assert_eq!(expected(nested), None);
    }

    #[test]
    fn a_world_of_one_under_a_launcher_of_four_is_refused_with_the_fix() {
        let e = expected(env(&[("OMPI_COMM_WORLD_SIZE", "4")]));
        let msg = check(1, e.clone(), "MPICH Version: 4.0.2").unwrap_err().to_string();
        assert!(
            msg.contains("OpenMPI's mpirun")
                && msg.contains("started 4 processes (OMPI_COMM_WORLD_SIZE=4)")
                && msg.contains("MPICH Version: 4.0.2"),
            "{msg}"
        );
        assert!(msg.contains("TRAINER_MPI=openmpi") && msg.contains("--mpi=pmi2"), "{msg}");
        assert!(check(4, e, "MPICH").is_ok());
        assert!(check(1, None, "MPICH").is_ok());
    }
}
