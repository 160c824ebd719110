//! The steps since the ranks last agreed. Each step leaves its losses on the device (one
//! small tensor per step) and its counts on the host; `settle` gathers every rank's numbers
//! in one all-gather on the device, reads them once, and sums them in rank order, so every
//! rank holds the same bits and judges the plateau rule to the same decision without a
//! broadcast. The loop settles at each log line, save point and validation and at the last
//! step, so a GPU never waits for the host in between, and the decisions that need the
//! losses (plateau decays, rollbacks, stops on a signal or the time limit) come at most one
//! log interval late.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::dist::Comm;
use crate::host_sync;
use crate::model::partial_fc::CommBytes;
use crate::model::Head;
use crate::train::backward::Reduced;
use crate::train::pools::Part;
use crate::train::step::labelled;

/// A step's row: the objective, then each head's loss in `Head` order (0 when untrained).
const ROW: usize = 1 + Head::ALL.len();

/// What the steps since the last settle left behind.
#[derive(Default)]
pub(super) struct Interval {
    rows: Vec<Tensor>,
    steps: Vec<(u64, Vec<Head>)>,
    skipped: f64,
    images: f64,
    labelled: [f64; 3],
    /// Seconds waited for data, and for the gradient all-reduce after the backward.
    waits: [f64; 2],
    comm_bytes: CommBytes,
    /// Steps whose gradient all-reduce ran during their backward (`--overlap`).
    overlapped: u64,
    /// This rank's device values read with the rows, not summed (`attach`).
    tail: Option<Tensor>,
}

/// This rank's own numbers for a settle, besides its steps'.
pub(super) struct Local {
    /// SIGINT/SIGTERM/SIGUSR1 seen.
    pub signalled: bool,
    pub out_of_time: bool,
    /// The plateau judge's digest (`Judge::fingerprint`): every rank's must equal rank 0's.
    pub fingerprint: u64,
}

/// One step's mean losses over the ranks.
pub(super) struct StepLosses {
    pub step: u64,
    pub losses: Vec<(Head, f64)>,
    /// The weighted objective (`None` in `--alternate` mode, where it mixes tasks).
    pub total: Option<f64>,
}

/// An interval's numbers, agreed by every rank.
pub(super) struct Settled {
    pub steps: Vec<StepLosses>,
    /// Samples with a known target per head, summed over ranks and steps.
    pub labelled: [f64; 3],
    /// Images, summed over ranks and steps.
    pub images: f64,
    pub skipped: f64,
    /// Some rank saw SIGINT/SIGTERM/SIGUSR1, or is past `--time-limit`.
    pub signalled: bool,
    pub out_of_time: bool,
    /// This rank's wait for data over the interval.
    pub data_wait: f64,
    /// This rank's wait for the gradient all-reduce after its backward ended.
    pub comm_wait: f64,
    /// This rank's steps whose all-reduce overlapped their backward.
    pub overlapped: u64,
    /// This rank's bytes into all-reduces and out of all-gathers in the last step.
    pub comm_bytes: CommBytes,
    /// The values `attach`ed, as this rank holds them.
    pub tail: Vec<f64>,
}

impl Settled {
    pub fn last(&self) -> Option<&StepLosses> {
        self.steps.last()
    }
}

/// The device row one step accumulates its losses into.
pub(super) fn step_row(device: Device) -> Tensor {
    Tensor::zeros([ROW as i64], (Kind::Double, device))
}

/// Adds `value / accum` at `index` of `row`, on the device.
pub(super) fn add_to_row(row: &Tensor, index: usize, value: &Tensor, accum: f64) {
    let v = value.detach().to_kind(Kind::Double).reshape([1]) / accum;
    let _ = row.narrow(0, index as i64, 1).g_add_(&v);
}

/// Where a head's loss sits in a row.
pub(super) fn column(head: Head) -> usize {
    1 + head as usize
}

impl Interval {
    /// The host-side counts of a micro-batch's parts.
    pub fn count(&mut self, parts: &[Part]) {
        self.skipped += parts.iter().map(|p| p.batch.skipped as f64).sum::<f64>();
        self.images += parts.iter().map(|p| p.batch.n as f64).sum::<f64>();
        self.labelled.iter_mut().zip(labelled(parts)).for_each(|(a, n)| *a += n);
    }

    /// Step `step` (1-based) trained `heads`, left `row`, waited `data_wait` s for data and
    /// all-reduced its gradients as `reduced` says.
    pub fn push(
        &mut self,
        step: u64,
        heads: Vec<Head>,
        row: Tensor,
        data_wait: f64,
        reduced: Reduced,
        comm_bytes: CommBytes,
    ) {
        self.rows.push(row);
        self.steps.push((step, heads));
        self.waits[0] += data_wait;
        self.waits[1] += reduced.waited;
        self.overlapped += reduced.overlapped as u64;
        self.comm_bytes = comm_bytes;
    }

    /// Device values (1-D) to read in the same read as the rows (the loss scale's state).
    pub fn attach(&mut self, values: Tensor) {
        self.tail = Some(values.to_kind(Kind::Double));
    }

