//! The MPI backend's communication thread: the training step hands it each backbone
//! stage's gradient buckets as soon as that stage's backward is done, and it all-reduces
//! them (on a communicator of its own) while the main thread backpropagates the next
//! stage. Every rank hands over the same buckets in the same order, so the threads' calls
//! match. Only used where MPI granted MPI_THREAD_MULTIPLE.

use super::reducer::Reducer;
use super::watchdog::{Op, Watchdog};
use anyhow::{bail, Result};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::Tensor;

struct Job {
    /// Buffer slot of the first bucket (slots are per step, so buckets in flight never share one).
    first: usize,
    buckets: Vec<Vec<Tensor>>,
}

pub struct CommThread {
    jobs: Option<Sender<Job>>,
    done: Receiver<Result<()>>,
    in_flight: std::cell::Cell<usize>,
    handle: Option<JoinHandle<()>>,
}

impl CommThread {
    /// `on_expire` ends the job when a bucket stays in flight past `timeout`.
    pub fn start(reducer: Reducer, rank: usize, timeout: Duration, on_expire: fn(&str) -> !) -> Result<CommThread> {
        let (jobs, inbox) = channel::<Job>();
        let (outbox, done) = channel();
        let handle = std::thread::Builder::new().name("allreduce".into()).spawn(move || {
            let watchdog = Watchdog::start(rank, timeout, move |m: &str| on_expire(m));
            for job in inbox {
                let _armed = watchdog.arm(Op::AllReduceMean);
                if outbox.send(reducer.reduce_all(job.first, &job.buckets)).is_err() {
                    break;
                }
            }
        })?;
        Ok(CommThread { jobs: Some(jobs), done, in_flight: Default::default(), handle: Some(handle) })
    }

    /// Queues buckets (views of gradients nothing writes until `wait` returns).
    pub fn send(&self, first: usize, buckets: Vec<Vec<Tensor>>) -> Result<()> {
        let Some(jobs) = &self.jobs else { bail!("the all-reduce thread was stopped") };
        if jobs.send(Job { first, buckets }).is_err() {
            bail!("the all-reduce thread ended")
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(())
    }

    /// Waits until every queued job is done; the seconds waited, or the first error.
    pub fn wait(&self) -> Result<f64> {
        let t = Instant::now();
        let mut result = Ok(());
        while self.in_flight.get() > 0 {
            self.in_flight.set(self.in_flight.get() - 1);
            match self.done.recv() {
                Ok(r) => result = result.and(r),
                Err(_) => bail!("the all-reduce thread ended before finishing its work"),
            }
        }
        result.map(|()| t.elapsed().as_secs_f64())
    }
}

impl Drop for CommThread {
    /// Lets the thread finish and free its communicator before MPI is finalised.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
