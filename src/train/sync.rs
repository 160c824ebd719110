//! Replica consistency: a hash of the parameters that every rank must agree on.

use std::hash::{Hash, Hasher};
use tch::{nn::VarStore, Device, Kind};

/// BatchNorm running statistics are per rank by design (as in insightface), so they are
/// left out; everything else must be bit-identical across ranks.
pub fn param_hash(vs: &VarStore) -> u64 {
    let mut named: Vec<_> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| !(n.ends_with("running_mean") || n.ends_with("running_var") || n.ends_with("num_batches_tracked")))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = std::hash::DefaultHasher::new();
    for (name, t) in named {
        name.hash(&mut h);
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * 4];
        t.copy_data_u8(&mut bytes, numel);
        bytes.hash(&mut h);
    }
    h.finish()
}
