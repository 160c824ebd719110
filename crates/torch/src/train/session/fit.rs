//! The training loop: step, decide (the plateau rule and rollback guard, judged alike on
//! every rank), log, validate, checkpoint; and always a final validation and checkpoint,
//! whatever stopped it.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::interval::{add_to_row, column, step_row, Interval, Local, Settled};
use super::{Good, Session};
use crate::dist::ReduceOp;
use crate::host_sync;
use crate::model::partial_fc::{CommBytes, PfcStep};
use crate::model::Head;
use crate::train::backward::{backward_and_reduce, can_overlap, Reduced};
use crate::train::checkpoint;
use crate::train::decisions::Decision;
use crate::train::replica::{head_groups, BACKBONE};
use crate::train::scaler::{scaled_loss, DeviceScale};
use crate::train::schedule::{lr_factor, plateau_counts};
use crate::train::state::{LrCause, LrChange};
use crate::train::step::{heads_for_step, losses};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxSteps,
    TimeLimit,
    MinLr,
    Signal,
}

/// Throughput over the steps since the last log line.
struct Window {
    start: Instant,
    images: f64,
    wait: f64,
    comm_wait: f64,
}

impl Window {
    fn new() -> Window {
        Window { start: Instant::now(), images: 0.0, wait: 0.0, comm_wait: 0.0 }
    }
}

impl Session {
    /// Runs the loop. An error on one rank of several ends the whole job here, reason
    /// first, while the session (and its communicator, whose teardown could wait on a
    /// collective the peers never finish) is still alive.
    pub fn fit(mut self, signal: &AtomicBool) -> Result<StopReason> {
        match self.run_loop(signal) {
            Err(e) if self.comm.world() > 1 => {
                crate::dist::failure::end_job(&format!("rank {}: {e:#}", self.comm.rank()))
            }
            result => result,
        }
    }

    fn run_loop(&mut self, signal: &AtomicBool) -> Result<StopReason> {
        let clock = Instant::now();
        let mut window = Window::new();
        let mut interval = Interval::default();
        let bar = self.progress_bar();
        let reason = loop {
            self.train_step(&mut interval)?;
            self.state.step += 1;
            bar.set_position(self.state.step);
            if !self.settles_now() {
                continue;
            }
            let stats = self.settle(&mut interval, signal, clock)?;
            window.images += stats.images;
            window.wait += stats.data_wait;
            window.comm_wait += stats.comm_wait;
            self.check_labelled(&stats)?;
            let decision = self.decide(&stats);
            if let Some(msg) = &decision.give_up {
                self.log.event(json!({"event": "give_up", "step": self.state.step, "message": msg}))?;
                bail!("{msg}; lr {:.3e}; the last good checkpoint is {}", self.lr_shown(), self.good_checkpoint());
            }
            if let Some(rb) = decision.rollback {
                self.roll_back(rb)?;
                continue;
            }
            if let Some(accepted) = &decision.accepted {
                self.accept_level(accepted)?;
            }
            self.apply_decays(&decision.decays)?;
            if self.state.step.is_multiple_of(self.cfg.run.log_every) {
                self.log_progress(&stats, &window)?;
                window = Window::new();
            }
            if let Some(stop) = self.stop_reason(&stats) {
                break stop;
            }
            // Validation and checkpoints wait by nature; `host_syncs` counts the steps'.
            if self.state.step.is_multiple_of(self.cfg.valid.valid_every) {
                host_sync::uncounted(|| self.validate_and_keep_best(clock))?;
            }
            if self.state.step.is_multiple_of(self.cfg.checkpoint.save_every) && self.good.state.step != self.state.step
            {
                host_sync::uncounted(|| self.checkpoint(clock))?;
            }
        };
        bar.finish_and_clear();
        self.finish(reason, clock)?;
        Ok(reason)
    }

