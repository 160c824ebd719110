//! This rank's copy of the model and its optimiser: what a step updates, a checkpoint
//! saves, a rollback restores and the ranks must agree on.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::checkpoint;
use crate::config::TrainConfig;
use crate::dist::Comm;
use crate::model::{ClassSlice, Head, Net};
use crate::optim::flat::FlatGrads;
use crate::optim::{groups_by_prefix, Optimizer, Rule};

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
    opt: Optimizer,
    device: Device,
    /// Partial FC: this rank's share of the ArcFace centres (None: the whole matrix).
    slice: Option<ClassSlice>,
    /// The all-reduced gradients in one buffer, once they all exist.
    flat: Option<FlatGrads>,
}

/// The optimiser group, and variable prefix, of the ArcFace centres.
const ARCFACE: &str = "arcface";

/// `--channels-last`: every 4-D weight in NHWC memory order (same values), so the
/// convolutions run on NHWC inputs without converting.
fn to_channels_last(vs: &VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                let nhwc = crate::model::input::channels_last(&v);
                v.set_data(&nhwc);
            }
        }
    });
}

/// Parameters and optimiser state copied to host memory: the state a rollback returns to.
pub struct Snapshot {
    params: Vec<(String, Tensor)>,
    optim: Vec<(String, Tensor)>,
}

impl Replica {
    /// A fresh model (seeded), its optimiser groups, and `--init` weights if given.
    /// With `slice` (Partial FC), the ArcFace layer holds only those centres.
    pub fn build(cfg: &TrainConfig, num_classes: usize, device: Device, slice: Option<ClassSlice>) -> Result<Replica> {
        tch::manual_seed(cfg.run.seed as i64);
        let mut vs = VarStore::new(device);
        let mut net =
            Net::with_slice(&vs.root(), cfg.model.backbone(), &cfg.heads, num_classes, cfg.model.task, slice)?;
        net.set_cosine_kind(cfg.optim.amp.cosine_kind(device));
        let [lr_fr, lr_gender, lr_age] = cfg.head_lrs();
        let mut spec = vec![];
        if !cfg.model.freeze_backbone {
            spec.push(("backbone.", cfg.optim.lr, cfg.optim.wd_backbone));
        }
        spec.extend([
            ("fr.", lr_fr, cfg.optim.wd_fr),
            ("arcface.", lr_fr, cfg.optim.wd_fr),
            ("gender.", lr_gender, cfg.optim.wd_gender),
            ("age.", lr_age, cfg.optim.wd_age),
        ]);
        let o = &cfg.optim;
        let rule = Rule::new(o.optimizer, o.momentum, o.betas, o.eps);
        let opt = Optimizer::new(groups_by_prefix(&vs, &spec), rule);
        if let Some(init) = &cfg.model.init {
            load_init(&mut vs, init, slice.map(|s| (s, num_classes)))?;
        }
        if cfg.model.channels_last {
            to_channels_last(&vs);
        }
        Ok(Replica { vs, net, opt, device, slice, flat: None })
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// One call for the flat buffer (and the centres' own gradients under Partial FC);
    /// per parameter while there is no buffer.
    pub fn zero_grad(&mut self) {
        match &self.flat {
            Some(flat) if flat.holds(&self.reduced_params()) => {
                flat.zero();
                self.opt.zero_grad_groups(self.not_reduced());
            }
            _ => self.opt.zero_grad(),
        }
    }

    /// The groups whose gradients are not all-reduced: Partial FC's centres (their
    /// gradients are this rank's own).
    fn not_reduced(&self) -> &'static [&'static str] {
        if self.slice.is_some() {
            &[ARCFACE]
        } else {
            &[]
        }
    }

    fn reduced_params(&self) -> Vec<Tensor> {
        self.opt.params_with_grad_except(self.not_reduced())
    }

