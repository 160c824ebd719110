//! One step's per-rank numbers, summed over the ranks in a single all-reduce.

use anyhow::Result;

use crate::dist::{Comm, ReduceOp};

#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct StepSums {
    /// The weighted objective, averaged over accumulated batches.
    pub total: f64,
    /// Ranks that saw SIGINT/SIGTERM/SIGUSR1.
    pub signalled: f64,
    /// Ranks past `--time-limit`.
    pub out_of_time: f64,
    /// Records the loader skipped (undecodable).
    pub skipped: f64,
    pub images: f64,
    /// Samples with a known target, per head (FR, Gender, Age).
    pub labelled: [f64; 3],
    /// Each head's loss of this step, in the step's head order.
    pub parts: Vec<f64>,
}

impl StepSums {
    pub fn all_reduce(self, comm: &dyn Comm) -> Result<StepSums> {
        let mut flat = self.flatten();
        comm.all_reduce_f64(&mut flat, ReduceOp::Sum)?;
        Ok(Self::unflatten(&flat))
    }

    fn flatten(&self) -> Vec<f64> {
        let mut v = vec![self.total, self.signalled, self.out_of_time, self.skipped, self.images];
        v.extend(self.labelled);
        v.extend(&self.parts);
        v
    }

    fn unflatten(v: &[f64]) -> StepSums {
        StepSums {
            total: v[0],
            signalled: v[1],
            out_of_time: v[2],
            skipped: v[3],
            images: v[4],
            labelled: [v[5], v[6], v[7]],
            parts: v[8..].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_survives_the_flat_all_reduce() {
        let sums = StepSums {
            total: 1.5,
            signalled: 1.0,
            out_of_time: 0.0,
            skipped: 3.0,
            images: 32.0,
            labelled: [16.0, 7.0, 2.0],
            parts: vec![0.5, 0.25],
        };
        assert_eq!(sums.clone().all_reduce(&crate::dist::single::Single).unwrap(), sums);
    }
}
