//! What the loop decides after each step, from the mean losses over ranks: dlib's plateau
//! rule and its rollback guard, one of each per trained head, so a task's decays and
//! reloads follow its own loss series. Every rank judges the same summed losses with the
//! same state, so all reach rank 0's decision and apply it at the same step.

use std::collections::BTreeMap;
use std::hash::Hasher;

use super::state::TrainState;
use crate::model::Head;
use trainer_data::plateau::{Failure, RiseTest, RollbackGuard, SaveDecision};

/// One step's verdict.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Heads whose plateau rule fired, with the factor their learning rate shrinks by.
    pub decays: Vec<(Head, f64)>,
    pub rollback: Option<Rollback>,
    /// A rise that the safeguard's shrinks did not stop, accepted as the new level.
    pub accepted: Option<Accepted>,
    /// The run cannot go on (reloads keep failing at one step): end it with this message.
    pub give_up: Option<String>,
}

/// Return to the last good state.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollback {
    pub head: Head,
    pub failure: Failure,
    pub failed_step: u64,
    pub loss: f64,
    /// The how-manyth reload in a row this is.
    pub in_a_row: u32,
    /// dlib's rule: reloads keep coming, so the learning rate shrinks too.
    pub shrink: bool,
}

impl Rollback {
    /// The words the log has always used for the two reasons.
    pub fn reason(&self) -> &'static str {
        match self.failure {
            Failure::NonFinite => "NaN",
            Failure::Rose(_) => "rising loss",
        }
    }
}

/// Keep the state reached and undo the safeguard's shrinks for `head`.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub head: Head,
    pub test: RiseTest,
    /// Multiplies the learning rates the shrinks divided (1 when none are undone).
    pub restore: f64,
}

/// How far the safeguard may go: `max_rollbacks` reloads in a row without getting past
/// the failing step, and never a learning rate below `min_lr` (that stop belongs to the
/// plateau schedule).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub enabled: bool,
    pub max_rollbacks: u32,
    pub min_lr: f64,
    /// The factor a rollback's shrink applies (`--shrink`).
    pub shrink: f64,
}

/// The rollback guards and the count of reloads that made no progress (each rank's copy).
pub struct Judge {
    guards: BTreeMap<Head, RollbackGuard>,
    limits: Limits,
    /// Reloads since the run last got past the step that failed.
    in_a_row: u32,
    /// The furthest step at which a loss failed.
    failed_at: u64,
}

impl Judge {
    pub fn new(heads: &[Head], limits: Limits) -> Judge {
        let guards = heads.iter().map(|&h| (h, RollbackGuard::new())).collect();
        Judge { guards, limits, in_a_row: 0, failed_at: 0 }
    }

    /// The decision for the step just taken (`state.step` counts it), given each
    /// trained head's loss; `save_point` is dlib's "time to save or reload"; the plateau
    /// rule sees the losses only when `plateau` (not in a warm-up, not under poly); `lr` is
    /// the largest learning rate now.
    pub fn decide(
        &mut self,
        state: &mut TrainState,
        losses: &[(Head, f64)],
        save_point: bool,
        plateau: bool,
        lr: f64,
    ) -> Decision {
        if state.step > self.failed_at {
            self.in_a_row = 0;
        }
        let mut d = Decision::default();
        for &(head, loss) in losses {
            let non_finite = self.limits.enabled && self.guards.get_mut(&head).is_some_and(|g| g.record(loss));
            if non_finite {
                return self.roll_back(head, Failure::NonFinite, state.step, loss, lr);
            }
            let push = |p: &mut trainer_data::plateau::Plateau| if loss.is_finite() { p.push(loss) } else { None };
            if let Some(factor) = state.plateaus.get_mut(&head).filter(|_| plateau).and_then(push) {
                d.decays.push((head, factor));
            }
        }
        if self.limits.enabled && save_point {
            let heads: Vec<Head> = self.guards.keys().copied().collect();
            for head in heads {
                match self.guards.get_mut(&head).map_or(SaveDecision::Save, RollbackGuard::at_save_point) {
                    SaveDecision::Save => {}
                    SaveDecision::Accept { test, undo } => d.accepted = Some(self.accepted(head, test, undo)),
                    SaveDecision::Reload(failure) => {
                        let loss = losses.iter().find(|(h, _)| *h == head).map_or(f64::NAN, |(_, l)| *l);
                        return self.roll_back(head, failure, state.step, loss, lr);
                    }
                }
            }
        }
        d
    }

    fn accepted(&self, head: Head, test: RiseTest, undo: u32) -> Accepted {
        Accepted { head, test, restore: self.limits.shrink.powi(-(undo as i32)) }
    }

