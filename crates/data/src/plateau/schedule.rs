//! dlib's `dnn_trainer` learning-rate rule (dlib/dnn/trainer.h) and its rollback safeguard.

use super::rise::RiseTest;
use super::running_gradient::{
    count_backwards, count_steps_without_decrease_robust, DEFAULT_PROBABILITY_OF_DECREASE, DEFAULT_QUANTILE_DISCARD,
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

/// Why the losses since the last save fail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Failure {
    /// A NaN or infinite loss: reload at once, as dlib does.
    NonFinite,
    /// A finite loss clearly rose (see [`RiseTest`]).
    Rose(RiseTest),
}

/// What a save point decides.
#[derive(Clone, Debug, PartialEq)]
pub enum SaveDecision {
    /// The loss is fine: save the state.
    Save,
    /// Return to the last saved state instead (and call [`RollbackGuard::reload`]).
    Reload(Failure),
    /// The loss still rises after the safeguard shrank the learning rate
    /// [`MAX_RISE_SHRINKS`] times from the same state: the shrinks are not what it
    /// needs, so the new level is accepted as the run's own. Save, and undo the shrinks
    /// (`undo` of them).
    Accept { test: RiseTest, undo: u32 },
}

/// dlib's rule: below 30 steps since the save only a non-finite loss counts.
pub const MIN_STEPS_FOR_RISE_TEST: usize = 30;
pub const DEFAULT_RISE_PROBABILITY: f64 = 0.99;
const MAX_RISE_PROBABILITY: f64 = 0.99999;
/// Shrinks for a rising (finite) loss in a row, retrying from one saved state, before
/// the state's level is accepted. dlib has no bound and shrinks towards its minimum
/// learning rate, ending the run.
pub const MAX_RISE_SHRINKS: u32 = 2;

