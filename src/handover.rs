//! Commands that need libtorch run in `trainer-torch`, installed beside `trainer`. Handing
//! them over by `exec` keeps the PID and environment, so a rank started by `mpirun` or
//! `srun` stays that rank, and `trainer` itself never loads libtorch.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// The binary that runs `train`, `eval`, `embed`, `export`, `import` and `bench train|allreduce|head`.
pub const TORCH_BINARY: &str = "trainer-torch";

/// A command that runs in `trainer-torch`: its arguments, untouched (`--help` included).
#[derive(clap::Args, Debug)]
pub struct Forwarded {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., hide = true)]
    pub args: Vec<OsString>,
}

/// `train` under Slurm may be sent SIGUSR1 (the warning before the time limit) before
/// trainer-torch has installed its handler, and the signal's default action would kill the
/// rank. Ignored until then: the disposition survives `exec`, the handler replaces it, and
/// launch/slurm.sbatch repeats the signal until the ranks have stopped.
pub fn ignore_sigusr1_until_handled() {
    // SAFETY: setting a disposition to SIG_IGN runs no code in the signal's context.
    unsafe {
        libc::signal(libc::SIGUSR1, libc::SIG_IGN);
    }
}

/// Replaces this process with `trainer-torch` and the same arguments.
pub fn exec_torch() -> Result<()> {
    let exe = std::env::current_exe().context("locating the trainer binary")?;
    let torch = exe.with_file_name(TORCH_BINARY);
    if !torch.is_file() {
        bail!(
            "this command runs in {TORCH_BINARY}, the libtorch half of trainer, expected at {} \
             (`cargo build --release --workspace` builds both; install them side by side)",
            torch.display()
        );
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "trainer".into());
    let err = std::process::Command::new(&torch).arg0(argv0).args(args).exec();
    Err(err).with_context(|| format!("starting {}", torch.display()))
}