    fn roll_back(&mut self, head: Head, failure: Failure, step: u64, loss: f64, lr: f64) -> Decision {
        let guard = self.guards.get_mut(&head).expect("a guard per trained head");
        if guard.reload_would_shrink() && lr * self.limits.shrink < self.limits.min_lr {
            return match failure {
                // Shrinking is all that is left and the lr may not go lower: the level stays.
                Failure::Rose(test) => {
                    let undo = guard.accept();
                    Decision { accepted: Some(self.accepted(head, test, undo)), ..Decision::default() }
                }
                Failure::NonFinite => Decision {
                    give_up: Some(format!(
                        "the safeguard gave up at step {step}: the loss is still not finite after {} reloads in a row, \
                         and shrinking the lr again would take it below --min-lr {:e}",
                        self.in_a_row, self.limits.min_lr
                    )),
                    ..Decision::default()
                },
            };
        }
        let mut shrink = false;
        for (&h, g) in &mut self.guards {
            if h == head {
                shrink = g.reload(&failure);
            } else {
                g.rewind();
            }
        }
        self.failed_at = self.failed_at.max(step);
        self.in_a_row += 1;
        let rollback = Rollback { head, failure, failed_step: step, loss, in_a_row: self.in_a_row, shrink };
        let give_up = (self.in_a_row > self.limits.max_rollbacks).then(|| {
            let reason = rollback.reason();
            let what = if self.guards.len() > 1 { format!("{} {reason}", head.name()) } else { reason.to_string() };
            format!(
                "the safeguard gave up after {} rollbacks without getting past step {} (the last failure: {what} at step {step})",
                self.limits.max_rollbacks, self.failed_at
            )
        });
        Decision { rollback: Some(rollback), give_up, ..Decision::default() }
    }

    /// A digest of all the judging reads besides the losses (the guards, the reload counts,
    /// each head's plateau rule): equal on every rank while their judges agree.
    pub fn fingerprint(&self, state: &TrainState) -> u64 {
        let judged = (&self.guards, &state.plateaus, self.in_a_row, self.failed_at);
        let mut h = std::hash::DefaultHasher::new();
        h.write(&serde_json::to_vec(&judged).unwrap_or_default());
        h.finish()
    }

    /// A checkpoint was written off the save rhythm (a better validation): the losses
    /// since count as saved.
    pub fn saved(&mut self) {
        self.guards.values_mut().for_each(RollbackGuard::saved);
    }
}