    /// The gradients to all-reduce (all, or all but the centres' under Partial FC), one
    /// group (maybe empty) per backbone stage whose backward computes them (the heads' with the last), so each
    /// group can be all-reduced as soon as its stage's backward is done. Once they all
    /// exist they live in one flat buffer (optim/flat.rs), a stage's group one slice of it;
    /// the buffer is rebuilt when the set changes (a head's first gradient under
    /// `--alternate`).
    pub fn grad_groups(&mut self) -> Vec<Vec<Tensor>> {
        let params = self.reduced_params();
        if !self.flat.as_ref().is_some_and(|f| f.holds(&params)) {
            // Gradients that cannot share an f32 buffer stay apart.
            self.flat = FlatGrads::adopt(&params, &self.stages_of(&params)).ok();
            let flat = &self.flat;
            self.opt.attach_flat(|group| flat.as_ref()?.span(group));
        }
        let count = self.net.stage_count();
        match &self.flat {
            Some(flat) => {
                (0..count).map(|i| Some(flat.stage(i)).filter(|t| t.numel() > 0).into_iter().collect()).collect()
            }
            None => {
                let stages = self.stages_of(&params);
                let of = |i| params.iter().zip(&stages).filter(|(_, &s)| s == i).map(|(p, _)| p.grad()).collect();
                (0..count).map(of).collect()
            }
        }
    }

    /// Elements all-reduced per step.
    pub fn reduced_numel(&self) -> usize {
        self.reduced_params().iter().map(Tensor::numel).sum()
    }

    /// Whether every gradient to all-reduce already has its place in the flat buffer: the
    /// step's groups are known before its backward.
    pub fn flat_ready(&self) -> bool {
        self.flat.as_ref().is_some_and(|f| f.holds(&self.reduced_params()))
    }

    /// The backbone stage of each parameter (found by its name).
    fn stages_of(&self, params: &[Tensor]) -> Vec<usize> {
        let by_ptr: std::collections::HashMap<usize, String> =
            self.vs.variables().into_iter().map(|(name, t)| (t.data_ptr() as usize, name)).collect();
        let last = self.net.stage_count() - 1;
        params.iter().map(|p| by_ptr.get(&(p.data_ptr() as usize)).map_or(last, |n| self.net.stage_of(n))).collect()
    }

    /// Every gradient (those of Partial FC's centres too): what loss scaling unscales, as
    /// few tensors as the flat buffer allows.
    pub fn all_grads(&self) -> Vec<Tensor> {
        match &self.flat {
            Some(flat) if flat.holds(&self.reduced_params()) => {
                let mut out = vec![flat.buffer().shallow_clone()];
                out.extend(self.opt.params_with_grad_in(self.not_reduced()).iter().map(Tensor::grad));
                out
            }
            _ => self.opt.grads(),
        }
    }

    pub fn slice(&self) -> Option<ClassSlice> {
        self.slice
    }

    /// Bytes of this rank's ArcFace centres, their gradient and their momentum.
    pub fn head_bytes(&self) -> usize {
        self.vs.variables().get("arcface.weight").map_or(0, |w| 3 * w.numel() * w.kind().elt_size_in_bytes())
    }

    /// One SGD update of the backbone and `heads`' groups; the other heads stay untouched.
    pub fn step(&mut self, heads: &[Head]) {
        self.opt.step_groups(&groups_for(heads));
    }

    /// See `Optimizer::skip_if`; false when the optimiser cannot skip on the device.
    pub fn skip_if(&mut self, flag: &Tensor) -> bool {
        self.opt.skip_if(Some(flag));
        self.opt.skips_on_device()
    }

    /// The schedule's factor (warm-up, poly) on every group's rate.
    pub fn set_lr_factor(&mut self, factor: f64) {
        self.opt.set_lr_factor(factor);
    }

