//! Watching device work finish without making the host wait for it. NCCL's gradient
//! all-reduces end each step with an event instead of a host wait; a thread polls the
//! events in order, and the collective time-out and NCCL's asynchronous errors end the
//! job from there, as PyTorch's NCCL watchdog does. The host runs ahead and reads the
//! device only where it needs a value (the log interval's losses).

use anyhow::Result;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Work on the device whose completion can be asked without waiting.
pub trait Pending: Send {
    /// True once done; an error if the device reports one.
    fn poll(&mut self) -> Result<bool>;
}

/// The watcher of one communicator's outstanding work.
pub struct Completions {
    tx: Option<Sender<Box<dyn Pending>>>,
    outstanding: Arc<AtomicUsize>,
}

/// How often outstanding work is polled.
const POLL: Duration = Duration::from_micros(200);

impl Completions {
    /// `setup` runs first on the watching thread (selecting the CUDA device); `check`
    /// runs while work is outstanding (NCCL's asynchronous error); `on_expire` gets the
    /// message when work stays outstanding past `timeout` or `check` fails, and must end
    /// the job.
    pub fn start(
        rank: usize,
        timeout: Duration,
        setup: impl FnOnce() + Send + 'static,
        check: impl FnMut() -> Result<()> + Send + 'static,
        on_expire: impl Fn(&str) + Send + 'static,
    ) -> Completions {
        let (tx, rx) = channel();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&outstanding);
        let watch = Watch { rank, timeout, rx, count, check: Box::new(check), on_expire: Box::new(on_expire) };
        let spawned = std::thread::Builder::new().name(format!("completions-rank{rank}")).spawn(move || {
            setup();
            watch.run()
        });
        if let Err(e) = spawned {
            tracing::warn!("rank {rank}: could not start the device work watcher: {e}");
        }
        Completions { tx: Some(tx), outstanding }
    }

    pub fn push(&self, work: Box<dyn Pending>) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        if let Some(tx) = &self.tx {
            let _ = tx.send(work);
        }
    }

    /// Work handed over and not yet seen done.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }
}

impl Drop for Completions {
    fn drop(&mut self) {
        drop(self.tx.take()); // the thread ends once it has nothing outstanding
    }
}

struct Watch {
    rank: usize,
    timeout: Duration,
    rx: Receiver<Box<dyn Pending>>,
    count: Arc<AtomicUsize>,
    check: Box<dyn FnMut() -> Result<()> + Send>,
    on_expire: Box<dyn Fn(&str) + Send>,
}

impl Watch {
    fn run(mut self) {
        let mut queue: VecDeque<(Box<dyn Pending>, Instant)> = VecDeque::new();
        loop {
            let wait = if queue.is_empty() { Duration::from_secs(3600) } else { POLL };
            match self.rx.recv_timeout(wait) {
                Ok(work) => queue.push_back((work, Instant::now())),
                Err(RecvTimeoutError::Disconnected) if queue.is_empty() => return,
                Err(_) => {}
            }
            if let Err(reason) = self.poll(&mut queue) {
                (self.on_expire)(&format!("rank {}: {reason}. Aborting the job.", self.rank));
                return;
            }
        }
    }

    /// Retires finished work in order; the reason to end the job, if any.
    fn poll(&mut self, queue: &mut VecDeque<(Box<dyn Pending>, Instant)>) -> Result<(), String> {
        while let Some((work, since)) = queue.front_mut() {
            match work.poll() {
                Ok(true) => {
                    queue.pop_front();
                    self.count.fetch_sub(1, Ordering::AcqRel);
                }
                Ok(false) if since.elapsed() > self.timeout => {
                    return Err(format!(
                        "the gradient all-reduce did not finish on the device within {} s; a peer rank has \
                         probably died or hung",
                        self.timeout.as_secs_f64()
                    ))
                }
                Ok(false) => break,
                Err(e) => return Err(format!("device work failed: {e:#}")),
            }
        }
        if queue.is_empty() {
            return Ok(());
        }
        (self.check)().map_err(|e| format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Done after `left` more polls (never with `usize::MAX`).
    struct After(usize);

    impl Pending for After {
        fn poll(&mut self) -> Result<bool> {
            self.0 = self.0.saturating_sub(1);
            Ok(self.0 == 0)
        }
    }

    fn start(timeout_ms: u64, check: impl FnMut() -> Result<()> + Send + 'static) -> (Completions, Receiver<String>) {
        let (tx, rx) = channel();
        let c = Completions::start(
            2,
            Duration::from_millis(timeout_ms),
            || (),
            check,
            move |m| {
                let _ = tx.send(m.to_string());
            },
        );
        (c, rx)
    }

    #[test]
    fn finished_work_is_retired_in_order_without_a_message() {
        let (c, rx) = start(60_000, || Ok(()));
        for polls in [3, 1, 5] {
            c.push(Box::new(After(polls)));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.outstanding() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.outstanding(), 0);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn work_outstanding_past_the_time_out_ends_the_job() {
        let (c, rx) = start(50, || Ok(()));
        c.push(Box::new(After(usize::MAX)));
        let msg = rx.recv_timeout(Duration::from_secs(30)).expect("no time-out");
        assert!(msg.starts_with("rank 2: the gradient all-reduce did not finish on the device within 0.05 s"), "{msg}");
    }

    #[test]
    fn an_asynchronous_error_ends_the_job_with_its_reason() {
        let (c, rx) = start(60_000, || anyhow::bail!("NCCL collective (asynchronous error) failed: remote error"));
        c.push(Box::new(After(usize::MAX)));
        let msg = rx.recv_timeout(Duration::from_secs(30)).expect("no error");
        assert!(msg.contains("remote error") && msg.ends_with("Aborting the job."), "{msg}");
    }
}