/// "1st", "2nd", "3rd", "4th", ...
pub fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;

    fn limits(enabled: bool, max_rollbacks: u32) -> Limits {
        Limits { enabled, max_rollbacks, min_lr: 1e-5, shrink: 0.1 }
    }

    fn state() -> TrainState {
        let mut cfg = TrainConfig::default();
        cfg.schedule.plateau_steps = 8;
        TrainState::new(&cfg, &[Head::Fr, Head::Gender], 1, 10)
    }

    /// The digest moves with what the judging reads: a loss a plateau rule or guard keeps.
    #[test]
    fn the_fingerprint_follows_the_judges_state() {
        let (mut a, mut b) = (Judge::new(&[Head::Fr], limits(true, 3)), Judge::new(&[Head::Fr], limits(true, 3)));
        let (mut sa, mut sb) = (state(), state());
        assert_eq!(a.fingerprint(&sa), b.fingerprint(&sb));
        a.decide(&mut sa, &[(Head::Fr, 2.0)], false, true, 0.1);
        assert_ne!(a.fingerprint(&sa), b.fingerprint(&sb));
        b.decide(&mut sb, &[(Head::Fr, 2.0)], false, true, 0.1);
        assert_eq!(a.fingerprint(&sa), b.fingerprint(&sb));
    }

    #[test]
    fn each_head_decays_on_its_own_losses() {
        let (mut st, mut j) = (state(), Judge::new(&[Head::Fr, Head::Gender], limits(true, 10)));
        let mut fr_decays = 0;
        for i in 0..200u64 {
            st.step = i + 1;
            // FR still falls steeply, Gender is flat: only Gender's rule fires.
            let d = j.decide(&mut st, &[(Head::Fr, 40.0 - 0.1 * i as f64), (Head::Gender, 0.7)], false, true, 0.1);
            fr_decays += d.decays.iter().filter(|(h, _)| *h == Head::Fr).count();
            assert!(d.rollback.is_none());
        }
        assert_eq!(fr_decays, 0);
        assert!(st.plateaus[&Head::Gender].decays() > 0);
    }

    #[test]
    fn a_nan_rolls_back_and_the_third_in_a_row_shrinks_then_gives_up() {
        let (mut st, mut j) = (state(), Judge::new(&[Head::Fr, Head::Gender], limits(true, 4)));
        st.step = 7;
        let mut seen = vec![];
        for _ in 0..5 {
            let d = j.decide(&mut st, &[(Head::Fr, 1.0), (Head::Gender, f64::NAN)], false, true, 0.1);
            let rb = d.rollback.clone().expect("a rollback");
            seen.push((rb.in_a_row, rb.shrink, d.give_up.is_some()));
        }
        assert_eq!(
            seen,
            vec![(1, false, false), (2, false, false), (3, true, false), (4, true, false), (5, true, true)]
        );
        // Getting past the failing step resets the count.
        st.step = 8;
        assert!(j.decide(&mut st, &[(Head::Fr, 1.0), (Head::Gender, 0.5)], false, true, 0.1).rollback.is_none());
        st.step = 9;
        let d = j.decide(&mut st, &[(Head::Fr, f64::INFINITY), (Head::Gender, 0.5)], false, true, 0.1);
        assert_eq!(d.rollback.unwrap().in_a_row, 1);
    }

    #[test]
    fn disabled_guard_never_rolls_back_and_ordinals_read_well() {
        let (mut st, mut j) = (state(), Judge::new(&[Head::Fr], limits(false, 10)));
        st.step = 1;
        assert!(j.decide(&mut st, &[(Head::Fr, f64::NAN)], true, true, 0.1).rollback.is_none());
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22, 101].map(ordinal).join(" "),
            "1st 2nd 3rd 4th 11th 12th 13th 21st 22nd 101st"
        );
    }

    /// Replays `per_try` losses per save interval of 40 steps, retrying from the step-40
    /// save after each reload; returns what each save point at step 80 decided.
    fn retries(
        j: &mut Judge,
        st: &mut TrainState,
        lr: &mut f64,
        tries: usize,
        loss: impl Fn(u64) -> f64,
    ) -> Vec<String> {
        let mut seen = vec![];
        for step in 1..=40u64 {
            st.step = step;
            j.decide(st, &[(Head::Fr, 1.0 + 0.001 * (step % 3) as f64)], step == 40, false, *lr);
        }
        for _ in 0..tries {
            for step in 41..=80u64 {
                st.step = step;
                let d = j.decide(st, &[(Head::Fr, loss(step))], step == 80, false, *lr);
                match (d.rollback, d.accepted, d.give_up) {
                    (None, None, None) if step == 80 => seen.push("save".to_string()),
                    (None, None, None) => {}
                    (Some(rb), _, None) => {
                        *lr *= if rb.shrink { 0.1 } else { 1.0 };
                        seen.push(format!("{} shrink={}", rb.reason(), rb.shrink));
                        break;
                    }
                    (None, Some(a), None) => {
                        *lr *= a.restore;
                        seen.push(format!("accept restore={:.0}", a.restore));
                    }
                    (_, _, Some(msg)) => {
                        seen.push(msg);
                        break;
                    }
                }
            }
        }
        seen
    }

    #[test]
    fn a_rise_that_shrinking_does_not_stop_is_accepted_with_the_lr_restored() {
        let (mut st, mut j, mut lr) = (state(), Judge::new(&[Head::Fr], limits(true, 10)), 0.1);
        let seen = retries(&mut j, &mut st, &mut lr, 5, |step| 1.0 + 0.05 * (step - 40) as f64);
        let rise = "rising loss shrink=";
        let expected = [format!("{rise}false"), format!("{rise}false"), format!("{rise}true"), format!("{rise}true")];
        assert_eq!(seen[..4], expected);
        assert_eq!(seen[4..], ["accept restore=100"]);
        assert!((lr - 0.1).abs() < 1e-12, "the lr the saved state had: {lr}");
    }

    #[test]
    fn the_safeguard_never_shrinks_the_lr_below_min_lr() {
        // At lr 1e-4 one shrink is allowed (1e-5 is not below --min-lr 1e-5), a second not.
        let (mut st, mut j, mut lr) = (state(), Judge::new(&[Head::Fr], limits(true, 10)), 1e-4);
        let seen = retries(&mut j, &mut st, &mut lr, 5, |step| 1.0 + 0.05 * (step - 40) as f64);
        assert_eq!(seen[2..4], ["rising loss shrink=true".to_string(), "accept restore=10".into()]);
        assert!((lr - 1e-4).abs() < 1e-15, "{lr}");
        // A loss that stays NaN ends the run with the safeguard's own message instead.
        let (mut st, mut j, mut lr) = (state(), Judge::new(&[Head::Fr], limits(true, 10)), 1e-4);
        let seen = retries(&mut j, &mut st, &mut lr, 5, |_| f64::NAN);
        assert!(seen[3].starts_with("the safeguard gave up at step 41") && seen[3].contains("--min-lr"), "{seen:?}");
    }
}
