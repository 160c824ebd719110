//! The training loop: step, agree across ranks, apply rank 0's schedule decision, log,
//! validate, checkpoint; and always a final validation and checkpoint, whatever stopped it.

use anyhow::{Context, Result};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

use super::checkpoint;
use super::session::Session;
use super::state::TrainState;
use super::scaler::scaled_loss;
use super::step::{losses, tasks_for_step};
use crate::dist::ReduceOp;
use crate::plateau::SaveDecision;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxSteps,
    TimeLimit,
    MinLr,
    Signal,
}

/// SIGINT / SIGTERM set a flag; the loop notices it, agrees with the other ranks, and
/// stops after a checkpoint. A second signal kills the process at once.
pub fn install_signal_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// What rank 0 tells every rank after each step.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Decision {
    Continue,
    Decay,
    RollBack,
    /// Rollbacks keep coming: reload and shrink the learning rate too (dlib).
    RollBackAndShrink,
}

impl Decision {
    const ALL: [Decision; 4] = [Decision::Continue, Decision::Decay, Decision::RollBack, Decision::RollBackAndShrink];
}

/// The last good state, in host memory, for dlib-style rollback.
struct Snapshot {
    params: Vec<(String, Tensor)>,
    optim: Vec<(String, Tensor)>,
    state: TrainState,
}

/// One step's numbers, already averaged over ranks.
struct StepStats {
    loss: f64,
    parts: Vec<(&'static str, f64)>,
    signalled: bool,
    out_of_time: bool,
    data_wait: f64,
}

impl Session {
    pub fn fit(mut self, signal: &AtomicBool) -> Result<StopReason> {
        let clock = Instant::now();
        let mut snapshot = self.snapshot();
        let mut window = Instant::now();
        let (mut window_steps, mut window_wait) = (0u64, 0f64);
        let bar = self.progress_bar();
        let reason = loop {
            let stats = self.train_step(signal, clock)?;
            self.state.step += 1;
            for (task, loss) in &stats.parts {
                self.log.loss(task, *loss)?;
            }
            window_steps += 1;
            window_wait += stats.data_wait;
            bar.set_position(self.state.step);
            bar.set_message(format!("loss {:.4} lr {:.2e}", stats.loss, self.cfg.lr * self.state.lr_scale));
            match self.decide(stats.loss)? {
                d @ (Decision::RollBack | Decision::RollBackAndShrink) => {
                    self.roll_back(&snapshot, stats.loss, d == Decision::RollBackAndShrink)?;
                    continue;
                }
                Decision::Decay => self.apply_decay()?,
                Decision::Continue => {}
            }
            if self.state.step.is_multiple_of(self.cfg.log_every) {
                let secs = window.elapsed().as_secs_f64();
                self.log_progress(&stats, window_steps, secs, window_wait)?;
                (window, window_steps, window_wait) = (Instant::now(), 0, 0.0);
            }
            if let Some(stop) = self.stop_reason(&stats) {
                break stop;
            }
            if self.state.step.is_multiple_of(self.cfg.valid_every) {
                self.validate_and_keep_best(clock)?;
            }
            if self.state.step.is_multiple_of(self.cfg.save_every) && self.state.saved_step != Some(self.state.step) {
                self.checkpoint(clock)?;
                snapshot = self.snapshot();
            }
        };
        bar.finish_and_clear();
        self.finish(reason, clock)?;
        Ok(reason)
    }

