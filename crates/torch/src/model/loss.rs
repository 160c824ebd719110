//! Losses with label masking: a label of `-1` (unknown gender/age, or a record of another
//! task in Multi) contributes nothing, and a batch with no valid row gives a loss of 0 that
//! still has a graph, so `backward()` works on it.

use tch::{Kind, Tensor};

/// Cross-entropy against the seed's soft one-hot targets: `on_value` on the true class,
/// `(1 − on_value)/(C − 1)` on every other class. Mean over rows whose label is not -1.
pub fn soft_cross_entropy(logits: &Tensor, labels: &Tensor, on_value: f64) -> Tensor {
    let classes = logits.size()[1];
    let off = (1.0 - on_value) / (classes - 1).max(1) as f64;
    let valid = labels.ge(0);
    let index = labels.clamp_min(0).unsqueeze(1);
    let log_p = logits.log_softmax(1, Kind::Float);
    let target = log_p.zeros_like().fill_(off).scatter_value(1, &index, on_value);
    let per_row = -(target * log_p).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    masked_mean(&per_row, &valid)
}

/// Plain cross-entropy (for ArcFace logits), mean over rows whose label is not -1.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    let valid = labels.ge(0);
    let log_p = logits.log_softmax(1, Kind::Float);
    let index = labels.clamp_min(0).unsqueeze(1);
    let per_row = -log_p.gather(1, &index, false).squeeze_dim(1);
    masked_mean(&per_row, &valid)
}

/// Mean of `values` over `valid` rows; 0 (with gradient 0) when none is valid.
fn masked_mean(values: &Tensor, valid: &Tensor) -> Tensor {
    let w = valid.to_kind(Kind::Float);
    let zeroed = values.where_self(valid, &values.zeros_like());
    zeroed.sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn soft_ce_matches_hand_computation() {
        // logits [0, ln 2, 0] → p = [1/4, 1/2, 1/4]; label 1, on 0.9, off 0.05 each.
        let logits = Tensor::from_slice(&[0.0f32, 2f32.ln(), 0.0]).view([1, 3]);
        let loss = soft_cross_entropy(&logits, &Tensor::from_slice(&[1i64]), 0.9);
        let want = -(0.9 * 0.5f64.ln() + 2.0 * 0.05 * 0.25f64.ln());
        assert!((value(&loss) - want).abs() < 1e-5, "{} vs {want}", value(&loss));
    }

    #[test]
    fn soft_ce_masks_unknown_labels() {
        let logits = Tensor::from_slice(&[0.0f32, 2f32.ln(), 0.0, 5.0, -3.0, 1.0]).view([2, 3]);
        let one = soft_cross_entropy(&logits.narrow(0, 0, 1), &Tensor::from_slice(&[1i64]), 0.9);
        let both = soft_cross_entropy(&logits, &Tensor::from_slice(&[1i64, -1]), 0.9);
        assert!((value(&one) - value(&both)).abs() < 1e-6);
    }

    #[test]
    fn all_masked_is_zero_and_differentiable() {
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]).set_requires_grad(true);
        let loss = soft_cross_entropy(&logits, &Tensor::from_slice(&[-1i64, -1]), 0.9);
        assert_eq!(value(&loss), 0.0);
        loss.backward();
        let g = Vec::<f32>::try_from(logits.grad().flatten(0, -1)).unwrap();
        assert_eq!(g, vec![0.0; 4]);
    }

    #[test]
    fn hard_ce_matches_hand_computation_and_masks() {
        let logits = Tensor::from_slice(&[0.0f32, 2f32.ln(), 0.0, 9.0, 9.0, 9.0]).view([2, 3]);
        let loss = cross_entropy(&logits, &Tensor::from_slice(&[0i64, -1]));
        assert!((value(&loss) - 4f64.ln()).abs() < 1e-5);
    }
}
