//! Which records go into which batch: a deterministic function of (seed, epoch, rank), so
//! a resume from a `SamplerPosition` replays exactly and ranks see different orders.

use crate::rng::Rng;
use anyhow::{bail, Result};

/// How batches are drawn from a rank's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SamplerKind {
    /// A fresh permutation of all records each epoch.
    Uniform,
    /// Each batch holds P distinct identities × K images of each (with replacement
    /// within an identity that has fewer than K).
    Balanced { p: usize, k: usize },
    /// Records in stored order every epoch (debugging and equivalence tests).
    Sequential,
}

/// The next batch to produce: `batch` counts from 0 within `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SamplerPosition {
    pub epoch: u64,
    pub batch: u64,
}

impl SamplerPosition {
    pub const START: SamplerPosition = SamplerPosition { epoch: 0, batch: 0 };
}

/// What is left of one epoch begun in another rank layout (`redeal`): its own batches,
/// `steps × batch size` view indices, and where its slots continue the epoch's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestEpoch {
    pub epoch: u64,
    pub records: Vec<u32>,
    pub steps: u64,
    /// Slots the epoch's earlier layouts used on a rank (flips and replacements are per slot).
    pub slot_base: u64,
}

/// Plans epochs over record indices `0..labels.len()` of one rank's view.
#[derive(Clone, Debug)]
pub struct Sampler {
    kind: SamplerKind,
    seed: u64,
    rank: u64,
    batch_size: usize,
    steps: u64,
    n: usize,
    /// Record indices per identity (only identities that have records).
    classes: Vec<Vec<u32>>,
    rest: Option<std::sync::Arc<RestEpoch>>,
}

impl Sampler {
    /// `steps_per_epoch` overrides the natural count (all ranks must agree on it);
    /// epochs are then trimmed or padded with more samples of the same kind.
    pub fn new(
        kind: SamplerKind,
        labels: &[i32],
        batch_size: usize,
        seed: u64,
        rank: usize,
        steps_per_epoch: Option<u64>,
    ) -> Result<Sampler> {
        if labels.is_empty() {
            bail!("rank {rank} has no records to sample from");
        }
        if batch_size == 0 {
            bail!("batch size must be > 0");
        }
        let classes = group_by_label(labels);
        if let SamplerKind::Balanced { p, k } = kind {
            if p == 0 || k == 0 || p * k != batch_size {
                bail!("balanced sampler needs P×K = batch size (P={p}, K={k}, batch size {batch_size})");
            }
            if p > classes.len() {
                bail!(
                    "balanced sampler needs P={p} distinct identities per batch but rank {rank} has only {}",
                    classes.len()
                );
            }
        }
        let steps = match steps_per_epoch {
            Some(0) => bail!("steps per epoch must be > 0"),
            Some(s) => s,
            None => Self::natural_steps(labels.len(), batch_size),
        };
        Ok(Sampler { kind, seed, rank: rank as u64, batch_size, steps, n: labels.len(), classes, rest: None })
    }

    /// This sampler with `rest` as its plan for `rest.epoch`; later epochs are its own.
    pub fn with_rest(mut self, rest: RestEpoch) -> Result<Sampler> {
        if rest.steps == 0 || rest.records.len() as u64 != rest.steps * self.batch_size as u64 {
            bail!(
                "rank {}: the rest of epoch {} has {} records for {} steps of {}",
                self.rank,
                rest.epoch,
                rest.records.len(),
                rest.steps,
                self.batch_size
            );
        }
        self.rest = Some(std::sync::Arc::new(rest));
        Ok(self)
    }

    fn rest_of(&self, epoch: u64) -> Option<&RestEpoch> {
        self.rest.as_deref().filter(|r| r.epoch == epoch)
    }

    /// Steps of `epoch`: its own count, or the rest's for an epoch begun in another layout.
    pub fn steps_in(&self, epoch: u64) -> u64 {
        self.rest_of(epoch).map_or(self.steps, |r| r.steps)
    }

    /// The epoch slot of batch 0's first record (non-zero only in a rest of an epoch).
    pub fn slot_base(&self, epoch: u64) -> u64 {
        self.rest_of(epoch).map_or(0, |r| r.slot_base)
    }

