//! One batch forward: the task losses of a batch, as the loop needs them.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::config::{Task, TrainConfig};
use crate::model::{Net, Tasks};
use crate::pipeline::Batch;

/// A batch's images as an NCHW tensor on `device`.
pub fn images(b: &Batch, device: Device) -> Tensor {
    let s = b.size as i64;
    Tensor::from_slice(&b.images).view([b.n as i64, 3, s, s]).to_device(device)
}

/// The weighted total to backpropagate and each task's own loss (for logs).
pub struct Losses {
    pub total: Tensor,
    pub parts: Vec<(&'static str, Tensor)>,
}

/// Every task the run trains, in FR, Gender, Age order.
pub fn run_tasks(cfg: &TrainConfig) -> Vec<Task> {
    let on = Tasks::from(cfg.task);
    [(on.fr, Task::Fr), (on.gender, Task::Gender), (on.age, Task::Age)]
        .into_iter()
        .filter_map(|(on, t)| on.then_some(t))
        .collect()
}

/// Which tasks this step trains: all of the run's, or one in turn with `alternate`.
pub fn tasks_for_step(cfg: &TrainConfig, step: u64) -> Vec<Task> {
    let all = run_tasks(cfg);
    if cfg.alternate && all.len() > 1 {
        vec![all[(step % all.len() as u64) as usize]]
    } else {
        all
    }
}

/// The optimiser groups a step over `tasks` updates: the backbone and those tasks' heads.
/// With `--alternate` the other heads keep their weights and momentum, as PyTorch leaves
/// parameters whose gradient is None.
pub fn param_groups_for(tasks: &[Task]) -> Vec<&'static str> {
    let mut groups = vec!["backbone"];
    for t in tasks {
        groups.extend_from_slice(match t {
            Task::Fr => &["fr", "arcface"][..],
            Task::Gender => &["gender"],
            Task::Age => &["age"],
            Task::Multi => &["fr", "arcface", "gender", "age"],
        });
    }
    groups
}

pub fn task_name(t: Task) -> &'static str {
    match t {
        Task::Fr => "FR",
        Task::Gender => "Gender",
        Task::Age => "Age",
        Task::Multi => "Multi",
    }
}

/// Forward pass and losses for `tasks`. Labels are range-checked first (an out-of-range
/// one would abort inside libtorch). A frozen backbone runs without autograd in eval mode;
/// with `--amp` on CUDA it runs under autocast, while heads and losses stay f32 as in
/// insightface, because s·cos θ with s = 64 overflows half precision.
pub fn losses(net: &Net, cfg: &TrainConfig, b: &Batch, tasks: &[Task], device: Device) -> Result<Losses> {
    let x = images(b, device);
    let mut targets = net.targets(&b.labels, &b.genders, &b.ages, device)?;
    for (task, slot) in [(Task::Fr, &mut targets.fr), (Task::Gender, &mut targets.gender), (Task::Age, &mut targets.age)] {
        if !tasks.contains(&task) {
            *slot = None;
        }
    }
    let amp = cfg.amp && device.is_cuda();
    // libtorch 2.11 warns on every autocast toggle, so toggle only when asked to.
    let backbone = |train| match amp {
        true => tch::autocast(true, || net.features(&x, train)).to_kind(Kind::Float),
        false => net.features(&x, train),
    };
    let feats = if cfg.freeze_backbone { tch::no_grad(|| backbone(false)) } else { backbone(true) };
    let l = net.heads(&feats, &targets, true).losses;
    let [w_fr, w_gender, w_age] = if tasks.len() > 1 { cfg.loss_weights } else { [1.0; 3] };
    let total = l.weighted_sum(w_fr, w_gender, w_age).unwrap_or_else(|| Tensor::zeros([], (Kind::Float, device)));
    let parts = [("FR", l.fr), ("Gender", l.gender), ("Age", l.age)]
        .into_iter()
        .filter_map(|(name, t)| t.map(|t| (name, t)))
        .collect();
    Ok(Losses { total, parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternate_steps_update_only_the_backbone_and_that_steps_head() {
        let cfg = TrainConfig { task: Task::Multi, alternate: true, ..TrainConfig::default() };
        let per_step: Vec<Vec<&str>> = (0..3).map(|s| param_groups_for(&tasks_for_step(&cfg, s))).collect();
        assert_eq!(per_step, vec![vec!["backbone", "fr", "arcface"], vec!["backbone", "gender"], vec!["backbone", "age"]]);
        let together = TrainConfig { alternate: false, ..cfg };
        assert_eq!(param_groups_for(&tasks_for_step(&together, 0)), vec!["backbone", "fr", "arcface", "gender", "age"]);
    }
}
