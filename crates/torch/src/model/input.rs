//! A loader batch as the network's input. Batches arrive as u8 (a quarter of the f32
//! bytes); they go to the device as they are (on CUDA from pinned memory with a
//! non-blocking copy) and are flipped and normalised there, by gathering from the host's
//! own table (`trainer_data::codec::normalise::LUT`): the same bits on every device, equal
//! to what the loader once computed on the host.

use anyhow::{ensure, Context, Result};
use std::cell::RefCell;
use std::collections::VecDeque;
use tch::{Device, Kind, Tensor};
use trainer_data::codec::normalise::LUT;
use trainer_data::pipeline::Batch;

/// Pinned host copies kept alive after their upload. libtorch's pinned allocator already
/// holds a block until the copy that reads it has finished; keeping the last few is a
/// second guard that costs a few batches of host memory.
const PINNED_KEPT: usize = 4;

thread_local! {
    static PINNED: RefCell<VecDeque<Tensor>> = const { RefCell::new(VecDeque::new()) };
    static TABLES: RefCell<Vec<(Device, Tensor)>> = const { RefCell::new(Vec::new()) };
}

/// `t` (NCHW) in channels-last memory order, same shape and values.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// A batch's images as normalised NCHW f32 on `device`, flagged images mirrored.
pub fn images(b: &Batch, device: Device) -> Result<Tensor> {
    pixels(&b.images, b.n, b.size, &b.flips, device)
}

/// `n` planar RGB u8 images of `size`² (`bytes`) as normalised NCHW f32 on `device`; image
/// `i` mirrored where `flips[i]` (missing flags: not mirrored).
pub fn pixels(bytes: &[u8], n: usize, size: usize, flips: &[bool], device: Device) -> Result<Tensor> {
    let shape = [n as i64, 3, size as i64, size as i64];
    ensure!(bytes.len() == n * 3 * size * size, "a batch of {n} images of {size}² holds {} bytes", bytes.len());
    if n == 0 {
        return Ok(Tensor::zeros(shape, (Kind::Float, device)));
    }
    // SAFETY: the tensor views `bytes`, which outlive it: it is dropped at the end of this
    // function, and everything returned is new memory (the upload copies on CUDA, the gather
    // below allocates elsewhere).
    let host = unsafe { Tensor::from_blob(bytes.as_ptr(), &shape, &[], Kind::Uint8, Device::Cpu) };
    let x = upload(&host, device)?;
    let x = match flips.iter().any(|&f| f) {
        true => {
            let mut mask: Vec<bool> = flips.to_vec();
            mask.resize(n, false);
            let mask = upload(&Tensor::from_slice(&mask), device)?.view([n as i64, 1, 1, 1]);
            x.flip([3]).where_self(&mask, &x)
        }
        false => x,
    };
    Ok(table(device).index_select(0, &x.to_kind(Kind::Int).view([-1])).view(shape))
}

/// A host tensor on `device`. On CUDA through a pinned copy and a non-blocking upload,
/// ordered on the current stream before whatever reads the result; elsewhere as it is.
pub fn upload(host: &Tensor, device: Device) -> Result<Tensor> {
    if !device.is_cuda() {
        return Ok(host.to_device(device));
    }
    let pinned = host.f_internal_pin_memory(device).context("pinning a batch in host memory")?;
    let on_device = pinned.f_to_device_(device, pinned.kind(), true, false).context("uploading a batch")?;
    PINNED.with_borrow_mut(|kept| {
        kept.push_back(pinned);
        if kept.len() > PINNED_KEPT {
            kept.pop_front();
        }
    });
    Ok(on_device)
}

/// The normalisation table on `device`, uploaded once per thread and device.
fn table(device: Device) -> Tensor {
    TABLES.with_borrow_mut(|tables| {
        if let Some((_, t)) = tables.iter().find(|(d, _)| *d == device) {
            return t.shallow_clone();
        }
        let t = Tensor::from_slice(&LUT).to_device(device);
        tables.push((device, t.shallow_clone()));
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader's former f32 batch, computed as it was: (v − 127.5) / 127.5 per pixel,
    /// columns mirrored for a flipped image.
    fn old_f32_path(bytes: &[u8], s: usize, flips: &[bool]) -> Vec<f32> {
        let mut out = vec![0f32; bytes.len()];
        for (i, &flip) in flips.iter().enumerate() {
            for row in 0..3 * s {
                for x in 0..s {
                    let at = (i * 3 * s + row) * s;
                    let from = if flip { s - 1 - x } else { x };
                    out[at + x] = (bytes[at + from] as f32 - 127.5) / 127.5;
                }
            }
        }
        out
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    #[test]
    fn device_normalised_batch_equals_the_old_f32_path_bit_for_bit() {
        let (n, s) = (4, 16);
        // Every byte value appears in each image, at a different place per image.
        let bytes: Vec<u8> = (0..n * 3 * s * s).map(|i| ((i * 7 + i / 768 * 13) % 256) as u8).collect();
        let flips = [true, false, false, true];
        let b = Batch { images: bytes.clone(), flips: flips.to_vec(), n, size: s, ..Batch::default() };
        let t = images(&b, Device::Cpu).unwrap();
        assert_eq!((t.size(), t.kind()), (vec![n as i64, 3, s as i64, s as i64], Kind::Float));
        let got = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        let want = old_f32_path(&bytes, s, &flips);
        assert_eq!(bits(&got), bits(&want));
        assert_eq!(bits(&b.images_f32()), bits(&want), "the host helper gives the same bits");
        let unflipped = old_f32_path(&bytes, s, &[false; 4]);
        assert_ne!(got[..768], unflipped[..768], "image 0 is mirrored");
        assert_eq!(got[768..1536], unflipped[768..1536], "image 1 is not");
    }

    #[test]
    fn sizes_that_disagree_are_an_error_and_an_empty_batch_is_empty() {
        assert!(pixels(&[0; 10], 1, 2, &[], Device::Cpu).is_err());
        assert_eq!(pixels(&[], 0, 4, &[], Device::Cpu).unwrap().size(), [0, 3, 4, 4]);
    }
}
