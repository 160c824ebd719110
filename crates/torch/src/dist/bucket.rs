//! Gradient buckets: many small all-reduces cost a latency each, so gradients are packed
//! into flat buffers of about `bucket_bytes` (as DDP and Horovod's tensor fusion do).

use anyhow::{ensure, Result};
use std::cell::RefCell;
use std::ops::Range;
use tch::{Kind, Tensor};

/// Consecutive index ranges whose f32 sizes add up to at most `bucket_bytes`; a tensor
/// larger than a bucket gets a bucket of its own.
pub fn plan(numels: &[usize], bucket_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &n) in numels.iter().enumerate() {
        let b = n * 4;
        if i > start && bytes + b > bucket_bytes {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < numels.len() {
        out.push(start..numels.len());
    }
    out
}

/// The buckets to reduce: `plan` over the tensors, after each contiguous tensor larger than
/// a bucket (a flat gradient buffer) is cut into bucket-sized 1-D views of itself, so
/// such a buffer is reduced in place, piece by piece. A bucket size under one float means
/// one all-reduce per tensor, uncut.
pub fn buckets(tensors: &[Tensor], bucket_bytes: usize) -> Vec<Vec<Tensor>> {
    let per_bucket = match bucket_bytes / 4 {
        0 => i64::MAX,
        n => n as i64,
    };
    let pieces: Vec<Tensor> = tensors
        .iter()
        .flat_map(|t| {
            let n = t.numel() as i64;
            if n > per_bucket && t.is_contiguous() {
                let flat = t.view([-1]);
                (0..n).step_by(per_bucket as usize).map(|at| flat.narrow(0, at, per_bucket.min(n - at))).collect()
            } else {
                vec![t.shallow_clone()]
            }
        })
        .collect();
    plan(&numels(&pieces), bucket_bytes)
        .into_iter()
        .map(|range| pieces[range].iter().map(Tensor::shallow_clone).collect())
        .collect()
}

/// A bucket that is one contiguous f32 tensor can be reduced where it lies.
pub fn in_place(bucket: &[Tensor]) -> Option<&Tensor> {
    match bucket {
        [t] if t.is_contiguous() && t.kind() == Kind::Float => Some(t),
        _ => None,
    }
}

pub fn check_f32(tensors: &[Tensor]) -> Result<()> {
    for (i, t) in tensors.iter().enumerate() {
        ensure!(t.kind() == Kind::Float, "all-reduce takes f32 gradients; tensor {i} is {:?}", t.kind());
    }
    Ok(())
}

/// The f32 tensors of one bucket as one contiguous 1-D tensor on their device.
pub fn flatten(tensors: &[Tensor]) -> Result<Tensor> {
    check_f32(tensors)?;
    let views: Vec<Tensor> = tensors.iter().map(|t| t.reshape([-1])).collect();
    Ok(Tensor::cat(&views, 0))
}

/// Copies the tensors into consecutive slices of `flat` (converting dtype and device).
pub fn pack_into(flat: &Tensor, tensors: &[Tensor]) {
    let mut offset = 0;
    for t in tensors {
        let n = t.numel() as i64;
        flat.narrow(0, offset, n).copy_(&t.reshape([-1]));
        offset += n;
    }
}

/// `pack_into` of the tensors divided by `divisor` first, in their f32: an f16 sum of
/// means cannot overflow where the means fit, as a sum of loss-scaled gradients can.
pub fn pack_divided_into(flat: &Tensor, tensors: &[Tensor], divisor: f64) {
    let mut offset = 0;
    for t in tensors {
        let n = t.numel() as i64;
        flat.narrow(0, offset, n).copy_(&(t.reshape([-1]) / divisor));
        offset += n;
    }
}

/// Copies slices of `flat`, divided by `divisor`, straight back into the bucket's tensors
/// (any layout, any device; in their f32, also when `flat` holds f16).
pub fn unflatten_divided(flat: &Tensor, tensors: &[Tensor], divisor: f64) -> Result<()> {
    let mut offset = 0;
    for t in tensors {
        let n = t.numel() as i64;
        let src = flat.narrow(0, offset, n).view_as(t);
        // div_out wants matching dtypes, and tch panics (in Scalar's drop) when a scalar
        // op fails, so anything else takes the copy-then-divide path.
        if src.device() == t.device() && src.kind() == t.kind() {
            let _ = src.f_div_scalar_out(t, divisor)?;
        } else {
            let mut dst = t.shallow_clone();
            dst.copy_(&src.to_device(t.device()));
            let _ = dst.f_div_scalar_(divisor)?;
        }
        offset += n;
    }
    Ok(())
}

/// A hash of the tensors' count, shapes and element sizes: ranks compare it before a
/// broadcast, so mismatched lists fail on every rank instead of writing past a buffer.
pub fn layout_hash(tensors: &[Tensor]) -> u64 {
    use trainer_data::rng::mix;
    tensors.iter().fold(tensors.len() as u64, |h, t| {
        t.size().iter().fold(mix(h ^ t.kind().elt_size_in_bytes() as u64), |h, &d| mix(h ^ d as u64))
    })
}

/// The gradient layouts every rank has already agreed on. An all-reduce checks a layout
/// across ranks (one small host round trip) only the first time a rank meets it, so the
/// steady state pays nothing; a layout that changes on every rank at once (`--alternate`
/// cycling heads) is checked once per kind.
#[derive(Default)]
pub struct AgreedLayouts(RefCell<Vec<u64>>);

impl AgreedLayouts {
    /// Fails on every rank when the ranks' gradient lists differ. `max_reduce` takes the
    /// max of two f64 over ranks on a channel of its own: a rank that meets a new layout
    /// alone waits there for the collective time-out, instead of its check being matched
    /// with the others' gradient transfer.
    pub fn check(
        &self,
        tensors: &[Tensor],
        (rank, what): (usize, &str),
        max_reduce: impl FnOnce(&mut [f64]) -> Result<()>,
    ) -> Result<()> {
        let hash = layout_hash(tensors);
        if self.0.borrow().contains(&hash) {
            return Ok(());
        }
        let h = (hash >> 11) as f64;
        let mut range = [h, -h];
        max_reduce(&mut range)?;
        ensure!(
            range[0] == -range[1],
            "the ranks' {what} differ in count, shape or dtype ({} tensors on rank {rank}): \
             a model built differently on some rank, or a gradient that exists on some ranks only",
            tensors.len()
        );
        self.0.borrow_mut().push(hash);
        Ok(())
    }
}

pub fn numels(tensors: &[Tensor]) -> Vec<usize> {
    tensors.iter().map(|t| t.numel()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_respects_bucket_size_and_covers_all() {
        let numels = [3, 5, 2, 100, 1, 1, 7];
        let plan = plan(&numels, 8 * 4);
        assert_eq!(plan, vec![0..2, 2..3, 3..4, 4..6, 6..7]);
        assert_eq!(plan_total(&plan), numels.len());
        assert!(super::plan(&[], 32).is_empty());
        assert_eq!(super::plan(&numels, usize::MAX).len(), 1);
    }

    fn plan_total(p: &[Range<usize>]) -> usize {
        p.iter().map(|r| r.len()).sum()
    }

    #[test]
    fn flatten_unflatten_round_trip_with_odd_shapes() {
        let a = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3]);
        let b = Tensor::arange(5, (Kind::Float, tch::Device::Cpu)) + 10.0;
        let flat = flatten(&[a.shallow_clone(), b.shallow_clone()]).unwrap();
        assert_eq!(flat.size(), vec![11]);
        let twice = &flat * 2.0;
        unflatten_divided(&twice, &[a.shallow_clone(), b.shallow_clone()], 1.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(a.reshape([-1])).unwrap(), vec![0., 2., 4., 6., 8., 10.]);
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![20., 22., 24., 26., 28.]);
        let packed = Tensor::zeros([11], (Kind::Half, tch::Device::Cpu));
        pack_into(&packed, &[a.tr(), b.shallow_clone()]);
        let want = [0., 6., 2., 8., 4., 10., 20., 22., 24., 26., 28.];
        assert_eq!(Vec::<f32>::try_from(packed.to_kind(Kind::Float)).unwrap(), want);
        let view = a.tr(); // non-contiguous destination
        unflatten_divided(&packed, &[view, b.shallow_clone()], 2.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(a.reshape([-1])).unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![10., 11., 12., 13., 14.]);
    }

    #[test]
    fn a_large_contiguous_tensor_is_cut_into_views_of_itself() {
        let flat = Tensor::arange(10, (Kind::Float, tch::Device::Cpu));
        let small = Tensor::ones([2], (Kind::Float, tch::Device::Cpu));
        let b = buckets(&[flat.shallow_clone(), small.shallow_clone()], 4 * 4);
        let sizes: Vec<Vec<i64>> = b.iter().map(|g| g.iter().map(|t| t.numel() as i64).collect()).collect();
        assert_eq!(sizes, vec![vec![4], vec![4], vec![2, 2]]);
        assert!(in_place(&b[0]).is_some() && in_place(&b[2]).is_none());
        // Bucket size 0: one all-reduce per tensor, none cut.
        assert_eq!(buckets(&[flat.shallow_clone(), small.shallow_clone()], 0).len(), 2);
        assert_eq!(buckets(&[flat.shallow_clone()], 0)[0][0].numel(), 10);
        // Views, not copies: writing a piece writes the buffer.
        let _ = b[1][0].shallow_clone().fill_(-1.0);
        assert_eq!(Vec::<f32>::try_from(&flat).unwrap()[4..8], [-1.0; 4]);
    }

    #[test]
    fn flatten_rejects_non_f32() {
        let t = Tensor::zeros([2], (Kind::Int64, tch::Device::Cpu));
        assert!(flatten(&[t]).is_err());
    }
}