    /// Rank 0's bar on a terminal (hidden elsewhere); the log says the rest.
    fn progress_bar(&self) -> indicatif::ProgressBar {
        if self.comm.rank() != 0 {
            return indicatif::ProgressBar::hidden();
        }
        let template = if self.cfg.schedule.max_steps.is_some() {
            "{elapsed_precise} [{bar:30}] step {pos}/{len} ({per_sec}, eta {eta}) {msg}"
        } else {
            "{elapsed_precise} step {pos} ({per_sec}) {msg}"
        };
        trainer_data::term::progress_bar(self.cfg.schedule.max_steps.unwrap_or(0), template)
            .with_position(self.state.step)
    }

    /// Whether the steps so far must be settled now: at a log line, a save point, a
    /// validation or the last step (everything that reads the losses or keeps the state).
    fn settles_now(&self) -> bool {
        let step = self.state.step;
        [self.cfg.run.log_every, self.cfg.checkpoint.save_every, self.cfg.valid.valid_every]
            .iter()
            .any(|&every| step.is_multiple_of(every))
            || self.cfg.schedule.max_steps.is_some_and(|m| step >= m)
    }

    /// The interval's numbers, agreed by every rank; each step's losses into `loss_debug/`.
    fn settle(&mut self, interval: &mut Interval, signal: &AtomicBool, clock: Instant) -> Result<Settled> {
        let elapsed = self.state.elapsed_secs + clock.elapsed().as_secs_f64();
        let out_of_time = self.cfg.schedule.time_limit.is_some_and(|t| elapsed >= t);
        let total_shown = !self.cfg.optim.alternate || self.heads.len() == 1;
        if let Some(amp) = &self.amp {
            interval.attach(amp.values());
        }
        let local = Local {
            signalled: signal.load(Ordering::Relaxed),
            out_of_time,
            fingerprint: crate::dist::failure::maybe_drift(self.judge.fingerprint(&self.state)),
        };
        let stats = interval.settle(&*self.comm, local, total_shown)?;
        self.read_back_scale(&stats.tail);
        self.state.run.skipped_records += stats.skipped as u64;
        for step in &stats.steps {
            for &(head, loss) in &step.losses {
                self.log.loss(head, loss)?;
            }
        }
        Ok(stats)
    }