    /// Rank 0's bar on a terminal (indicatif hides it elsewhere); the log says the rest.
    fn progress_bar(&self) -> indicatif::ProgressBar {
        if self.comm.rank() != 0 {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(self.cfg.max_steps.unwrap_or(0)).with_position(self.state.step);
        let template = if self.cfg.max_steps.is_some() {
            "{elapsed_precise} [{bar:30}] step {pos}/{len} ({per_sec}, eta {eta}) {msg}"
        } else {
            "{elapsed_precise} step {pos} ({per_sec}) {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    fn train_step(&mut self, signal: &AtomicBool, clock: Instant) -> Result<StepStats> {
        let step = self.state.step;
        tch::manual_seed(crate::rng::mix(self.cfg.seed ^ step.wrapping_mul(0x9E37)) as i64 ^ self.comm.rank() as i64);
        let tasks = tasks_for_step(&self.cfg, step);
        self.opt.zero_grad();
        let (mut wait, mut loss_sum, mut skipped) = (0.0, 0.0, 0.0);
        let mut parts = vec![0.0; tasks.len()];
        let names: Vec<&'static str> = tasks.iter().map(|t| super::step::task_name(*t)).collect();
        let inject = self.cfg.inject_nan_at == Some(step + 1) && !self.nan_injected;
        self.nan_injected |= inject;
        for _ in 0..self.cfg.accum {
            let t = Instant::now();
            let batch = self.loader.next_batch()?.context("training loader ended")?;
            wait += t.elapsed().as_secs_f64();
            skipped += batch.skipped as f64;
            let l = losses(&self.net, &self.cfg, &batch, &tasks, self.device)?;
            let total = if inject { l.total * f64::NAN } else { l.total };
            scaled_loss(&total, self.cfg.accum, self.state.loss_scale.as_ref()).backward();
            loss_sum += total.double_value(&[]) / self.cfg.accum as f64;
            for (acc, (_, p)) in parts.iter_mut().zip(&l.parts) {
                *acc += p.double_value(&[]) / self.cfg.accum as f64;
            }
        }
        let grads = self.opt.grads();
        tch::no_grad(|| self.comm.all_reduce_mean(&grads))?;
        if self.unscale(&grads) {
            self.opt.step_groups(&super::step::param_groups_for(&tasks));
        }

        let out_of_time = self.cfg.time_limit.is_some_and(|t| self.state.elapsed_secs + clock.elapsed().as_secs_f64() >= t);
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let mut v = vec![loss_sum, flag(signal.load(Ordering::Relaxed)), flag(out_of_time), skipped];
        v.extend(&parts);
        self.comm.all_reduce_f64(&mut v, ReduceOp::Sum)?;
        let world = self.comm.world() as f64;
        self.state.skipped_records += v[3] as u64;
        Ok(StepStats {
            loss: v[0] / world,
            signalled: v[1] > 0.0,
            out_of_time: v[2] > 0.0,
            data_wait: wait,
            parts: names.iter().zip(&v[4..]).map(|(t, p)| (*t, p / world)).collect(),
        })
    }

    /// With `--amp`: true (and the gradients unscaled) when they are finite; otherwise the
    /// step is skipped and the scale backs off. Without: always true.
    fn unscale(&mut self, grads: &[Tensor]) -> bool {
        let Some(scale) = self.state.loss_scale.as_mut() else { return true };
        let finite = scale.unscale(grads);
        scale.update(finite);
        if !finite {
            tracing::warn!("step {}: inf/NaN gradients under --amp; step skipped, loss scale now {:e}", self.state.step + 1, scale.scale);
        }
        finite
    }

    /// Rank 0 runs the plateau rule and dlib's rollback test on the mean loss; all obey.
    fn decide(&mut self, loss: f64) -> Result<Decision> {
        let mut code = vec![0u8];
        if self.comm.rank() == 0 {
            code[0] = self.rank0_decision(loss) as u8;
        }
        self.comm.broadcast_bytes(&mut code, 0)?;
        Ok(Decision::ALL.get(code[0] as usize).copied().unwrap_or(Decision::Continue))
    }

    fn rank0_decision(&mut self, loss: f64) -> Decision {
        if self.cfg.rollback && self.guard.record(loss) {
            return Decision::RollBack;
        }
        let decayed = loss.is_finite() && self.state.plateau.push(loss).is_some();
        if self.cfg.rollback && self.state.step.is_multiple_of(self.cfg.save_every) {
            match self.guard.at_save_point(true) {
                SaveDecision::Save => {}
                SaveDecision::Reload => return Decision::RollBack,
                SaveDecision::ReloadAndShrink => return Decision::RollBackAndShrink,
            }
        }
        if decayed {
            Decision::Decay
        } else {
            Decision::Continue
        }
    }

    fn apply_decay(&mut self) -> Result<()> {
        self.opt.scale_lr(self.cfg.shrink);
        self.state.lr_scale *= self.cfg.shrink;
        self.state.decays.push(self.state.step);
        let lr = self.cfg.lr * self.state.lr_scale;
        self.log.rank_note(&format!("lr decay at step {} to {lr:.3e}", self.state.step))?;
        self.log.event(json!({"event": "decay", "step": self.state.step, "lr": lr}))
    }

    fn roll_back(&mut self, snap: &Snapshot, loss: f64, shrink: bool) -> Result<()> {
        tch::no_grad(|| {
            let vars = self.vs.variables();
            for (name, saved) in &snap.params {
                if let Some(t) = vars.get(name) {
                    t.shallow_clone().copy_(saved);
                }
            }
        });
        self.opt.load_state(&snap.optim)?;
        let position = self.loader.position();
        let (rollbacks, skipped) = (self.state.rollbacks + 1, self.state.skipped_records);
        let from = self.state.step;
        self.state = snap.state.clone();
        (self.state.rollbacks, self.state.skipped_records) = (rollbacks, skipped);
        self.state.position = position;
        self.opt.set_lr_scale(self.state.lr_scale);
        if shrink {
            self.state.plateau.shrink_now();
            self.opt.scale_lr(self.cfg.shrink);
            self.state.lr_scale *= self.cfg.shrink;
        }
        let msg = format!("loss {loss} at step {from}: rolled back to step {} and shrank lr to {:.3e}", self.state.step, self.cfg.lr * self.state.lr_scale);
        tracing::warn!("{msg}");
        self.log.rank_note(&msg)?;
        self.log.event(json!({"event": "rollback", "step": from, "to_step": self.state.step, "loss": loss, "lr": self.cfg.lr * self.state.lr_scale}))
    }

    fn snapshot(&self) -> Snapshot {
        let copy = |t: &Tensor| t.detach().to_device(Device::Cpu).copy();
        let params = self.vs.variables().iter().map(|(n, t)| (n.clone(), copy(t))).collect();
        let optim = self.opt.state().iter().map(|(n, t)| (n.clone(), copy(t))).collect();
        let mut state = self.state.clone();
        state.position = self.loader.position();
        Snapshot { params, optim, state }
    }

    fn stop_reason(&self, stats: &StepStats) -> Option<StopReason> {
        if stats.signalled {
            return Some(StopReason::Signal);
        }
        if stats.out_of_time {
            return Some(StopReason::TimeLimit);
        }
        if self.cfg.max_steps.is_some_and(|m| self.state.step >= m) {
            return Some(StopReason::MaxSteps);
        }
        if self.opt.max_lr() < self.cfg.min_lr {
            return Some(StopReason::MinLr);
        }
        None
    }

    fn log_progress(&mut self, stats: &StepStats, steps: u64, secs: f64, wait: f64) -> Result<()> {
        let world = self.comm.world();
        let images = (self.cfg.rank_batch() * self.cfg.accum * world) as f64 * steps as f64;
        let mut ev = json!({
            "step": self.state.step,
            "epoch": self.loader.position().epoch,
            "loss": stats.loss,
            "lr": self.cfg.lr * self.state.lr_scale,
            "images_per_s": images / secs.max(1e-9),
            "data_wait_frac": wait / secs.max(1e-9),
            "world_size": world,
            "effective_batch": self.cfg.rank_batch() * self.cfg.accum * world,
            "steps_without_decrease": self.state.plateau.steps_without_progress(),
            "skipped_records": self.state.skipped_records,
        });
        if let Some(s) = &self.state.loss_scale {
            ev["loss_scale"] = json!(s.scale);
            ev["amp_skipped_steps"] = json!(s.skipped);
        }
        for (task, l) in &stats.parts {
            ev[format!("loss_{task}")] = json!(l);
        }
        tracing::info!(
            "step {} loss {:.4} lr {:.2e} {:.1} img/s data-wait {:.0}%",
            self.state.step, stats.loss, self.cfg.lr * self.state.lr_scale, ev["images_per_s"].as_f64().unwrap_or(0.0), 100.0 * wait / secs.max(1e-9)
        );
        self.log.flush()?;
        self.log.event(ev)
    }

    /// Every rank checks its parameters against the others', then rank 0 writes.
    fn checkpoint(&mut self, clock: Instant) -> Result<std::path::PathBuf> {
        self.check_param_hash()?;
        let dir = checkpoint::step_dir(&self.run_dir, self.state.step);
        self.state.saved_step = Some(self.state.step);
        let mut state = self.state.clone();
        state.position = self.loader.position();
        state.elapsed_secs += clock.elapsed().as_secs_f64();
        if self.comm.rank() == 0 {
            checkpoint::save(&dir, &state, |tmp| {
                self.vs.save(tmp.join(checkpoint::MODEL_FILE))?;
                let named = self.opt.state();
                Tensor::write_safetensors(&named, tmp.join(checkpoint::OPTIM_FILE))?;
                Ok(())
            })
            .with_context(|| format!("writing checkpoint {}", dir.display()))?;
            checkpoint::prune(&self.run_dir, self.cfg.keep_checkpoints)?;
            self.log.event(json!({"event": "checkpoint", "step": self.state.step, "path": dir}))?;
        }
        self.log.flush()?;
        self.comm.barrier()?;
        Ok(dir)
    }

    fn check_param_hash(&mut self) -> Result<()> {
        let hash = super::sync::param_hash(&self.vs);
        self.log.rank_note(&format!("step {} param_hash {hash:016x}", self.state.step))?;
        let halves = [(hash >> 32) as f64, (hash & 0xffff_ffff) as f64];
        let (mut lo, mut hi) = (halves, halves);
        self.comm.all_reduce_f64(&mut lo, ReduceOp::Min)?;
        self.comm.all_reduce_f64(&mut hi, ReduceOp::Max)?;
        if lo != hi {
            let msg = format!("param_hash differs between ranks at step {} (this rank {hash:016x}); replicas diverged", self.state.step);
            self.log.rank_note(&msg)?;
            self.comm.abort(&msg);
        }
        Ok(())
    }

    fn validate_and_keep_best(&mut self, clock: Instant) -> Result<()> {
        let Some(validator) = &self.validator else { return Ok(()) };
        let metrics = validator.run(&self.net, &self.cfg, self.device)?;
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
        let mut verdict = vec![u8::from(metrics.primary.is_some_and(|m| self.state.best_metric.is_none_or(|b| m > b)))];
        self.comm.broadcast_bytes(&mut verdict, 0)?;
        if verdict[0] == 1 {
            self.state.best_metric = metrics.primary;
            let dir = self.checkpoint(clock)?;
            if self.comm.rank() == 0 {
                checkpoint::copy_to(&dir, &self.run_dir.join("best"))?;
                self.log.event(json!({"event": "best", "step": self.state.step, "metric": metrics.primary}))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, reason: StopReason, clock: Instant) -> Result<()> {
        self.log.rank_note(&format!("stopping at step {}: {reason:?}", self.state.step))?;
        self.validate_and_keep_best(clock)?;
        if self.state.saved_step != Some(self.state.step) {
            self.checkpoint(clock)?;
        }
        self.log.event(json!({"event": "end", "step": self.state.step, "reason": format!("{reason:?}"), "decays": self.state.decays, "rollbacks": self.state.rollbacks}))?;
        self.log.flush()
    }
}