/// The stateful side of dlib's safeguard: the losses since a little before the last save
/// and the slope threshold, which tightens towards 0.99999 on each reload in a row (so
/// training cannot loop on reloads: at the cap the learning rate shrinks too) and relaxes
/// back to 0.99 after a good tested save. Unlike dlib, a finite rise must also be large
/// against the loss's noise ([`RiseTest`]), and at most [`MAX_RISE_SHRINKS`] shrinks come
/// from it in a row. Keep it outside the checkpoint: dlib does not restore the threshold
/// when it reloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackGuard {
    history: VecDeque<f64>,
    steps_since_save: usize,
    rise_probability: f64,
    /// Shrinks for a rising loss since the last good save.
    #[serde(default)]
    rise_shrinks: u32,
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
            rise_shrinks: 0,
        }
    }

    /// Records one step's loss; true when it is non-finite (the loop reloads at once).
    pub fn record(&mut self, loss: f64) -> bool {
        self.history.push_back(loss);
        self.steps_since_save += 1;
        !loss.is_finite()
    }

    /// Decides at a save point whether the losses since the last save failed.
    pub fn at_save_point(&mut self) -> SaveDecision {
        let k = self.steps_since_save;
        let losses = self.history.make_contiguous();
        let split = losses.len() - k;
        let (before, after) = (&losses[split.saturating_sub(k)..split], &losses[split..]);
        if before.iter().chain(after).any(|v| !v.is_finite()) {
            return SaveDecision::Reload(Failure::NonFinite);
        }
        if k < MIN_STEPS_FOR_RISE_TEST {
            self.saved();
            return SaveDecision::Save;
        }
        let test = RiseTest::run(before, after, self.rise_probability);
        if test.rose() && self.rise_shrinks >= MAX_RISE_SHRINKS {
            return SaveDecision::Accept { test, undo: self.accept() };
        }
        if test.rose() {
            return SaveDecision::Reload(Failure::Rose(test));
        }
        self.rise_probability = self.rise_probability.powf(10.0).max(DEFAULT_RISE_PROBABILITY);
        self.rise_shrinks = 0;
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

    /// This head's loss failed and the run returns to the last save: forget the losses
    /// since it and tighten the threshold. True when the learning rate shrinks too
    /// ([`Self::reload_would_shrink`]).
    pub fn reload(&mut self, failure: &Failure) -> bool {
        let shrink = self.reload_would_shrink();
        self.rise_probability = (0.1 * self.rise_probability + 0.9).min(MAX_RISE_PROBABILITY);
        self.rewind();
        if shrink && matches!(failure, Failure::Rose(_)) {
            self.rise_shrinks += 1;
        }
        shrink
    }

    /// The threshold is at its cap, or reaches it with this reload: reloads keep coming,
    /// so the learning rate shrinks too (dlib's rule; with a fresh guard, the third
    /// reload in a row).
    pub fn reload_would_shrink(&self) -> bool {
        (0.1 * self.rise_probability + 0.9).min(MAX_RISE_PROBABILITY) >= MAX_RISE_PROBABILITY
    }

    /// The losses since the save are the run's new level: count them as saved and start
    /// the threshold afresh. Returns how many rise shrinks that level survived (to undo).
    pub fn accept(&mut self) -> u32 {
        let undo = self.rise_shrinks;
        self.rise_probability = DEFAULT_RISE_PROBABILITY;
        self.rise_shrinks = 0;
        self.saved();
        undo
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

    /// Replays a loss series through a guard that saves every `every` steps, as the
    /// train loop does; returns the first save point that did not save, and its decision.
    fn replay(losses: &[f64], every: usize) -> Option<(usize, SaveDecision)> {
        let mut g = RollbackGuard::new();
        for (i, &loss) in losses.iter().enumerate() {
            if g.record(loss) {
                return Some((i + 1, SaveDecision::Reload(Failure::NonFinite)));
            }
            if (i + 1) % every == 0 {
                let d = g.at_save_point();
                if d != SaveDecision::Save {
                    return Some((i + 1, d));
                }
            }
        }
        None
    }

    fn noisy(seed: u64, n: usize, sigma: f64, level: impl Fn(usize) -> f64) -> Vec<f64> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|i| level(i) + sigma * ((0..12).map(|_| rng.unit()).sum::<f64>() - 6.0)).collect()
    }

    #[test]
    fn healthy_series_never_roll_back() {
        // The run: 36 → 15.4 by step 600, then level at ~16 with less noise.
        let fall_then_flat = noisy(1, 4000, 1.0, |i| if i < 600 { 36.0 - 0.034 * i as f64 } else { 16.0 });
        let plateau = noisy(2, 4000, 0.8, |_| 15.0);
        let drift_down = noisy(3, 4000, 0.5, |i| 15.0 - 0.0005 * i as f64);
        // A fall, then a level a little above the lowest losses of the fall.
        let overshoot = noisy(4, 2000, 0.6, |i| if i < 600 { 30.0 - 0.0245 * i as f64 } else { 15.8 });
        for (name, series) in [
            ("fall then flat", fall_then_flat),
            ("plateau", plateau),
            ("drift down", drift_down),
            ("overshoot", overshoot),
        ] {
            for every in [50, 100, 300] {
                assert_eq!(replay(&series, every), None, "{name}, a save every {every} steps");
            }
        }
    }

    #[test]
    fn divergence_rolls_back() {
        // A climb of 5 over the 100 steps since the save, at σ 0.5: caught at that save.
        let climb = noisy(5, 1000, 0.5, |i| 15.0 + if i < 500 { 0.0 } else { 0.05 * (i - 500) as f64 });
        let jump = noisy(6, 1000, 0.5, |i| if i < 530 { 15.0 } else { 25.0 });
        let mut nan = noisy(7, 1000, 0.5, |_| 15.0);
        nan[512] = f64::NAN;
        for (name, series, at) in [("climb", climb, 600), ("jump", jump, 600), ("NaN", nan, 513)] {
            let (step, decision) = replay(&series, 100).unwrap_or_else(|| panic!("{name}: no rollback"));
            assert_eq!(step, at, "{name}");
            assert!(matches!(decision, SaveDecision::Reload(_)), "{name}: {decision:?}");
        }
    }

    #[test]
    fn non_finite_losses_before_or_after_the_save_reload() {
        let mut g = RollbackGuard::new();
        (0..10).for_each(|_| _ = g.record(1.0));
        g.saved();
        assert!(g.record(f64::INFINITY), "an infinite loss is reported at once");
        assert_eq!(g.at_save_point(), SaveDecision::Reload(Failure::NonFinite));
    }

    /// A guard whose last save holds `n` flat losses, then `n` rising ones since.
    fn rising_guard(n: usize) -> RollbackGuard {
        let mut g = RollbackGuard::new();
        (0..n).for_each(|_| _ = g.record(1.0));
        g.saved();
        (0..n).for_each(|i| _ = g.record(1.0 + 0.05 * i as f64));
        g
    }

    #[test]
    fn guard_tightens_then_shrinks_twice_then_accepts_the_new_level() {
        let mut g = rising_guard(40);
        let mut shrinks = vec![];
        for _ in 0..4 {
            let SaveDecision::Reload(failure) = g.at_save_point() else { panic!("expected a reload") };
            assert!(matches!(failure, Failure::Rose(_)));
            shrinks.push(g.reload(&failure));
            // The reload forgets the losses since the save, and keeps the saved ones.
            assert_eq!(g.history.len(), 40);
            (0..40).for_each(|i| _ = g.record(1.0 + 0.05 * i as f64 + 0.002 * (i % 2) as f64));
        }
        // The threshold moves 90% of the way to 1 per reload (0.999, 0.9999, 0.99999):
        // the third and later reloads in a row shrink (dlib's rule), at most twice here.
        assert_eq!(shrinks, [false, false, true, true]);
        let SaveDecision::Accept { test, undo } = g.at_save_point() else { panic!("expected an acceptance") };
        assert_eq!(undo, MAX_RISE_SHRINKS);
        assert!(test.rose());
        // Accepted: the losses count as saved, and the threshold starts afresh.
        assert_eq!((g.steps_since_save, g.rise_probability()), (0, DEFAULT_RISE_PROBABILITY));
        // The accepted losses (a climb from 1 to 2.95, median 1.98) are the reference now.
        (0..40).for_each(|i| _ = g.record(1.9 + 0.001 * (i % 3) as f64));
        assert_eq!(g.at_save_point(), SaveDecision::Save, "within the accepted losses: no rise");
    }

    #[test]
    fn a_good_save_resets_the_rise_shrinks() {
        let mut g = rising_guard(40);
        for retry in 0..3 {
            if retry > 0 {
                (0..40).for_each(|i| _ = g.record(1.0 + 0.05 * i as f64));
            }
            let SaveDecision::Reload(failure) = g.at_save_point() else { panic!("expected a reload") };
            g.reload(&failure);
        }
        assert_eq!(g.rise_shrinks, 1);
        (0..40).for_each(|i| _ = g.record(1.0 - 0.001 * i as f64));
        assert_eq!(g.at_save_point(), SaveDecision::Save);
        assert_eq!(g.rise_shrinks, 0);
        assert!(g.rise_probability() < MAX_RISE_PROBABILITY && g.rise_probability() >= DEFAULT_RISE_PROBABILITY);
    }

    #[test]
    fn non_finite_losses_reload_and_count_towards_the_shrink() {
        let mut g = RollbackGuard::new();
        assert!(!g.record(1.0));
        g.saved();
        assert!(g.record(f64::NAN));
        assert!(!g.reload(&Failure::NonFinite));
        // The NaN came after the save, so the reload drops it, and no later save point
        // sees it again.
        assert!(g.history.iter().all(|v| v.is_finite()));
        assert_eq!(g.at_save_point(), SaveDecision::Save);
        assert!(g.record(f64::NAN));
        assert!(!g.reload(&Failure::NonFinite));
        assert!(g.record(f64::INFINITY));
        assert!(g.reload(&Failure::NonFinite), "a third non-finite reload in a row shrinks the learning rate");
        assert_eq!(g.rise_shrinks, 0, "NaN shrinks are dlib's, unbounded by the rise rule");
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