    /// Batches needed to see every record once: ceil(records / batch size). Ranks reduce
    /// this with a min (or max) to agree on `steps_per_epoch`.
    pub fn natural_steps(records: usize, batch_size: usize) -> u64 {
        records.div_ceil(batch_size.max(1)).max(1) as u64
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.steps
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The position after `pos`, rolling over to the next epoch.
    pub fn advance(&self, pos: SamplerPosition) -> SamplerPosition {
        if pos.batch + 1 >= self.steps_in(pos.epoch) {
            SamplerPosition { epoch: pos.epoch + 1, batch: 0 }
        } else {
            SamplerPosition { epoch: pos.epoch, batch: pos.batch + 1 }
        }
    }

    /// All record indices of an epoch, `steps × batch_size` of them, batch after batch.
    pub fn epoch(&self, epoch: u64) -> Vec<u32> {
        if let Some(rest) = self.rest_of(epoch) {
            return rest.records.clone();
        }
        let mut rng = Rng::derive(self.seed, epoch, self.rank);
        let total = self.steps as usize * self.batch_size;
        match self.kind {
            SamplerKind::Uniform => uniform_epoch(&mut rng, self.n, total),
            SamplerKind::Balanced { p, k } => balanced_epoch(&mut rng, &self.classes, p, k, self.steps as usize),
            SamplerKind::Sequential => (0..total).map(|i| (i % self.n) as u32).collect(),
        }
    }
}

/// Records by identity; records without one (-1) are no identity for P×K.
pub(crate) fn group_by_label(labels: &[i32]) -> Vec<Vec<u32>> {
    let mut by: std::collections::BTreeMap<i32, Vec<u32>> = Default::default();
    for (i, &l) in labels.iter().enumerate().filter(|(_, &l)| l >= 0) {
        by.entry(l).or_default().push(i as u32);
    }
    by.into_values().collect()
}

/// Permutations laid end to end until `total` indices: every record once per pass.
fn uniform_epoch(rng: &mut Rng, n: usize, total: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut perm: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut perm);
        let take = (total - out.len()).min(n);
        out.extend_from_slice(&perm[..take]);
    }
    out
}

/// Identities are visited in shuffled rounds; each contributes K images from its own
/// shuffled cycle, so an epoch spreads over all identities and images.
pub(crate) fn balanced_epoch(rng: &mut Rng, classes: &[Vec<u32>], p: usize, k: usize, steps: usize) -> Vec<u32> {
    let mut pools: Vec<Vec<u32>> = classes.to_vec();
    for pool in &mut pools {
        rng.shuffle(pool);
    }
    let mut cursors = vec![0usize; pools.len()];
    let mut order: Vec<usize> = Vec::new();
    let mut out = Vec::with_capacity(steps * p * k);
    for _ in 0..steps {
        let ids = next_identities(rng, &mut order, pools.len(), p);
        for c in ids {
            take_images(rng, &pools[c], &mut cursors[c], k, &mut out);
        }
    }
    out
}

/// P distinct identities from the front of a shuffled queue, refilled when it runs low.
fn next_identities(rng: &mut Rng, order: &mut Vec<usize>, n_classes: usize, p: usize) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::with_capacity(p);
    while picked.len() < p {
        if order.is_empty() {
            let mut fresh: Vec<usize> = (0..n_classes).collect();
            rng.shuffle(&mut fresh);
            // Identities already in this batch go to the end of the new round.
            fresh.sort_by_key(|c| picked.contains(c));
            fresh.reverse();
            *order = fresh;
        }
        let c = order.pop().expect("refilled above");
        if !picked.contains(&c) {
            picked.push(c);
        }
    }
    picked
}

