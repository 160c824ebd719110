//! Loading named tensors (a checkpoint's `model.safetensors`) into a model's variables.

use anyhow::{bail, Result};
use tch::nn::VarStore;
use tch::Tensor;

/// Copies every variable from `named`, by name. Every tensor's dtype and shape are checked
/// against the model's, and the names must be the same set, before anything is copied: a
/// relabelled or reshaped tensor is an error naming it, never a cast or a panic in libtorch.
pub fn copy_into(vs: &VarStore, named: &[(String, Tensor)]) -> Result<()> {
    let saved: std::collections::HashMap<&str, &Tensor> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let vars = vs.variables();
    for (name, var) in &vars {
        let Some(t) = saved.get(name.as_str()) else { bail!("no tensor {name} in the checkpoint") };
        anyhow::ensure!(
            t.kind() == var.kind(),
            "{name}: dtype {:?} in the checkpoint, {:?} in this model",
            t.kind(),
            var.kind()
        );
        anyhow::ensure!(
            t.size() == var.size(),
            "{name}: shape {:?} in the checkpoint, {:?} in this model",
            t.size(),
            var.size()
        );
    }
    if let Some((extra, _)) = named.iter().find(|(n, _)| !vars.contains_key(n)) {
        bail!("{extra}: in the checkpoint but not in this model ({} tensors there, {} here)", named.len(), vars.len());
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            var.shallow_clone().copy_(saved[name.as_str()]);
        }
    });
    Ok(())
}
