//! The stop request a scheduler or a user sends, as a flag the training loop polls.

use anyhow::Result;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// SIGINT, SIGTERM and SIGUSR1 (Slurm's warning before the time limit, forwarded by
/// launch/slurm.sbatch) set a flag; the loop notices it, agrees with the other ranks, and
/// stops after a checkpoint. A second Ctrl-C kills the process at once; TERM and USR1 may
/// come several times from a scheduler (slurmd, srun and the batch script each send one),
/// so only SIGKILL ends a rank that is writing its checkpoint.
pub fn install_signal_flag() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(&flag))?;
    for sig in [SIGINT, SIGTERM, SIGUSR1] {
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}