    /// One optimiser step; its losses stay on the device, in `interval`.
    fn train_step(&mut self, interval: &mut Interval) -> Result<()> {
        let step = self.state.step;
        crate::dist::failure::set_step(step + 1);
        crate::dist::failure::maybe_panic();
        crate::dist::failure::maybe_error()?;
        tch::manual_seed(
            trainer_data::rng::mix(self.cfg.run.seed ^ step.wrapping_mul(0x9E37)) as i64 ^ self.comm.rank() as i64,
        );
        let heads = heads_for_step(&self.cfg, step);
        self.replica.zero_grad();
        let mut wait = 0.0;
        let row = step_row(self.replica.device());
        let inject = self
            .cfg
            .schedule
            .inject_nan_at
            .is_some_and(|at| step + 1 >= at && self.state.run.rollbacks < self.cfg.schedule.inject_nan_times);
        let accum = self.cfg.optim.accum as f64;
        let mut bytes = CommBytes::default();
        let overlap =
            can_overlap(self.cfg.comm.overlap.on(), &*self.comm, &self.replica, self.cfg.model.freeze_backbone);
        let mut reduced = Reduced::default();
        for micro in 0..self.cfg.optim.accum {
            // Only the last micro-batch's backward communicates.
            let last = micro + 1 == self.cfg.optim.accum;
            let t = Instant::now();
            let batches = self.pools.next(&heads)?;
            wait += t.elapsed().as_secs_f64();
            interval.count(&batches);
            let pfc = self.replica.slice().map(|slice| PfcStep {
                comm: &*self.comm,
                slice,
                sample_rate: self.cfg.model.sample_rate,
                seed: self.cfg.run.seed,
                step,
                grad_factor: 1.0 / accum,
                loss_scale: self.amp.as_ref().map(DeviceScale::scale),
            });
            if pfc.is_some() {
                let rows = batches.iter().filter(|p| p.heads.contains(&Head::Fr)).map(|p| p.batch.n).sum();
                bytes.add_partial_fc(rows, self.comm.world(), self.cfg.heads.emb_dim);
            }
            let net = self.replica.net();
            let l =
                losses(net, &self.cfg, &batches, self.replica.device(), &*self.comm, pfc.as_ref(), overlap && last)?;
            self.pools.recycle(&heads, batches);
            let objective = if inject { l.total * f64::NAN } else { l.total };
            let scaled = scaled_loss(&objective, self.cfg.optim.accum, self.amp.as_ref().map(DeviceScale::scale));
            match last {
                true => reduced = backward_and_reduce(&scaled, &l.cuts, &mut self.replica, &*self.comm)?,
                false => scaled.backward(),
            }
            add_to_row(&row, 0, &objective, accum);
            for (head, p) in l.parts.iter().filter(|(h, _)| heads.contains(h)) {
                add_to_row(&row, column(*head), p, accum);
            }
        }
        if inject {
            let _ = row.shallow_clone().fill_(f64::NAN);
        }
        bytes.allreduce += self.replica.reduced_numel() * if self.cfg.comm.fp16_allreduce { 2 } else { 4 };
        if self.unscale(&self.replica.all_grads())? {
            if let Some(max) = self.cfg.optim.clip_grad_norm {
                self.replica.clip_backbone(max);
            }
            self.replica.set_lr_factor(lr_factor(
                self.cfg.schedule.schedule,
                self.cfg.schedule.warmup_steps,
                self.cfg.schedule.max_steps,
                step,
            ));
            self.replica.step(&heads);
        }
        interval.push(step + 1, heads, row, wait, reduced, bytes);
        Ok(())
    }

    /// A head that sees no labelled sample in a whole epoch of its data learns nothing:
    /// that is an error, not a silent no-op (a batch without one is fine).
    fn check_labelled(&mut self, stats: &Settled) -> Result<()> {
        let epochs = self.pools.epochs();
        for (head, (epoch, seen)) in &mut self.labelled {
            *seen += stats.labelled[*head as usize];
            let now = epochs.get(head).copied().unwrap_or(*epoch);
            if now > *epoch {
                if *seen == 0.0 {
                    bail!("{} saw no labelled sample in epoch {epoch} of its training data (every target was -1): it learns nothing", head.name());
                }
                (*epoch, *seen) = (now, 0.0);
            }
        }
        Ok(())
    }

    /// With `--amp fp16`: the gradients unscaled and checked on the device, the scale updated
    /// there, and the optimiser told to skip the step where they were not finite: true, with
    /// nothing read. Only AdamW (whose step counts are host numbers) reads the flag, and gets
    /// false for a step to skip. Without loss scaling: always true.
    /// Under Partial FC each rank's centre gradients are its own, so the ranks agree on the
    /// flag first (an all-reduce of the device tensor).
    fn unscale(&mut self, grads: &[tch::Tensor]) -> Result<bool> {
        let Some(amp) = self.amp.as_mut() else { return Ok(true) };
        let found = amp.unscale(grads).shallow_clone();
        if self.replica.slice().is_some() {
            self.comm.all_reduce(&found, ReduceOp::Max)?;
        }
        amp.update();
        Ok(self.replica.skip_if(&found) || host_sync::f64_of(&found) == 0.0)
    }

    /// The loss scale's device state, read with the interval's losses, into the host's copy
    /// (logs, checkpoints); skipped steps are reported here, at most one interval late.
    fn read_back_scale(&mut self, values: &[f64]) {
        let Some(scale) = self.state.loss_scale.as_mut() else { return };
        let before = scale.skipped;
        if scale.read_back(values) {
            tracing::warn!(
                "by step {}: {} more steps with inf/NaN gradients under --amp skipped; loss scale now {:e}",
                self.state.step,
                scale.skipped - before,
                scale.scale
            );
        }
    }

