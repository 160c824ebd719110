//! dlib's `dnn_trainer` learning-rate rule (dlib/dnn/trainer.h) and its rollback safeguard.

use super::running_gradient::{
    count_backwards, count_steps_without_decrease_robust, probability_values_are_increasing,
    DEFAULT_PROBABILITY_OF_DECREASE, DEFAULT_QUANTILE_DISCARD,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// dlib adds this to the check budget per step and checks once the budget passes the
/// threshold: one O(threshold) check every `threshold / 200 + 1` steps, a fixed amortised
/// cost per step whatever the threshold.
const BUDGET_PER_STEP: usize = 200;
/// After a shrink dlib drops this many oldest losses plus threshold / 10.
const DUMP_AMOUNT: usize = 400;

/// The plateau schedule: a window of the last `threshold` losses; when both dlib counts
/// reach the threshold, the learning rate shrinks and the oldest losses are dropped so the
/// next shrink needs fresh evidence. Serialisable so a resume continues exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    threshold: usize,
    shrink: f64,
    losses: VecDeque<f64>,
    budget: usize,
    steps_without_progress: usize,
    decays: usize,
    steps: u64,
}

impl Plateau {
    /// `threshold`: steps without progress before shrinking (dlib 2000, the seed 15000);
    /// `shrink`: factor applied to the learning rate (dlib 0.1; 1 disables the rule).
    pub fn new(threshold: usize, shrink: f64) -> Plateau {
        Plateau {
            threshold,
            shrink,
            losses: VecDeque::with_capacity(threshold + 1),
            budget: 0,
            steps_without_progress: 0,
            decays: 0,
            steps: 0,
        }
    }

    /// Adds one step's loss; returns Some(shrink factor) when the learning rate should shrink.
    pub fn push(&mut self, loss: f64) -> Option<f64> {
        self.steps += 1;
        self.budget += BUDGET_PER_STEP;
        self.losses.push_back(loss);
        while self.losses.len() > self.threshold {
            self.losses.pop_front();
        }
        if self.budget <= self.threshold || self.shrink == 1.0 {
            return None;
        }
        self.budget = 0;
        self.steps_without_progress = self.count();
        if self.steps_without_progress < self.threshold {
            return None;
        }
        // The second opinion ignores the top 10% of losses, so a burst of bad batches
        // does not count as a plateau.
        self.steps_without_progress = count_steps_without_decrease_robust(
            self.losses.make_contiguous(),
            DEFAULT_PROBABILITY_OF_DECREASE,
            DEFAULT_QUANTILE_DISCARD,
        );
        if self.steps_without_progress < self.threshold {
            return None;
        }
        Some(self.shrink_now())
    }

    /// Shrinks as a plateau would (dlib also does this after repeated rollbacks): resets
    /// the count and drops the oldest losses; returns the factor to apply.
    pub fn shrink_now(&mut self) -> f64 {
        self.steps_without_progress = 0;
        self.decays += 1;
        let drop = (DUMP_AMOUNT + self.threshold / 10).min(self.losses.len());
        self.losses.drain(..drop);
        self.shrink
    }

    /// The count as of the last check (dlib's `get_steps_without_progress`).
    pub fn steps_without_progress(&self) -> usize {
        self.steps_without_progress
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn shrink_factor(&self) -> f64 {
        self.shrink
    }

    /// How many times the learning rate has shrunk.
    pub fn decays(&self) -> usize {
        self.decays
    }

    /// Losses pushed since creation.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The current window, oldest first.
    pub fn losses(&self) -> impl ExactSizeIterator<Item = f64> + '_ {
        self.losses.iter().copied()
    }

    fn count(&self) -> usize {
        count_backwards(self.losses.iter().rev().copied(), DEFAULT_PROBABILITY_OF_DECREASE, None)
    }
}

