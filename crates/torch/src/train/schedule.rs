//! The learning-rate factor a step applies on top of each group's rate: `--warmup-steps`'
//! linear ramp, then 1 under the plateau rule (which shrinks the rates itself), or
//! arcface_torch's polynomial decay to 0 at `--max-steps` (`--schedule poly`, power 2).

use crate::config::Schedule;

/// arcface_torch's PolyScheduler power.
const POLY_POWER: f64 = 2.0;

/// The factor for the step with 0-based index `step`: `(step + 1) / warmup` during the
/// warm-up, then 1 (plateau) or the polynomial decay over the steps after the warm-up.
pub fn lr_factor(schedule: Schedule, warmup: u64, max_steps: Option<u64>, step: u64) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    match (schedule, max_steps) {
        (Schedule::Poly, Some(max)) if max > warmup => {
            let t = (step - warmup) as f64 / (max - warmup) as f64;
            (1.0 - t).max(0.0).powf(POLY_POWER)
        }
        _ => 1.0,
    }
}

/// True while the plateau rule should see the step's losses: never under poly, and not
/// during the warm-up, whose rising rate would otherwise count as a plateau's start.
pub fn plateau_counts(schedule: Schedule, warmup: u64, step: u64) -> bool {
    schedule == Schedule::Plateau && step >= warmup
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_then_plateau_is_flat() {
        let f: Vec<f64> = (0..6).map(|s| lr_factor(Schedule::Plateau, 4, None, s)).collect();
        assert_eq!(f, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert!(!plateau_counts(Schedule::Plateau, 4, 3) && plateau_counts(Schedule::Plateau, 4, 4));
        assert!(!plateau_counts(Schedule::Poly, 0, 100));
    }

    /// arcface_torch's PolyScheduler with warmup 2, max 12: base × (1 − (s − 2)/10)².
    #[test]
    fn poly_matches_arcface_torch() {
        let f: Vec<f64> = (0..13).map(|s| lr_factor(Schedule::Poly, 2, Some(12), s)).collect();
        assert_eq!(&f[..3], &[0.5, 1.0, 1.0]);
        assert!((f[7] - 0.25).abs() < 1e-12, "{f:?}");
        assert!((f[11] - 0.01).abs() < 1e-12 && f[12] == 0.0, "{f:?}");
    }
}