    /// `--clip-grad-norm`: the backbone's gradients (all-reduced already) to a global norm.
    pub fn clip_backbone(&mut self, max_norm: f64) -> Option<tch::Tensor> {
        self.opt.clip_grad_norm(BACKBONE, max_norm)
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
        let copy = |t: &Tensor| crate::host_sync::to_host(&t.detach()).copy();
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

    /// Writes the model and optimiser files of a checkpoint into `dir`. Under Partial FC,
    /// `whole` holds the gathered centres and momentum (`gather_head`), so the files do not
    /// depend on the rank count.
    pub fn save(&self, dir: &Path, whole: &WholeHead) -> Result<()> {
        let mut model: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        let mut optim = self.opt.state();
        if let Some(full) = &whole.weight {
            model.retain(|(n, _)| n != HEAD_WEIGHT);
            model.push((HEAD_WEIGHT.to_string(), full.shallow_clone()));
        }
        for (name, full) in &whole.optim {
            optim.retain(|(n, _)| n != name);
            optim.push((name.clone(), full.shallow_clone()));
        }
        // Files hold the usual (contiguous NCHW) layout whatever the memory order here.
        let plain = |named: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> {
            named.into_iter().map(|(n, t)| (n, t.contiguous())).collect()
        };
        Tensor::write_safetensors(&plain(model), dir.join(checkpoint::MODEL_FILE))?;
        Tensor::write_safetensors(&plain(optim), dir.join(checkpoint::OPTIM_FILE))?;
        Ok(())
    }

    /// Loads a checkpoint's model and optimiser files (already checked against their CRCs);
    /// under Partial FC, this rank's rows of the whole centres and momentum.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let model = dir.join(checkpoint::MODEL_FILE);
        let named = Tensor::read_safetensors(&model).with_context(|| format!("loading {}", model.display()))?;
        let named = self.cut(named, &[HEAD_WEIGHT]);
        crate::model::weights::copy_into(&self.vs, &named).with_context(|| format!("loading {}", model.display()))?;
        let optim = dir.join(checkpoint::OPTIM_FILE);
        let named = Tensor::read_safetensors(&optim).with_context(|| format!("loading {}", optim.display()))?;
        let named = self.cut(named, &HEAD_OPTIM_ROWS);
        self.opt.load_state(&named)
    }

    /// This rank's rows of the whole-matrix tensors `names` (Partial FC); others unchanged.
    fn cut(&self, named: Vec<(String, Tensor)>, names: &[&str]) -> Vec<(String, Tensor)> {
        let Some(sl) = self.slice else { return named };
        let rows = |n: &String, t: Tensor| match names.contains(&n.as_str()) {
            true => t.narrow(0, sl.start as i64, sl.len as i64),
            false => t,
        };
        named.into_iter().map(|(n, t)| (n.clone(), rows(&n, t))).collect()
    }

    /// Partial FC: the whole centre matrix and its momentum on rank 0 (None elsewhere, and
    /// without Partial FC). Every rank must call it.
    pub fn gather_head(&self, comm: &dyn Comm) -> Result<WholeHead> {
        let (Some(_), Some(weight)) = (self.slice, self.vs.variables().get(HEAD_WEIGHT).map(|w| w.shallow_clone()))
        else {
            return Ok(WholeHead::default());
        };
        let total = self.net.classes(Head::Fr);
        let state: Vec<(String, Tensor)> =
            self.opt.state().into_iter().filter(|(n, _)| HEAD_OPTIM_ROWS.contains(&n.as_str())).collect();
        let mut have = [state.len() as f64];
        comm.all_reduce_f64(&mut have, crate::dist::ReduceOp::Min)?;
        let weight = Some(gather_rows(comm, &weight.detach(), total)?);
        let mut optim = Vec::new();
        if have[0] as usize == state.len() {
            for (name, t) in state {
                optim.push((name, gather_rows(comm, &t, total)?));
            }
        }
        Ok(if comm.rank() == 0 { WholeHead { weight, optim } } else { WholeHead::default() })
    }