/// What to do at a save point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDecision {
    /// The loss is fine: save the state.
    Save,
    /// The loss turned non-finite or clearly rose: reload the last saved state instead.
    Reload,
    /// As `Reload`, and the rollbacks keep coming: also shrink the learning rate
    /// (call [`Plateau::shrink_now`] on the reloaded plateau).
    ReloadAndShrink,
}

/// dlib's rule: below 30 steps since the save only a non-finite loss counts.
pub const MIN_STEPS_FOR_RISE_TEST: usize = 30;
pub const DEFAULT_RISE_PROBABILITY: f64 = 0.99;
const MAX_RISE_PROBABILITY: f64 = 0.99999;

/// Whether to roll back, judging the losses dlib would look at: the last
/// `2 * steps_since_save` values of `recent` (a little before the save too). True if any
/// is NaN or infinite (dlib checks NaN; an infinite loss is as broken), or, once
/// `steps_since_save >= 30`, when P(values are increasing) > `rise_probability`.
pub fn loss_clearly_rose(recent: &[f64], steps_since_save: usize, rise_probability: f64) -> bool {
    let window = &recent[recent.len().saturating_sub(2 * steps_since_save)..];
    if window.iter().any(|v| !v.is_finite()) {
        return true;
    }
    steps_since_save >= MIN_STEPS_FOR_RISE_TEST
        && window.len() > 2
        && probability_values_are_increasing(window) > rise_probability
}

/// The stateful side of dlib's safeguard: the losses since a little before the last save
/// and the rise threshold, which tightens towards 0.99999 on each rollback (so training
/// cannot loop on reloads) and relaxes back to 0.99 after a good save. Keep it outside
/// the checkpoint: dlib does not restore the threshold when it reloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackGuard {
    history: VecDeque<f64>,
    steps_since_save: usize,
    rise_probability: f64,
}

impl Default for RollbackGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl RollbackGuard {
    pub fn new() -> Self {
        RollbackGuard {
            history: VecDeque::new(),
            steps_since_save: 0,
            rise_probability: DEFAULT_RISE_PROBABILITY,
        }
    }

    /// Records one step's loss; true when it is non-finite (the loop may reload at once).
    pub fn record(&mut self, loss: f64) -> bool {
        self.history.push_back(loss);
        self.steps_since_save += 1;
        !loss.is_finite()
    }

    /// Decides at a save point. `have_saved`: a saved state exists (else always `Save`).
    pub fn at_save_point(&mut self, have_saved: bool) -> SaveDecision {
        if !have_saved {
            self.steps_since_save = 0;
            return SaveDecision::Save;
        }
        let k = self.steps_since_save;
        let start = self.history.len().saturating_sub(2 * k);
        let window = &self.history.make_contiguous()[start..];
        let non_finite = window.iter().any(|v| !v.is_finite());
        let tested = !non_finite && k >= MIN_STEPS_FOR_RISE_TEST && window.len() > 2;
        let rose = tested && loss_clearly_rose(window, k, self.rise_probability);
        if rose {
            self.rise_probability = (0.1 * self.rise_probability + 0.9).min(MAX_RISE_PROBABILITY);
        } else if tested {
            self.rise_probability = self.rise_probability.powf(10.0).max(DEFAULT_RISE_PROBABILITY);
        }
        self.steps_since_save = 0;
        if !(rose || non_finite) {
            // What gets saved is the trimmed history, as in dlib.
            let excess = self.history.len().saturating_sub(2 * k);
            self.history.drain(..excess);
            return SaveDecision::Save;
        }
        // The reloaded state's history is the one saved then: drop what came after.
        self.history.truncate(self.history.len() - k);
        if self.rise_probability >= MAX_RISE_PROBABILITY {
            SaveDecision::ReloadAndShrink
        } else {
            SaveDecision::Reload
        }
    }

    pub fn rise_probability(&self) -> f64 {
        self.rise_probability
    }

    pub fn steps_since_save(&self) -> usize {
        self.steps_since_save
    }
}
