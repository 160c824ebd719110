//! Every failure ends the whole job, with its reason. A panic on any rank (a bug, or a
//! CUDA out-of-memory error, which tch raises as a panic) is logged and then aborts the
//! job: the live NCCL communicator first (so no kernel keeps spinning), then MPI_Abort,
//! with an `_exit` backstop. Alone, a panic ends the process as usual.
//!
//! `TRAINER_FAULT=RANK:STEP:KIND` injects a fault for tests. At step STEP, that rank:
//! `panic`s at the start of the step; returns an `error` from it (the path every ordinary
//! failure takes); `hang`s inside its first all-reduce; drops one gradient from its
//! all-reduce (`layout`, a model built differently); settles with its plateau judge's
//! digest changed (`drift`, a judge that disagrees with rank 0's); or (STEP 0, before
//! training, `stale`) lists a run's checkpoints without the newest, as a shared filesystem
//! with stale metadata can.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

static RANK: AtomicUsize = AtomicUsize::new(0);
/// The step the loop is in (1-based), for fault injection.
static STEP: AtomicU64 = AtomicU64::new(0);
/// What to say about memory when a CUDA out-of-memory error ends the run.
static MEMORY_HINT: Mutex<String> = Mutex::new(String::new());

pub fn set_rank(rank: usize) {
    RANK.store(rank, Ordering::Relaxed);
}

pub fn set_step(step: u64) {
    STEP.store(step, Ordering::Relaxed);
}

/// e.g. "batch size 50 per rank, effective batch 200".
pub fn set_memory_hint(text: String) {
    *MEMORY_HINT.lock().unwrap_or_else(|e| e.into_inner()) = text;
}

/// Installs the panic hook (once, at start-up, in every command of `trainer-torch`).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let rank = RANK.load(Ordering::Relaxed);
        let what = payload(info.payload());
        if let Some(hint) = out_of_memory_hint(&what) {
            say(&format!("rank {rank}: {hint}"));
        }
        if super::under_launcher() {
            let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            end_job(&format!("rank {rank}: panicked{place}: {what}; aborting the job"));
        }
    }));
}

