//! The train loop's side of the rollback safeguard: returning to the last good state,
//! and accepting a new loss level (see `trainer_data::plateau` for the rule itself).

use anyhow::Result;
use serde_json::json;

use super::{Good, Session};
use crate::model::Head;
use crate::train::decisions::{ordinal, Accepted, Rollback};
use crate::train::replica::{head_groups, BACKBONE};
use crate::train::scaler::DeviceScale;
use crate::train::state::{LrCause, LrChange};
use trainer_data::plateau::Failure;

impl Session {
    /// Returns to the latest good state; the files forget the discarded steps, and the
    /// `rollback` event keeps their losses.
    pub(super) fn roll_back(&mut self, rb: Rollback) -> Result<()> {
        self.replica.restore(&self.good.replica)?;
        self.state.run.positions = self.pools.positions();
        self.state.run.rollbacks += 1;
        self.state.roll_back_to(&self.good.state);
        self.amp = self.state.loss_scale.as_ref().map(|s| DeviceScale::new(s, self.replica.device()));
        let lr_before = self.lr_shown();
        if rb.shrink {
            let factor = self.state.plateaus.get_mut(&rb.head).map_or(self.cfg.schedule.shrink, |p| p.shrink_now());
            let groups = rollback_groups(rb.head);
            self.replica.scale_lr(&groups, factor);
            let change = LrChange {
                step: self.state.step,
                cause: LrCause::Rollback,
                head: rb.head,
                groups: groups.iter().map(|g| g.to_string()).collect(),
                factor,
            };
            self.state.lr_changes.push(change);
            // The shrink outlives later reloads (as dlib's rate does): the good state has it.
            self.good = Good {
                replica: self.replica.snapshot(),
                state: self.state.clone(),
                checkpoint: self.good.checkpoint.clone(),
            };
        }
        let lr = self.lr_shown();
        let discarded = self.log.rewind(self.state.step, &self.state.loss_counts)?;
        let what =
            if self.heads.len() > 1 { format!("{} {}", rb.head.name(), rb.reason()) } else { rb.reason().into() };
        let lr_note = if rb.shrink { format!("lr {lr_before:.3e} → {lr:.3e}") } else { "lr unchanged".into() };
        let msg = format!(
            "rolled back to step {} ({what} at step {}); {lr_note} ({} reload)",
            self.state.step,
            rb.failed_step,
            ordinal(rb.in_a_row)
        );
        let test = match &rb.failure {
            Failure::Rose(test) => format!(": {}", test.describe()),
            Failure::NonFinite => String::new(),
        };
        tracing::warn!("{msg}{test}");
        self.log.rank_note(&format!("{msg}{test}"))?;
        let discarded: serde_json::Map<String, serde_json::Value> =
            discarded.into_iter().map(|(h, v)| (h.name().to_string(), json!(v))).collect();
        let mut event = json!({
            "event": "rollback", "step": rb.failed_step, "to_step": self.state.step, "head": rb.head, "reason": rb.reason(),
            "loss": rb.loss, "reload": rb.in_a_row, "lr_before": lr_before, "lr": lr, "discarded_losses": discarded,
        });
        if let Failure::Rose(test) = &rb.failure {
            event["rise_test"] = json!(test);
        }
        self.log.event(event)
    }

    /// A rise that survived the safeguard's shrinks is the run's new level: keep the state
    /// reached, undo those shrinks (the lr the saved state had), and say so loudly.
    pub(super) fn accept_level(&mut self, accepted: &Accepted) -> Result<()> {
        let lr_before = self.lr_shown();
        if accepted.restore != 1.0 {
            let groups = rollback_groups(accepted.head);
            self.replica.scale_lr(&groups, accepted.restore);
            let change = LrChange {
                step: self.state.step,
                cause: LrCause::Accepted,
                head: accepted.head,
                groups: groups.iter().map(|g| g.to_string()).collect(),
                factor: accepted.restore,
            };
            self.state.lr_changes.push(change);
        }
        let lr = self.lr_shown();
        let (step, test) = (self.state.step, &accepted.test);
        let msg = format!(
            "accepted the {} loss of steps {}..{step} as the run's new level: retries from the step-{} state \
             kept rising at a smaller lr ({}); going on at lr {lr:.3e} (was {lr_before:.3e})",
            accepted.head.name(),
            step + 1 - test.steps_after as u64,
            step - test.steps_after as u64,
            test.describe()
        );
        tracing::warn!("{msg}");
        self.log.rank_note(&msg)?;
        self.log.event(json!({
            "event": "rise_accepted", "step": step, "head": accepted.head, "rise_test": test,
            "lr_before": lr_before, "lr": lr,
        }))
    }
}

/// The groups a rollback's shrink scales: the failing head's and the backbone's.
fn rollback_groups(head: Head) -> Vec<&'static str> {
    let mut groups = head_groups(head).to_vec();
    groups.push(BACKBONE);
    groups
}