    /// One all-gather of every rank's numbers and one read of it; empties the interval.
    /// `total_shown` says whether the objective means something (not in `--alternate`
    /// mode with several heads).
    pub fn settle(&mut self, comm: &dyn Comm, local: Local, total_shown: bool) -> Result<Settled> {
        let done = std::mem::take(self);
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let mut host = vec![done.skipped, done.images, flag(local.signalled), flag(local.out_of_time)];
        host.extend(done.labelled);
        host.push((local.fingerprint & DIGEST_MASK) as f64);
        let device = done.rows.first().map_or(Device::Cpu, Tensor::device);
        let mut parts: Vec<Tensor> = done.rows.iter().map(|r| r.reshape([-1])).collect();
        parts.extend(done.tail.iter().map(Tensor::shallow_clone));
        // Pageable memory goes up through a staging copy: no wait for the device's queue.
        parts.push(Tensor::from_slice(&host).to_device_(device, Kind::Double, true, false));
        let mine = Tensor::cat(&parts, 0);
        let len = mine.size()[0] as usize;
        let all = host_sync::vec_of::<f64>(&comm.all_gather(&mine)?)?;
        let ranks: Vec<&[f64]> = all.chunks(len).collect();
        check_fingerprints(&ranks, comm.rank())?;
        let per_step = done.rows.len() * ROW;
        let tail = ranks[comm.rank()][per_step..len - host.len()].to_vec();
        // In rank order on every rank: the same sums to the bit everywhere.
        let sum = |i: usize| ranks.iter().map(|r| r[i]).sum::<f64>();
        let world = comm.world() as f64;
        let steps = done
            .steps
            .iter()
            .enumerate()
            .map(|(k, (step, heads))| StepLosses {
                step: *step,
                losses: heads.iter().map(|&h| (h, sum(k * ROW + column(h)) / world)).collect(),
                total: total_shown.then(|| sum(k * ROW) / world),
            })
            .collect();
        let rest = |i: usize| sum(len - host.len() + i);
        Ok(Settled {
            steps,
            skipped: rest(0),
            images: rest(1),
            signalled: rest(2) > 0.0,
            out_of_time: rest(3) > 0.0,
            labelled: [rest(4), rest(5), rest(6)],
            data_wait: done.waits[0],
            comm_wait: done.waits[1],
            overlapped: done.overlapped,
            comm_bytes: done.comm_bytes,
            tail,
        })
    }
}

/// The digest's bits an f64 holds exactly.
const DIGEST_MASK: u64 = (1 << 52) - 1;

/// Every rank judges the plateau rule itself; a rank whose judge has drifted from rank 0's
/// (its digest is the last of its numbers) would decay or roll back on its own.
fn check_fingerprints(ranks: &[&[f64]], me: usize) -> Result<()> {
    let digest = |r: &[f64]| r.last().copied();
    let drifted: Vec<usize> = (1..ranks.len()).filter(|&r| digest(ranks[r]) != digest(ranks[0])).collect();
    if !drifted.is_empty() {
        bail!(
            "rank {me}: the plateau rule's state on rank(s) {drifted:?} differs from rank 0's \
             (every rank judges the same gathered losses; a resume from mismatched state?)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_steps_losses_and_the_counts_come_back_in_order() {
        let mut iv = Interval::default();
        for (step, heads, values) in [(1, vec![Head::Fr], [2.0, 2.0]), (2, vec![Head::Gender], [0.5, 0.5])] {
            let row = step_row(Device::Cpu);
            let head = heads[0];
            add_to_row(&row, 0, &Tensor::from(values[0]), 1.0);
            add_to_row(&row, column(head), &Tensor::from(values[1] * 2.0), 2.0);
            let reduced = Reduced { waited: 0.125, overlapped: false };
            iv.push(step, heads, row, 0.25, reduced, CommBytes::default());
        }
        iv.attach(Tensor::from_slice(&[4.0f32, 7.0]));
        let local = Local { signalled: false, out_of_time: true, fingerprint: 9 };
        let s = iv.settle(&crate::dist::single::Single, local, true).unwrap();
        assert!(iv.steps.is_empty() && iv.rows.is_empty() && iv.tail.is_none());
        assert_eq!(s.tail, vec![4.0, 7.0]);
        assert_eq!(s.steps.len(), 2);
        assert_eq!(
            (s.steps[0].step, s.steps[0].losses.clone(), s.steps[0].total),
            (1, vec![(Head::Fr, 2.0)], Some(2.0))
        );
        assert_eq!(s.steps[1].losses, vec![(Head::Gender, 0.5)]);
        assert!(!s.signalled && s.out_of_time);
        assert_eq!((s.data_wait, s.comm_wait), (0.5, 0.25));
    }

    #[test]
    fn a_rank_whose_judge_drifted_is_named() {
        let (a, b) = ([1.0, 5.0], [2.0, 6.0]);
        assert!(check_fingerprints(&[&a, &[3.0, 5.0]], 1).is_ok());
        let e = check_fingerprints(&[&a, &a, &b], 2).unwrap_err().to_string();
        assert!(e.starts_with("rank 2:") && e.contains("rank(s) [2]"), "{e}");
    }
}
