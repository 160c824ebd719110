//! A loader batch as the network's input.

use tch::{Device, Tensor};
use trainer_data::pipeline::Batch;

/// `t` (NCHW) in channels-last memory order, same shape and values.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// A batch's images as an NCHW tensor on `device`.
pub fn images(b: &Batch, device: Device) -> Tensor {
    let s = b.size as i64;
    Tensor::from_slice(&b.images).view([b.n as i64, 3, s, s]).to_device(device)
}
