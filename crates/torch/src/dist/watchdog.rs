//! Collective time-outs: a peer that died or hung leaves the others blocked inside MPI or
//! NCCL forever. A thread per communicator watches a timestamp the collectives set on entry
//! and clear on exit (one atomic store each), and ends the job when one stays in flight
//! longer than the time-out. Long compute between collectives never trips it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The collective in flight, for the abort message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    AllReduceMean,
    Broadcast,
    AllReduceF64,
    BroadcastBytes,
    Barrier,
    Init,
    AllGather,
    AllReduce,
    /// Waiting for rank 0 to write a checkpoint (`--checkpoint-timeout`).
    Checkpoint,
}

impl Op {
    const ALL: [Op; 9] = [
        Op::AllReduceMean,
        Op::Broadcast,
        Op::AllReduceF64,
        Op::BroadcastBytes,
        Op::Barrier,
        Op::Init,
        Op::AllGather,
        Op::AllReduce,
        Op::Checkpoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::AllReduceMean => "all_reduce_mean",
            Op::Broadcast => "broadcast",
            Op::AllReduceF64 => "all_reduce_f64",
            Op::BroadcastBytes => "broadcast_bytes",
            Op::Barrier => "barrier",
            Op::Init => "init",
            Op::AllGather => "all_gather",
            Op::AllReduce => "all_reduce",
            Op::Checkpoint => "barrier while rank 0 writes a checkpoint",
        }
    }
}

struct State {
    origin: Instant,
    /// Milliseconds since `origin` + 1 when armed; 0 when no collective is in flight.
    armed_at: AtomicU64,
    op: AtomicU8,
    /// The time-out of the armed collective, in milliseconds.
    limit_ms: AtomicU64,
}

pub struct Watchdog {
    state: Arc<State>,
    timeout: Duration,
}

/// Disarms on drop, also when the collective returns an error.
pub struct Armed<'a>(&'a State);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.armed_at.store(0, Ordering::Release);
    }
}

impl Watchdog {
    /// Starts the watching thread; `on_expire` gets the message and must end the job.
    pub fn start(rank: usize, timeout: Duration, on_expire: impl Fn(&str) + Send + 'static) -> Watchdog {
        let state = Arc::new(State {
            origin: Instant::now(),
            armed_at: AtomicU64::new(0),
            op: AtomicU8::new(0),
            limit_ms: AtomicU64::new(0),
        });
        let watched = Arc::clone(&state);
        let poll = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let spawned = std::thread::Builder::new().name(format!("watchdog-rank{rank}")).spawn(move || loop {
            std::thread::sleep(poll);
            if Arc::strong_count(&watched) == 1 {
                return; // the communicator is gone
            }
            if let Some((op, limit)) = expired(&watched) {
                let secs = limit.as_secs_f64();
                on_expire(&format!(
                    "rank {rank}: collective `{}` did not finish within {secs} s; a peer rank has \
                     probably died or hung. Aborting the job.",
                    op.name()
                ));
                return;
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("rank {rank}: could not start the collective watchdog: {e}");
        }
        Watchdog { state, timeout }
    }

    /// Marks `op` as in flight until the guard drops.
    pub fn arm(&self, op: Op) -> Armed<'_> {
        self.arm_for(op, self.timeout)
    }

    /// As `arm`, with its own time-out (longer than the collectives', for checkpoints).
    pub fn arm_for(&self, op: Op, timeout: Duration) -> Armed<'_> {
        let s = &*self.state;
        s.op.store(op as u8, Ordering::Relaxed);
        s.limit_ms.store(timeout.as_millis().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        s.armed_at.store(s.origin.elapsed().as_millis() as u64 + 1, Ordering::Release);
        Armed(s)
    }
}

fn expired(s: &State) -> Option<(Op, Duration)> {
    let armed_at = s.armed_at.load(Ordering::Acquire);
    if armed_at == 0 {
        return None;
    }
    let now = s.origin.elapsed().as_millis() as u64 + 1;
    let limit = s.limit_ms.load(Ordering::Relaxed);
    (now.saturating_sub(armed_at) > limit)
        .then(|| (Op::ALL[s.op.load(Ordering::Relaxed) as usize], Duration::from_millis(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn watchdog(timeout_ms: u64) -> (Watchdog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let w = Watchdog::start(3, Duration::from_millis(timeout_ms), move |m| {
            let _ = tx.send(m.to_string());
        });
        (w, rx)
    }

    #[test]
    fn fires_when_a_collective_stays_in_flight() {
        let (w, rx) = watchdog(50);
        let _armed = w.arm(Op::Barrier);
        let msg = rx.recv_timeout(Duration::from_secs(30)).expect("watchdog never fired");
        assert!(msg.starts_with("rank 3: collective `barrier` did not finish"), "{msg}");
    }

    #[test]
    fn a_checkpoint_wait_has_its_own_time_out() {
        let (w, rx) = watchdog(50);
        let armed = w.arm_for(Op::Checkpoint, Duration::from_secs(3600));
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the collective time-out applied to a checkpoint"
        );
        drop(armed);
        let _armed = w.arm(Op::Barrier);
        assert!(rx.recv_timeout(Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn quiet_between_collectives() {
        let (w, rx) = watchdog(50);
        drop(w.arm(Op::AllReduceMean));
        // Idle time between collectives (a long step) must not count.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }
}
