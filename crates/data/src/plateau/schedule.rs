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
    /// The robust count at the last check (logged; dlib keeps only the one above).
    /// Checkpoints from before it was kept read as 0 until the next check.
    #[serde(default)]
    steps_without_progress_robust: usize,
    decays: usize,
}

impl Plateau {
    /// `threshold`: steps without progress before shrinking (dlib 2000, the seed 15000);
    /// `shrink`: factor applied to the learning rate (dlib 0.1).
    pub fn new(threshold: usize, shrink: f64) -> Plateau {
        Plateau {
            threshold,
            shrink,
            losses: VecDeque::with_capacity(threshold + 1),
            budget: 0,
            steps_without_progress: 0,
            steps_without_progress_robust: 0,
            decays: 0,
        }
    }

    /// Adds one step's loss; returns Some(shrink factor) when the learning rate should shrink.
    pub fn push(&mut self, loss: f64) -> Option<f64> {
        self.budget += BUDGET_PER_STEP;
        self.losses.push_back(loss);
        while self.losses.len() > self.threshold {
            self.losses.pop_front();
        }
        if self.budget <= self.threshold {
            return None;
        }
        self.budget = 0;
        // The second opinion ignores the top 10% of losses, so a burst of bad batches
        // does not count as a plateau. dlib computes it only once the plain count passes
        // the threshold (and then reports it as the count); it is computed at every check
        // here so that the log can show both, which decides nothing differently.
        let plain = self.count();
        let robust = count_steps_without_decrease_robust(
            self.losses.make_contiguous(),
            DEFAULT_PROBABILITY_OF_DECREASE,
            DEFAULT_QUANTILE_DISCARD,
        );
        self.steps_without_progress_robust = robust;
        self.steps_without_progress = if plain < self.threshold { plain } else { robust };
        if self.steps_without_progress < self.threshold {
            return None;
        }
        Some(self.shrink_now())
    }

    /// Shrinks as a plateau would (dlib also does this after repeated rollbacks): resets
    /// the count and drops the oldest losses; returns the factor to apply.
    pub fn shrink_now(&mut self) -> f64 {
        self.steps_without_progress = 0;
        self.steps_without_progress_robust = 0;
        self.decays += 1;
        let drop = (DUMP_AMOUNT + self.threshold / 10).min(self.losses.len());
        self.losses.drain(..drop);
        self.shrink
    }

    /// The count as of the last check (dlib's `get_steps_without_progress`).
    pub fn steps_without_progress(&self) -> usize {
        self.steps_without_progress
    }

    /// The robust count (the top 10% of losses left out) as of the last check.
    pub fn steps_without_progress_robust(&self) -> usize {
        self.steps_without_progress_robust
    }

    /// How many times the learning rate has shrunk.
    pub fn decays(&self) -> usize {
        self.decays
    }

    /// The current window, oldest first.
    pub fn losses(&self) -> impl ExactSizeIterator<Item = f64> + '_ {
        self.losses.iter().copied()
    }

    fn count(&self) -> usize {
        count_backwards(self.losses.iter().rev().copied(), DEFAULT_PROBABILITY_OF_DECREASE, None)
    }
}