    /// Judges the mean losses of each settled step in turn. Every rank does, on the same
    /// gathered sums, so each reaches rank 0's decision without a broadcast (the settle
    /// checks that their judges agree). A rollback or a give-up ends the judging: the
    /// steps after it are undone anyway.
    fn decide(&mut self, stats: &Settled) -> Decision {
        let now = self.state.step;
        let mut all = Decision::default();
        for s in &stats.steps {
            self.state.step = s.step;
            let save_point = s.step.is_multiple_of(self.cfg.checkpoint.save_every);
            // A step's 0-based index is one less than its number.
            let plateau = plateau_counts(self.cfg.schedule.schedule, self.cfg.schedule.warmup_steps, s.step - 1);
            let d = self.judge.decide(&mut self.state, &s.losses, save_point, plateau, self.replica.max_lr());
            all.decays.extend(d.decays);
            all.accepted = d.accepted.or(all.accepted);
            if d.rollback.is_some() || d.give_up.is_some() {
                (all.rollback, all.give_up) = (d.rollback, d.give_up);
                break;
            }
        }
        self.state.step = now;
        all
    }

    /// The parameter groups a head's decay shrinks: its own, and the backbone's when the
    /// head is the one that leads the backbone (`--plateau-task`).
    fn decay_groups(&self, head: Head) -> Vec<&'static str> {
        let mut groups = head_groups(head).to_vec();
        if head == self.plateau_task() {
            groups.push(BACKBONE);
        }
        groups
    }

    fn plateau_task(&self) -> Head {
        self.cfg.schedule.plateau_task.filter(|h| self.heads.contains(h)).unwrap_or(self.heads[0])
    }

    fn apply_decays(&mut self, decays: &[(Head, f64)]) -> Result<()> {
        for &(head, factor) in decays {
            let groups = self.decay_groups(head);
            self.replica.scale_lr(&groups, factor);
            let change = LrChange {
                step: self.state.step,
                cause: LrCause::Plateau,
                head,
                groups: groups.iter().map(|g| g.to_string()).collect(),
                factor,
            };
            self.state.lr_changes.push(change);
            let lr = self.lr_shown();
            self.log.rank_note(&format!(
                "lr decay at step {} ({} plateau): {} × {factor} → lr {lr:.3e}",
                self.state.step,
                head.name(),
                groups.join(", ")
            ))?;
            self.log.event(json!({"event": "decay", "step": self.state.step, "head": head, "groups": groups, "factor": factor, "lr": lr}))?;
        }
        Ok(())
    }

    /// The learning rate to report: the backbone's, or the first trained head's.
    pub(super) fn lr_shown(&self) -> f64 {
        self.replica.lr(BACKBONE).or_else(|| self.replica.lrs().first().map(|(_, lr)| *lr)).unwrap_or(0.0)
    }

    fn good_checkpoint(&self) -> String {
        self.good.checkpoint.as_ref().map_or("(none yet: the start of the run)".into(), |p| p.display().to_string())
    }

    fn stop_reason(&self, stats: &Settled) -> Option<StopReason> {
        if stats.signalled {
            return Some(StopReason::Signal);
        }
        if stats.out_of_time {
            return Some(StopReason::TimeLimit);
        }
        if self.cfg.schedule.max_steps.is_some_and(|m| self.state.step >= m) {
            return Some(StopReason::MaxSteps);
        }
        if self.replica.max_lr() < self.cfg.schedule.min_lr {
            return Some(StopReason::MinLr);
        }
        None
    }

    /// `epoch` is the lead task's; with a pool per task each also logs `epoch_<task>` (a
    /// small Gender set wraps far more often than the identity set).
    fn log_epochs(&self, ev: &mut serde_json::Value) {
        let epochs = self.pools.epochs();
        ev["epoch"] = json!(self.heads.first().and_then(|h| epochs.get(h)).copied().unwrap_or(0));
        if self.pools.count() > 1 {
            for (head, epoch) in &epochs {
                ev[format!("epoch_{}", head.name())] = json!(epoch);
            }
        }
    }

    fn log_progress(&mut self, stats: &Settled, window: &Window) -> Result<()> {
        let world = self.comm.world();
        let secs = window.start.elapsed().as_secs_f64().max(1e-9);
        let effective_batch = self.pools.images_per_step(&self.heads) * self.cfg.optim.accum * world;
        let mut ev = json!({
            "step": self.state.step,
            "lr": self.lr_shown(),
            "images_per_s": window.images / secs,
            "data_wait_frac": window.wait / secs,
            "comm_wait_frac": window.comm_wait / secs,
            "overlapped_steps": stats.overlapped,
            "world_size": world,
            "effective_batch": effective_batch,
            "skipped_records": self.state.run.skipped_records,
            "allreduce_bytes": stats.comm_bytes.allreduce,
            "allgather_bytes": stats.comm_bytes.allgather,
            "head_bytes_per_rank": self.replica.head_bytes(),
            "host_syncs": host_sync::take(),
        });
        self.log_epochs(&mut ev);
        let last = stats.last();
        if let Some(total) = last.and_then(|s| s.total) {
            ev["loss"] = json!(total);
        }
        for &(head, loss) in last.iter().flat_map(|s| &s.losses) {
            ev[format!("loss_{}", head.name())] = json!(loss);
        }
        for (head, p) in &self.state.plateaus {
            ev[format!("steps_without_decrease_{}", head.name())] = json!(p.steps_without_progress());
            ev[format!("steps_without_decrease_robust_{}", head.name())] = json!(p.steps_without_progress_robust());
        }
        if let Some(p) = self.state.plateaus.get(&self.plateau_task()) {
            ev["steps_without_decrease"] = json!(p.steps_without_progress());
            ev["steps_without_decrease_robust"] = json!(p.steps_without_progress_robust());
        }
        for (group, lr) in self.replica.lrs() {
            ev[format!("lr_{group}")] = json!(lr);
        }
        if let Some(s) = &self.state.loss_scale {
            ev["loss_scale"] = json!(s.scale);
            ev["amp_skipped_steps"] = json!(s.skipped);
        }
        let shown = last.and_then(|s| s.total.or(s.losses.first().map(|(_, l)| *l))).unwrap_or(f64::NAN);
        tracing::info!(
            "step {} loss {shown:.4} lr {:.2e} {:.1} img/s data-wait {:.0}%",
            self.state.step,
            self.lr_shown(),
            ev["images_per_s"].as_f64().unwrap_or(0.0),
            100.0 * window.wait / secs
        );
        self.log.flush()?;
        self.log.event(ev)
    }

    /// Every rank checks its parameters against the others', then rank 0 writes; the
    /// checkpoint becomes the state a rollback returns to.
    fn checkpoint(&mut self, clock: Instant) -> Result<std::path::PathBuf> {
        self.check_param_hash()?;
        let dir = checkpoint::step_dir(&self.run_dir, self.state.step);
        self.state.run.positions = self.pools.positions();
        self.state.loss_counts = self.log.counts();
        let mut state = self.state.clone();
        state.elapsed_secs += clock.elapsed().as_secs_f64();
        let whole = self.replica.gather_head(&*self.comm)?;
        if self.comm.rank() == 0 {
            self.log.flush()?;
            checkpoint::save(&dir, &state, |tmp| self.replica.save(tmp, &whole))
                .with_context(|| format!("writing checkpoint {}", dir.display()))?;
            checkpoint::prune(&self.run_dir, self.cfg.checkpoint.keep_checkpoints)?;
            self.log.event(json!({"event": "checkpoint", "step": self.state.step, "path": dir}))?;
            self.replaced.checkpointed()?;
        }
        self.log.flush()?;
        self.comm.barrier_within(self.checkpoint_timeout())?;
        self.good = Good { replica: self.replica.snapshot(), state: self.state.clone(), checkpoint: Some(dir.clone()) };
        if !self.state.step.is_multiple_of(self.cfg.checkpoint.save_every) {
            // Off the save rhythm (a better validation): the guards count from here too.
            self.judge.saved();
        }
        Ok(dir)
    }

    fn checkpoint_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.cfg.checkpoint.checkpoint_timeout)
    }

    fn check_param_hash(&mut self) -> Result<()> {
        let hash = self.replica.param_hash();
        self.log.rank_note(&format!("step {} param_hash {hash:016x}", self.state.step))?;
        if let Some(own) = self.replica.slice_hash() {
            self.log.rank_note(&format!(
                "step {} slice_hash {own:016x} (this rank's Partial FC centres)",
                self.state.step
            ))?;
        }
        let halves = [(hash >> 32) as f64, (hash & 0xffff_ffff) as f64];
        let (mut lo, mut hi) = (halves, halves);
        self.comm.all_reduce_f64(&mut lo, ReduceOp::Min)?;
        self.comm.all_reduce_f64(&mut hi, ReduceOp::Max)?;
        if lo != hi {
            let msg = format!(
                "param_hash differs between ranks at step {} (this rank {hash:016x}); replicas diverged",
                self.state.step
            );
            self.log.rank_note(&msg)?;
            self.comm.abort(&msg);
        }
        Ok(())
    }

    /// Validates; a metric strictly better than the best recorded in the run writes a
    /// checkpoint and copies it to `best/`.
    fn validate_and_keep_best(&mut self, clock: Instant) -> Result<()> {
        let Some(validator) = &self.validator else { return Ok(()) };
        let metrics = validator.run(self.replica.net(), &self.cfg, self.replica.device())?;
        let mut ev = json!({"event": "valid", "step": self.state.step});
        for (k, v) in &metrics.values {
            ev[k] = json!(v);
        }
        self.log.event(ev)?;
        if self.comm.rank() == 0 {
            for text in &metrics.reports {
                tracing::info!("validation at step {}:\n{text}", self.state.step);
            }
        }
        // BatchNorm statistics differ per rank, so rank 0's verdict is the one all follow.
        let better = metrics.primary.filter(|&m| validator.better(m, self.state.run.best_metric));
        let mut verdict = vec![u8::from(better.is_some())];
        self.comm.broadcast_bytes(&mut verdict, 0)?;
        let best_key = validator.best_key().to_string();
        if verdict[0] == 1 {
            self.state.run.best_metric = better;
            let dir = self.checkpoint(clock)?;
            if self.comm.rank() == 0 {
                checkpoint::copy_to(&dir, &self.run_dir.join("best"))?;
                self.log.event(
                    json!({"event": "best", "step": self.state.step, "metric": better, "metric_name": best_key}),
                )?;
            }
            self.comm.barrier_within(self.checkpoint_timeout())?;
        }
        Ok(())
    }

    fn finish(&mut self, reason: StopReason, clock: Instant) -> Result<()> {
        self.log.rank_note(&format!("stopping at step {}: {reason:?}", self.state.step))?;
        self.validate_and_keep_best(clock)?;
        if self.good.state.step != self.state.step || self.good.checkpoint.is_none() {
            self.checkpoint(clock)?;
        }
        let decays: Vec<u64> =
            self.state.lr_changes.iter().filter(|c| c.cause == LrCause::Plateau).map(|c| c.step).collect();
        self.log.event(json!({
            "event": "end", "step": self.state.step, "reason": format!("{reason:?}"), "decays": decays,
            "lr_changes": self.state.lr_changes, "rollbacks": self.state.run.rollbacks, "lr": self.lr_shown(),
        }))?;
        self.log.flush()
    }
}
