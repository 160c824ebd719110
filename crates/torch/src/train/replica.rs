//! This rank's copy of the model and its optimiser: what a step updates, a checkpoint
//! saves, a rollback restores and the ranks must agree on.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::checkpoint;
use super::config::TrainConfig;
use crate::dist::Comm;
use crate::model::{Head, Net, Tasks};
use crate::optim::{groups_by_prefix, Sgd};

/// The optimiser group of the shared backbone.
pub const BACKBONE: &str = "backbone";

/// The optimiser groups of a head (FR's includes its ArcFace centres).
pub fn head_groups(head: Head) -> &'static [&'static str] {
    match head {
        Head::Fr => &["fr", "arcface"],
        Head::Gender => &["gender"],
        Head::Age => &["age"],
    }
}

/// The optimiser groups a step over `heads` updates: the backbone and those heads'. With
/// `--alternate` the other heads keep their weights and momentum, as PyTorch leaves
/// parameters whose gradient is None.
pub fn groups_for(heads: &[Head]) -> Vec<&'static str> {
    let mut groups = vec![BACKBONE];
    groups.extend(heads.iter().flat_map(|&h| head_groups(h)));
    groups
}

pub struct Replica {
    vs: VarStore,
    net: Net,
    opt: Sgd,
    device: Device,
}

/// Parameters and optimiser state copied to host memory: the state a rollback returns to.
pub struct Snapshot {
    params: Vec<(String, Tensor)>,
    optim: Vec<(String, Tensor)>,
}

impl Replica {
    /// A fresh model (seeded), its optimiser groups, and `--init` weights if given.
    pub fn build(cfg: &TrainConfig, num_classes: usize, device: Device) -> Result<Replica> {
        tch::manual_seed(cfg.seed as i64);
        let mut vs = VarStore::new(device);
        let net = Net::new(&vs.root(), cfg.arch, &cfg.heads, num_classes, Tasks::from(cfg.task));
        let [lr_fr, lr_gender, lr_age] = cfg.head_lrs();
        let mut spec = vec![];
        if !cfg.freeze_backbone {
            spec.push(("backbone.", cfg.lr, cfg.wd_backbone));
        }
        spec.extend([("fr.", lr_fr, cfg.wd_fr), ("arcface.", lr_fr, cfg.wd_fr), ("gender.", lr_gender, cfg.wd_gender), ("age.", lr_age, cfg.wd_age)]);
        let opt = Sgd::new(groups_by_prefix(&vs, &spec), cfg.momentum);
        if let Some(init) = &cfg.init {
            load_init(&mut vs, init)?;
        }
        Ok(Replica { vs, net, opt, device })
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn zero_grad(&mut self) {
        self.opt.zero_grad();
    }

    /// The gradients to all-reduce.
    pub fn grads(&self) -> Vec<Tensor> {
        self.opt.grads()
    }

    /// One SGD update of the backbone and `heads`' groups; the other heads stay untouched.
    pub fn step(&mut self, heads: &[Head]) {
        self.opt.step_groups(&groups_for(heads));
    }

    pub fn scale_lr(&mut self, groups: &[&str], factor: f64) {
        self.opt.scale_lr(groups, factor);
    }

    /// The learning rate in effect for a group, if trained.
    pub fn lr(&self, group: &str) -> Option<f64> {
        self.opt.lr(group)
    }

    /// Training stops once every trained group's learning rate is below `--min-lr`.
    pub fn max_lr(&self) -> f64 {
        self.opt.max_lr()
    }

    pub fn lrs(&self) -> Vec<(&str, f64)> {
        self.opt.lrs()
    }

    pub fn snapshot(&self) -> Snapshot {
        let copy = |t: &Tensor| t.detach().to_device(Device::Cpu).copy();
        let params = self.vs.variables().iter().map(|(n, t)| (n.clone(), copy(t))).collect();
        let optim = self.opt.state().iter().map(|(n, t)| (n.clone(), copy(t))).collect();
        Snapshot { params, optim }
    }

    pub fn restore(&mut self, snap: &Snapshot) -> Result<()> {
        tch::no_grad(|| {
            let vars = self.vs.variables();
            for (name, saved) in &snap.params {
                if let Some(t) = vars.get(name) {
                    t.shallow_clone().copy_(saved);
                }
            }
        });
        self.opt.load_state(&snap.optim)
    }

    /// Writes the model and optimiser files of a checkpoint into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.vs.save(dir.join(checkpoint::MODEL_FILE))?;
        Tensor::write_safetensors(&self.opt.state(), dir.join(checkpoint::OPTIM_FILE))?;
        Ok(())
    }