/// What `end_job` runs before it aborts the job: a backend's way to stop its in-flight
/// work (NCCL's communicator abort), registered by the backend.
static BEFORE_END: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers `hook` to run first when the job ends (once per process; later calls keep
/// the first hook).
pub fn before_end_job(hook: fn()) {
    let _ = BEFORE_END.set(hook);
}

/// Says why, then stops the backend's in-flight work (the live NCCL communicator, if
/// any), then aborts the MPI job; never returns. The reason goes first: tearing down a
/// communicator can itself crash, and the reason must not be lost with it.
pub fn end_job(reason: &str) -> ! {
    say(reason);
    if let Some(hook) = BEFORE_END.get() {
        hook();
    }
    backstop(std::time::Duration::from_secs(15));
    super::abort_job_after_saying()
}

/// One line on stderr in one write: the ranks share the launcher's stderr, and a line
/// written in pieces (as `eprintln!` does with arguments) interleaves with another rank's.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Ends this process with `_exit` (no destructors, no atexit) if it is still alive after
/// `after`: a CUDA kernel spinning on a dead peer can block an orderly exit forever.
pub fn backstop(after: std::time::Duration) {
    let _ = std::thread::Builder::new().name("exit-backstop".into()).spawn(move || {
        std::thread::sleep(after);
        say(&format!(
            "rank {}: the job did not end within {after:?} of an abort; exiting",
            RANK.load(Ordering::Relaxed)
        ));
        unsafe { libc::_exit(1) }
    });
}

fn payload(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The words for an out-of-memory error, when `message` is one.
pub fn out_of_memory_hint(message: &str) -> Option<String> {
    let lower = message.to_lowercase();
    if !lower.contains("out of memory") {
        return None;
    }
    let device = if lower.contains("cuda") { "CUDA" } else { "the device" };
    let hint = MEMORY_HINT.lock().map(|h| h.clone()).unwrap_or_default();
    let at = if hint.is_empty() { String::new() } else { format!(" with {hint}") };
    Some(format!(
        "{device} ran out of memory{at}. Lower --batch-size (and raise --accum to keep the effective batch), \
         use --amp on a GPU, or a smaller --arch/--size"
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Panic,
    Error,
    Hang,
    Layout,
    Drift,
    Stale,
}

/// `TRAINER_FAULT` parsed once: (rank, step, fault). A malformed value is ignored with a warning.
fn fault() -> Option<(usize, u64, Fault)> {
    static FAULT: OnceLock<Option<(usize, u64, Fault)>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        let text = std::env::var("TRAINER_FAULT").ok()?;
        let parsed = parse_fault(&text);
        if parsed.is_none() {
            tracing::warn!("TRAINER_FAULT={text:?} is not RANK:STEP:panic|error|hang|layout|drift|stale; ignored");
        }
        parsed
    })
}

pub fn parse_fault(text: &str) -> Option<(usize, u64, Fault)> {
    let mut parts = text.split(':');
    let (rank, step, kind) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?);
    let kind = match kind {
        "panic" => Fault::Panic,
        "error" => Fault::Error,
        "hang" => Fault::Hang,
        "layout" => Fault::Layout,
        "drift" => Fault::Drift,
        "stale" => Fault::Stale,
        _ => return None,
    };
    parts.next().is_none().then_some((rank, step, kind))
}

fn due(kind: Fault) -> bool {
    fault().is_some_and(|(r, s, k)| k == kind && r == RANK.load(Ordering::Relaxed) && s == STEP.load(Ordering::Relaxed))
}

/// Whether this rank's listing of checkpoints is to miss the newest (`stale`).
pub fn stale_listing() -> bool {
    due(Fault::Stale)
}

/// Test hook at the start of each step.
pub fn maybe_panic() {
    if due(Fault::Panic) {
        panic!(
            "injected fault (TRAINER_FAULT): rank {} panics at step {}",
            RANK.load(Ordering::Relaxed),
            STEP.load(Ordering::Relaxed)
        );
    }
}

/// Test hook at the start of each step, after `maybe_panic`: an ordinary error.
pub fn maybe_error() -> anyhow::Result<()> {
    if due(Fault::Error) {
        anyhow::bail!("injected error (TRAINER_FAULT) at step {}", STEP.load(Ordering::Relaxed));
    }
    Ok(())
}

/// Test hook on the gradients of each step: drops the last one (`layout`).
pub fn maybe_drop_gradient(grads: &mut Vec<tch::Tensor>) {
    if due(Fault::Layout) {
        say(&format!(
            "injected fault (TRAINER_FAULT): rank {} drops a gradient at step {}",
            RANK.load(Ordering::Relaxed),
            STEP.load(Ordering::Relaxed)
        ));
        grads.pop();
    }
}

/// Test hook on the plateau judge's digest at a settle: one bit changed (`drift`).
pub fn maybe_drift(digest: u64) -> u64 {
    if due(Fault::Drift) {
        say(&format!("injected fault (TRAINER_FAULT): rank {}'s plateau judge drifts", RANK.load(Ordering::Relaxed)));
        return digest ^ 1;
    }
    digest
}

/// Test hook inside a collective, after its watchdog is armed.
pub fn maybe_hang() {
    if due(Fault::Hang) {
        say(&format!(
            "injected fault (TRAINER_FAULT): rank {} hangs in a collective at step {}",
            RANK.load(Ordering::Relaxed),
            STEP.load(Ordering::Relaxed)
        ));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_spec() {
        assert_eq!(parse_fault("1:3:panic"), Some((1, 3, Fault::Panic)));
        assert_eq!(parse_fault("0:10:hang"), Some((0, 10, Fault::Hang)));
        assert_eq!(parse_fault("1:0:stale"), Some((1, 0, Fault::Stale)));
        assert_eq!(parse_fault("1:2:error"), Some((1, 2, Fault::Error)));
        assert_eq!(parse_fault("0:1:layout"), Some((0, 1, Fault::Layout)));
        assert_eq!(parse_fault("1:10:drift"), Some((1, 10, Fault::Drift)));
        for bad in ["", "1:3", "1:3:explode", "x:3:panic", "1:3:panic:4"] {
            assert_eq!(parse_fault(bad), None, "{bad}");
        }
    }

    #[test]
    fn out_of_memory_is_named_with_the_batch() {
        set_memory_hint("batch size 64 per rank".into());
        let msg = out_of_memory_hint("Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB\")").unwrap();
        assert!(
            msg.starts_with("CUDA ran out of memory with batch size 64 per rank") && msg.contains("--batch-size"),
            "{msg}"
        );
        assert_eq!(out_of_memory_hint("index out of range"), None);
    }
}