/// What a save point decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDecision {
    /// The loss is fine: save the state.
    Save,
    /// The loss turned non-finite or clearly rose: return to the last saved state instead
    /// (and call [`RollbackGuard::reload`]).
    Reload,
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
/// and the rise threshold, which tightens towards 0.99999 on each reload in a row (so
/// training cannot loop on reloads: at the cap the learning rate shrinks too) and relaxes
/// back to 0.99 after a good tested save. Keep it outside the checkpoint: dlib does not
/// restore the threshold when it reloads.
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
        RollbackGuard { history: VecDeque::new(), steps_since_save: 0, rise_probability: DEFAULT_RISE_PROBABILITY }
    }

    /// Records one step's loss; true when it is non-finite (the loop reloads at once).
    pub fn record(&mut self, loss: f64) -> bool {
        self.history.push_back(loss);
        self.steps_since_save += 1;
        !loss.is_finite()
    }

    /// Decides at a save point whether the losses since the last save clearly rose.
    pub fn at_save_point(&mut self) -> SaveDecision {
        let k = self.steps_since_save;
        let start = self.history.len().saturating_sub(2 * k);
        let window = &self.history.make_contiguous()[start..];
        let non_finite = window.iter().any(|v| !v.is_finite());
        let tested = !non_finite && k >= MIN_STEPS_FOR_RISE_TEST && window.len() > 2;
        if non_finite || (tested && loss_clearly_rose(window, k, self.rise_probability)) {
            return SaveDecision::Reload;
        }
        if tested {
            self.rise_probability = self.rise_probability.powf(10.0).max(DEFAULT_RISE_PROBABILITY);
        }
        self.saved();
        SaveDecision::Save
    }

    /// The state was saved (at a save point, or when a better validation wrote a
    /// checkpoint): keep only the losses dlib keeps, twice those since the last save.
    pub fn saved(&mut self) {
        let excess = self.history.len().saturating_sub(2 * self.steps_since_save);
        self.history.drain(..excess);
        self.steps_since_save = 0;
    }

    /// This head's loss failed (NaN, or clearly rose) and the run returns to the last
    /// save: forget the losses since it and tighten the threshold. True when the
    /// threshold is at its cap: reloads keep coming, so the learning rate shrinks too
    /// (dlib's rule; with a fresh guard, the third reload in a row).
    pub fn reload(&mut self) -> bool {
        let at_cap = self.rise_probability >= MAX_RISE_PROBABILITY;
        self.rise_probability = (0.1 * self.rise_probability + 0.9).min(MAX_RISE_PROBABILITY);
        self.rewind();
        at_cap || self.rise_probability >= MAX_RISE_PROBABILITY
    }

    /// Another head's loss failed and the run returns to the last save: forget the losses
    /// since it, so a discarded loss never triggers anything again.
    pub fn rewind(&mut self) {
        self.history.truncate(self.history.len() - self.steps_since_save);
        self.steps_since_save = 0;
    }

    pub fn rise_probability(&self) -> f64 {
        self.rise_probability
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `n` losses from `f(step)`; returns the 1-based steps that shrank.
    fn shrink_steps(p: &mut Plateau, from: usize, n: usize, f: impl Fn(usize) -> f64) -> Vec<usize> {
        (from..from + n).filter(|&i| p.push(f(i)).is_some()).collect()
    }

    #[test]
    fn flat_losses_shrink_once_the_window_is_full() {
        // threshold 10 < 200: the budget passes it every step, so every step is checked.
        // Zeros tie (P = 0.5 < 0.51), so the count is the window length; it reaches 10 at
        // step 10. The shrink then drops min(400 + 1, 10) = all 10 losses, so the next
        // shrink needs 10 new ones: step 20.
        let mut p = Plateau::new(10, 0.1);
        assert_eq!(shrink_steps(&mut p, 1, 25, |_| 0.0), vec![10, 20]);
        assert_eq!(p.decays(), 2);
        assert_eq!(p.losses().len(), 5);
        assert_eq!(p.steps_without_progress(), 5);
    }

    #[test]
    fn the_budget_spaces_checks_as_dlib_does() {
        // threshold 1000: +200 per step passes 1000 at the 6th step, so checks run at
        // steps 6, 12, …; the first with 1000 zeros in the window is 1002. The shrink drops
        // 400 + 100 = 500 losses; the window is full again at step 1502 and the next check
        // after it (1002 + 6k) is 1506.
        let mut p = Plateau::new(1000, 0.1);
        assert_eq!(shrink_steps(&mut p, 1, 1600, |_| 0.0), vec![1002, 1506]);
        // Between checks the reported count is the one from the last check.
        assert_eq!(p.steps_without_progress(), 1596 - 1506 + 500);
    }

    #[test]
    fn both_counts_are_those_of_the_window_at_the_last_check() {
        // threshold 100 < 200: every step is a check. A slowly falling loss with a bad
        // batch every 10 steps: they hold the plain count up but not the robust one.
        let mut p = Plateau::new(100, 0.1);
        for i in 0..100 {
            p.push(10.0 - 0.001 * i as f64 + if i % 10 == 0 { 30.0 } else { 0.0 });
            let window: Vec<f64> = p.losses().collect();
            let robust =
                count_steps_without_decrease_robust(&window, DEFAULT_PROBABILITY_OF_DECREASE, DEFAULT_QUANTILE_DISCARD);
            assert_eq!(p.steps_without_progress_robust(), robust, "step {i}");
        }
        // The same counts as `trainer plateau` gives for this window.
        assert_eq!((p.steps_without_progress(), p.steps_without_progress_robust()), (79, 0));
    }

    #[test]
    fn a_steady_descent_never_shrinks() {
        let mut p = Plateau::new(100, 0.1);
        assert!(shrink_steps(&mut p, 1, 3000, |i| 10.0 - 0.001 * i as f64).is_empty());
        assert_eq!(p.steps_without_progress(), 0);
        assert_eq!(p.losses().len(), 100);
    }

    #[test]
    fn a_noisy_plateau_shrinks_after_a_descent() {
        let mut rng = crate::rng::Rng::new(3);
        let noise: Vec<f64> = (0..4000).map(|_| rng.unit() - 0.5).collect();
        let mut p = Plateau::new(500, 0.1);
        let loss = |i: usize| (2000usize.saturating_sub(i)) as f64 * 0.01 + 0.1 * noise[i];
        let shrinks = shrink_steps(&mut p, 0, 4000, loss);
        // Nothing can shrink while the loss is still clearly falling, and the flat part
        // (from step 2000) gives 2000 steps for at least one shrink.
        assert!(!shrinks.is_empty() && shrinks[0] > 2000, "{shrinks:?}");
    }

    #[test]
    fn serde_round_trip_resumes_identically() {
        let mut rng = crate::rng::Rng::new(5);
        let series: Vec<f64> = (0..3000).map(|i| 1.0 / (1.0 + i as f64 * 0.01) + 0.05 * rng.unit()).collect();
        let mut a = Plateau::new(300, 0.1);
        shrink_steps(&mut a, 0, 1500, |i| series[i]);
        let mut b: Plateau = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(a, b);
        let sa = shrink_steps(&mut a, 1500, 1500, |i| series[i]);
        let sb = shrink_steps(&mut b, 1500, 1500, |i| series[i]);
        assert_eq!(sa, sb);
        assert_eq!(a, b);
    }

    #[test]
    fn rollback_on_non_finite_losses_in_the_window() {
        let mut recent = vec![1.0; 10];
        recent.push(f64::NAN);
        // NaN counts at once, even one step after the save.
        assert!(loss_clearly_rose(&recent, 1, DEFAULT_RISE_PROBABILITY));
        recent[10] = f64::INFINITY;
        assert!(loss_clearly_rose(&recent, 1, DEFAULT_RISE_PROBABILITY));
        // A NaN older than the window (2 × steps since save) is ignored.
        let mut old = vec![f64::NAN];
        old.extend([1.0; 10]);
        assert!(!loss_clearly_rose(&old, 5, DEFAULT_RISE_PROBABILITY));
    }

    #[test]
    fn rollback_when_the_loss_clearly_rose() {
        let rising: Vec<f64> = (0..60).map(|i| 1.0 + 0.01 * i as f64 + 0.001 * (i % 3) as f64).collect();
        let falling: Vec<f64> = rising.iter().rev().copied().collect();
        assert!(loss_clearly_rose(&rising, 30, DEFAULT_RISE_PROBABILITY));
        assert!(!loss_clearly_rose(&falling, 30, DEFAULT_RISE_PROBABILITY));
        // Under 30 steps since the save dlib does not judge the trend.
        assert!(!loss_clearly_rose(&rising, 29, DEFAULT_RISE_PROBABILITY));
    }

    #[test]
    fn guard_tightens_on_repeated_rollbacks_then_shrinks() {
        let mut g = RollbackGuard::new();
        let rise = |g: &mut RollbackGuard, base: f64| {
            for i in 0..40 {
                g.record(base + 0.01 * i as f64 + 0.002 * (i % 2) as f64);
            }
        };
        rise(&mut g, 1.0);
        g.saved();
        // Each reload moves the threshold 90% of the way to 1 (0.999, 0.9999), capped at
        // 0.99999; reaching the cap means the learning rate should shrink too.
        rise(&mut g, 2.0);
        assert_eq!(g.at_save_point(), SaveDecision::Reload);
        assert!(!g.reload());
        assert!((g.rise_probability() - 0.999).abs() < 1e-12);
        // The reload forgets the losses since the save, and keeps the saved ones.
        assert_eq!(g.history.len(), 40);
        rise(&mut g, 2.0);
        assert_eq!(g.at_save_point(), SaveDecision::Reload);
        assert!(!g.reload());
        rise(&mut g, 2.0);
        assert_eq!(g.at_save_point(), SaveDecision::Reload);
        assert!(g.reload(), "the third reload in a row shrinks");
        // A good stretch saves, trims to 2 × 40 values, and relaxes the threshold (t^10).
        for i in 0..40 {
            g.record(1.0 - 0.01 * i as f64);
        }
        assert_eq!(g.at_save_point(), SaveDecision::Save);
        assert_eq!(g.history.len(), 80);
        assert!(g.rise_probability() < 0.99999 && g.rise_probability() >= DEFAULT_RISE_PROBABILITY);
    }

    #[test]
    fn non_finite_losses_reload_and_count_towards_the_shrink() {
        let mut g = RollbackGuard::new();
        assert!(!g.record(1.0));
        g.saved();
        assert!(g.record(f64::NAN));
        assert!(!g.reload());
        // The NaN came after the save, so the reload drops it, and no later save point
        // sees it again.
        assert!(g.history.iter().all(|v| v.is_finite()));
        assert_eq!(g.at_save_point(), SaveDecision::Save);
        assert!(g.record(f64::NAN));
        assert!(!g.reload());
        assert!(g.record(f64::INFINITY));
        assert!(g.reload(), "a third non-finite reload in a row shrinks the learning rate");
    }

    #[test]
    fn rewind_forgets_without_tightening() {
        let mut g = RollbackGuard::new();
        g.record(1.0);
        g.saved();
        g.record(5.0);
        g.rewind();
        assert_eq!((g.history.len(), g.rise_probability()), (1, DEFAULT_RISE_PROBABILITY));
    }
}