    /// Rank 0's parameters, buffers and optimiser state to every rank, so the replicas are
    /// identical (as DDP starts them), also after a resume that each rank read itself.
    /// Partial FC's centres and their momentum stay each rank's own.
    pub fn broadcast_from_rank0(&mut self, comm: &dyn Comm) -> Result<()> {
        if comm.world() == 1 {
            return Ok(());
        }
        let mut named: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().filter(|(n, _)| self.replicated(n)).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
        tch::no_grad(|| comm.broadcast(&tensors, 0))?;
        let state = self.opt.state();
        let shared: Vec<(String, Tensor)> =
            state.iter().filter(|(n, _)| self.replicated(n)).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let mut bytes = names_and_shapes(&shared);
        comm.broadcast_bytes(&mut bytes, 0)?;
        anyhow::ensure!(
            bytes == names_and_shapes(&shared),
            "rank {}: optimiser state differs in layout from rank 0's",
            comm.rank()
        );
        let tensors: Vec<Tensor> = shared.iter().map(|(_, t)| t.shallow_clone()).collect();
        tch::no_grad(|| comm.broadcast(&tensors, 0))?;
        self.opt.load_state(&state)
    }

    /// A hash of the parameters every rank must agree on bit for bit. BatchNorm running
    /// statistics are per rank by design (as in insightface), so they are left out.
    /// Partial FC's centres are left out too (see `slice_hash`).
    pub fn param_hash(&self) -> u64 {
        self.hash_of(|n| !is_bn_statistic(n) && self.replicated(n))
    }

    /// Partial FC: a hash of this rank's own centres (for its log).
    pub fn slice_hash(&self) -> Option<u64> {
        self.slice.map(|_| self.hash_of(|n| !self.replicated(n)))
    }

    /// False for a tensor that is this rank's own: Partial FC's centres and momentum.
    fn replicated(&self, name: &str) -> bool {
        self.slice.is_none() || !name.starts_with("arcface.")
    }

    fn hash_of(&self, keep: impl Fn(&str) -> bool) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut named: Vec<_> = self.vs.variables().into_iter().filter(|(n, _)| keep(n)).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = std::hash::DefaultHasher::new();
        for (name, t) in named {
            name.hash(&mut h);
            let t = crate::host_sync::to_host(&t.detach()).to_kind(tch::Kind::Float).contiguous();
            let mut bytes = vec![0u8; t.numel() * 4];
            t.copy_data_u8(&mut bytes, t.numel());
            bytes.hash(&mut h);
        }
        h.finish()
    }
}

/// The tensor names of Partial FC's centres and of their optimiser state by rows: SGD's
/// momentum, AdamW's moments (its step count is a scalar, the same on every rank).
const HEAD_WEIGHT: &str = "arcface.weight";
const HEAD_OPTIM_ROWS: [&str; 3] = ["arcface.0", "arcface.0.exp_avg", "arcface.0.exp_avg_sq"];

/// Partial FC's whole centre matrix and optimiser state, gathered for a checkpoint (rank 0).
#[derive(Default)]
pub struct WholeHead {
    weight: Option<Tensor>,
    optim: Vec<(String, Tensor)>,
}

/// The ranks' contiguous row slices of a `total`-row matrix, in order: each is padded to
/// the largest slice for the all-gather, then the padding is cut away.
fn gather_rows(comm: &dyn Comm, mine: &Tensor, total: usize) -> Result<Tensor> {
    let world = comm.world();
    let widest = ClassSlice::of(0, world, total).len as i64;
    let pad = widest - mine.size()[0];
    let padded = if pad > 0 {
        Tensor::cat(
            &[mine.to_kind(tch::Kind::Float), mine.new_zeros([pad, mine.size()[1]], (tch::Kind::Float, mine.device()))],
            0,
        )
    } else {
        mine.to_kind(tch::Kind::Float)
    };
    let all = comm.all_gather(&crate::host_sync::to_host(&padded))?;
    let parts: Vec<Tensor> =
        (0..world).map(|r| all.narrow(0, r as i64 * widest, ClassSlice::of(r, world, total).len as i64)).collect();
    Ok(Tensor::cat(&parts, 0))
}