fn take_images(rng: &mut Rng, pool: &[u32], cursor: &mut usize, k: usize, out: &mut Vec<u32>) {
    if pool.len() >= k {
        for _ in 0..k {
            out.push(pool[*cursor % pool.len()]);
            *cursor += 1;
        }
    } else {
        out.extend_from_slice(pool);
        for _ in pool.len()..k {
            out.push(pool[rng.below(pool.len())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn labels(classes: usize, sizes: impl Fn(usize) -> usize) -> Vec<i32> {
        (0..classes).flat_map(|c| std::iter::repeat_n(c as i32, sizes(c))).collect()
    }

    #[test]
    fn uniform_covers_every_record_once_per_epoch() {
        let l = labels(10, |_| 12); // 120 records, batch 8 → 15 steps exactly
        let s = Sampler::new(SamplerKind::Uniform, &l, 8, 1, 0, None).unwrap();
        assert_eq!(s.steps_per_epoch(), 15);
        for e in 0..3 {
            let mut ep = s.epoch(e);
            ep.sort();
            assert_eq!(ep, (0..120).collect::<Vec<u32>>());
        }
        assert_ne!(s.epoch(0), s.epoch(1));
    }

    #[test]
    fn uniform_pads_a_partial_last_batch_and_still_covers_all() {
        let l = labels(5, |_| 7); // 35 records, batch 8 → 5 steps, 40 slots
        let s = Sampler::new(SamplerKind::Uniform, &l, 8, 4, 1, None).unwrap();
        let ep = s.epoch(2);
        assert_eq!(ep.len(), 40);
        assert_eq!(ep.iter().collect::<BTreeSet<_>>().len(), 35);
    }

    #[test]
    fn balanced_batches_have_p_distinct_identities_times_k() {
        // Uneven identities, some with fewer than K images.
        let l = labels(23, |c| 1 + c % 9);
        let (p, k) = (6, 4);
        let s = Sampler::new(SamplerKind::Balanced { p, k }, &l, p * k, 7, 0, Some(40)).unwrap();
        for e in 0..3 {
            let ep = s.epoch(e);
            assert_eq!(ep.len(), 40 * p * k);
            for batch in ep.chunks(p * k) {
                let mut counts: HashMap<i32, usize> = HashMap::new();
                for &i in batch {
                    *counts.entry(l[i as usize]).or_default() += 1;
                }
                assert_eq!(counts.len(), p, "{counts:?}");
                assert!(counts.values().all(|&c| c == k), "{counts:?}");
                // K consecutive slots per identity.
                for group in batch.chunks(k) {
                    assert!(group.iter().all(|&i| l[i as usize] == l[group[0] as usize]));
                }
            }
        }
    }

    #[test]
    fn balanced_is_deterministic_and_varies_by_epoch_and_rank() {
        let l = labels(30, |_| 6);
        let kind = SamplerKind::Balanced { p: 5, k: 3 };
        let a = Sampler::new(kind, &l, 15, 11, 0, None).unwrap();
        let b = Sampler::new(kind, &l, 15, 11, 0, None).unwrap();
        let r1 = Sampler::new(kind, &l, 15, 11, 1, None).unwrap();
        let other_seed = Sampler::new(kind, &l, 15, 12, 0, None).unwrap();
        assert_eq!(a.epoch(3), b.epoch(3));
        assert_ne!(a.epoch(3), a.epoch(4));
        assert_ne!(a.epoch(3), r1.epoch(3));
        assert_ne!(a.epoch(3), other_seed.epoch(3));
    }

    #[test]
    fn balanced_epoch_visits_every_identity() {
        let l = labels(40, |_| 5);
        let s = Sampler::new(SamplerKind::Balanced { p: 8, k: 5 }, &l, 40, 2, 0, None).unwrap();
        assert_eq!(s.steps_per_epoch(), 5);
        let seen: BTreeSet<i32> = s.epoch(0).iter().map(|&i| l[i as usize]).collect();
        assert_eq!(seen.len(), 40);
    }

    #[test]
    fn steps_are_forced_equal_across_ranks_with_different_sizes() {
        let small = labels(10, |_| 3);
        let large = labels(10, |_| 9);
        for kind in [SamplerKind::Uniform, SamplerKind::Balanced { p: 2, k: 2 }] {
            let a = Sampler::new(kind, &small, 4, 0, 0, Some(13)).unwrap();
            let b = Sampler::new(kind, &large, 4, 0, 1, Some(13)).unwrap();
            assert_eq!(a.epoch(0).len(), 13 * 4);
            assert_eq!(b.epoch(0).len(), 13 * 4);
        }
    }

    #[test]
    fn advance_rolls_over_epochs() {
        let s = Sampler::new(SamplerKind::Uniform, &labels(2, |_| 5), 4, 0, 0, None).unwrap();
        assert_eq!(s.steps_per_epoch(), 3);
        let mut p = SamplerPosition::START;
        for _ in 0..4 {
            p = s.advance(p);
        }
        assert_eq!(p, SamplerPosition { epoch: 1, batch: 1 });
    }

    #[test]
    fn bad_configurations_are_errors() {
        let l = labels(3, |_| 4);
        assert!(Sampler::new(SamplerKind::Balanced { p: 4, k: 2 }, &l, 8, 0, 0, None).is_err());
        assert!(Sampler::new(SamplerKind::Balanced { p: 2, k: 2 }, &l, 5, 0, 0, None).is_err());
        assert!(Sampler::new(SamplerKind::Uniform, &[], 5, 0, 0, None).is_err());
        assert!(Sampler::new(SamplerKind::Uniform, &l, 5, 0, 0, Some(0)).is_err());
    }
}
