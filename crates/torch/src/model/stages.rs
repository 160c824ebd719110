//! Backbones as chains of stages, for the overlapped backward (see train/backward.rs).

use tch::Tensor;

/// What one stage hands the next: the activations, where the staged backward cuts, and
/// state that carries no gradient (a masked ViT's token order).
pub struct Carry {
    pub x: Tensor,
    pub aside: Option<Tensor>,
}

impl Carry {
    pub fn new(x: &Tensor) -> Carry {
        Carry { x: x.shallow_clone(), aside: None }
    }
}

/// A backbone as a chain of stages (about four, at its resolution changes), so the
/// training step can backpropagate one stage at a time and all-reduce each stage's
/// gradients while the next stage's backward runs. `forward_t` is the stages in order.
pub trait Staged {
    fn stage_count(&self) -> usize;
    fn stage_t(&self, i: usize, c: Carry, train: bool) -> Carry;
    /// The stage whose forward uses a variable (its name below the backbone's path).
    fn stage_of(&self, name: &str) -> usize;
}

pub fn forward_stages(m: &(impl Staged + ?Sized), xs: &Tensor, train: bool) -> Tensor {
    (0..m.stage_count()).fold(Carry::new(xs), |c, i| m.stage_t(i, c, train)).x
}

/// Stage K-1 for a variable under `layerK.` (ResNet and IResNet names).
pub fn layer_stage(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("layer")?;
    let k: usize = rest.split('.').next()?.parse().ok()?;
    k.checked_sub(1)
}