/// Refuses an `--init` file that is not safetensors, naming what it is and, for PyTorch's
/// formats, the way in: `trainer import arcface-torch`, then `--init` the run it makes.
fn check_init_file(file: &Path) -> Result<()> {
    use trainer_data::interop::model_files::ModelFile;
    if !file.is_file() {
        return Ok(()); // the reader's own "not found" names the path
    }
    let kind = ModelFile::detect(file)?;
    let what = format!("--init {}: this is {}, and --init reads safetensors", file.display(), kind.describe());
    match kind {
        ModelFile::Safetensors => Ok(()),
        ModelFile::TorchSave => bail!(
            "{what} (a run directory, a checkpoint or model.safetensors). For an arcface_torch backbone, import it \
             first: `trainer import arcface-torch {} --arch iresnet50 --out Model/imported` (the --arch it was \
             trained as), then `--init Model/imported` (docs/model-zoo.md#importing-a-published-or-trained-backbone)",
            file.display()
        ),
        ModelFile::Pickle => bail!(
            "{what}. Save it again with PyTorch 1.6 or later (`torch.save(torch.load(f), 'backbone.pth')`), then \
             `trainer import arcface-torch` it (docs/model-zoo.md#importing-a-published-or-trained-backbone)"
        ),
        ModelFile::TorchScript => bail!(
            "{what}; a TorchScript file holds a traced graph, not named weights: give the run directory it was \
             exported from, or the original state dict through `trainer import arcface-torch`"
        ),
        ModelFile::Other => bail!("{what} (a run directory, a checkpoint directory or a .safetensors file)"),
    }
}

fn is_bn_statistic(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

fn names_and_shapes(state: &[(String, Tensor)]) -> Vec<u8> {
    state.iter().map(|(n, t)| format!("{n}:{:?};", t.size())).collect::<String>().into_bytes()
}

/// `--init`: a run dir (its best, else latest checkpoint: an imported arcface_torch
/// backbone is one), a checkpoint dir or a .safetensors file. Tensors whose name and shape match
/// load; the others (another identity count's ArcFace centres, a head this model lacks)
/// are skipped and listed, so an FR backbone can start a Gender run. Under Partial FC
/// (`slice` of `total` classes) the whole saved centre matrix loads as this rank's rows.
fn load_init(vs: &mut VarStore, init: &Path, slice: Option<(ClassSlice, usize)>) -> Result<()> {
    let file = match init.is_dir() {
        true if init.join(checkpoint::MODEL_FILE).exists() => init.join(checkpoint::MODEL_FILE),
        true if init.join("best").join(checkpoint::MODEL_FILE).exists() => {
            init.join("best").join(checkpoint::MODEL_FILE)
        }
        true if init.join("checkpoints").is_dir() => checkpoint::latest(init)?.join(checkpoint::MODEL_FILE),
        true => init.join(checkpoint::MODEL_FILE),
        false => init.to_path_buf(),
    };
    check_init_file(&file)?;
    let saved =
        Tensor::read_safetensors(&file).with_context(|| format!("--init {}: cannot read weights", file.display()))?;
    let vars = vs.variables();
    let (mut loaded, mut skipped) = (0usize, Vec::new());
    tch::no_grad(|| {
        for (name, t) in &saved {
            let t = &match slice {
                Some((s, total)) if name == HEAD_WEIGHT && t.size().first() == Some(&(total as i64)) => {
                    t.narrow(0, s.start as i64, s.len as i64)
                }
                _ => t.shallow_clone(),
            };
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
        let mut cfg = TrainConfig::default();
        (cfg.model.task, cfg.optim.alternate) = (Task::Multi, true);
        let per_step: Vec<Vec<&str>> = (0..3).map(|s| groups_for(&heads_for_step(&cfg, s))).collect();
        assert_eq!(
            per_step,
            vec![vec!["backbone", "fr", "arcface"], vec!["backbone", "gender"], vec!["backbone", "age"]]
        );
        cfg.optim.alternate = false;
        let together = cfg;
        assert_eq!(groups_for(&heads_for_step(&together, 0)), vec!["backbone", "fr", "arcface", "gender", "age"]);
    }
}