    /// Loads a checkpoint's model and optimiser files (already checked against their CRCs).
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let model = dir.join(checkpoint::MODEL_FILE);
        self.vs.load(&model).with_context(|| format!("loading {}", model.display()))?;
        let optim = dir.join(checkpoint::OPTIM_FILE);
        let named = Tensor::read_safetensors(&optim).with_context(|| format!("loading {}", optim.display()))?;
        self.opt.load_state(&named)
    }

    /// Rank 0's parameters, buffers and optimiser state to every rank, so the replicas are
    /// identical (as DDP starts them), also after a resume that each rank read itself.
    pub fn broadcast_from_rank0(&mut self, comm: &dyn Comm) -> Result<()> {
        if comm.world() == 1 {
            return Ok(());
        }
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
        tch::no_grad(|| comm.broadcast(&tensors, 0))?;
        let state = self.opt.state();
        let mut bytes = names_and_shapes(&state);
        comm.broadcast_bytes(&mut bytes, 0)?;
        anyhow::ensure!(bytes == names_and_shapes(&state), "rank {}: optimiser state differs in layout from rank 0's", comm.rank());
        let tensors: Vec<Tensor> = state.iter().map(|(_, t)| t.shallow_clone()).collect();
        tch::no_grad(|| comm.broadcast(&tensors, 0))?;
        self.opt.load_state(&state)
    }

    /// A hash of the parameters every rank must agree on bit for bit. BatchNorm running
    /// statistics are per rank by design (as in insightface), so they are left out.
    pub fn param_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut named: Vec<_> = self.vs.variables().into_iter().filter(|(n, _)| !is_bn_statistic(n)).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = std::hash::DefaultHasher::new();
        for (name, t) in named {
            name.hash(&mut h);
            let t = t.detach().to_device(Device::Cpu).to_kind(tch::Kind::Float).contiguous();
            let mut bytes = vec![0u8; t.numel() * 4];
            t.copy_data_u8(&mut bytes, t.numel());
            bytes.hash(&mut h);
        }
        h.finish()
    }
}

fn is_bn_statistic(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

fn names_and_shapes(state: &[(String, Tensor)]) -> Vec<u8> {
    state.iter().map(|(n, t)| format!("{n}:{:?};", t.size())).collect::<String>().into_bytes()
}

/// `--init`: a checkpoint dir or a .safetensors file. Tensors whose name and shape match
/// load; the others (another identity count's ArcFace centres, a head this model lacks)
/// are skipped and listed, so an FR backbone can start a Gender run.
fn load_init(vs: &mut VarStore, init: &Path) -> Result<()> {
    let file = if init.is_dir() { init.join(checkpoint::MODEL_FILE) } else { init.to_path_buf() };
    let saved = Tensor::read_safetensors(&file).with_context(|| format!("--init {}: cannot read weights", file.display()))?;
    let vars = vs.variables();
    let (mut loaded, mut skipped) = (0usize, Vec::new());
    tch::no_grad(|| {
        for (name, t) in &saved {
            match vars.get(name) {
                Some(v) if v.size() == t.size() => {
                    v.shallow_clone().copy_(t);
                    loaded += 1;
                }
                Some(v) => skipped.push(format!("{name} (shape {:?}, this model {:?})", t.size(), v.size())),
                None => skipped.push(format!("{name} (not in this model)")),
            }
        }
    });
    if loaded == 0 {
        bail!("--init {}: no tensor matches this model by name and shape", file.display());
    }
    let fresh = vars.len() - loaded;
    tracing::info!("--init {}: loaded {loaded} of {} tensors ({fresh} start fresh)", file.display(), vars.len());
    if !skipped.is_empty() {
        tracing::warn!("--init {}: skipped {} tensors: {}", file.display(), skipped.len(), skipped.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Task;
    use crate::train::step::heads_for_step;

    #[test]
    fn alternate_steps_update_only_the_backbone_and_that_steps_head() {
        let cfg = TrainConfig { task: Task::Multi, alternate: true, ..TrainConfig::default() };
        let per_step: Vec<Vec<&str>> = (0..3).map(|s| groups_for(&heads_for_step(&cfg, s))).collect();
        assert_eq!(per_step, vec![vec!["backbone", "fr", "arcface"], vec!["backbone", "gender"], vec!["backbone", "age"]]);
        let together = TrainConfig { alternate: false, ..cfg };
        assert_eq!(groups_for(&heads_for_step(&together, 0)), vec!["backbone", "fr", "arcface", "gender", "age"]);
    }
}
