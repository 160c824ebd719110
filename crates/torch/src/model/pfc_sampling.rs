//! Partial FC's class sampling (`--sample-rate r < 1`) on the device, as arcface_torch draws
//! it: every class gets a random score, the batch's positive classes a score above all,
//! the top scores are taken and sorted. Nothing is read to the host, so the number of rows
//! scored cannot depend on how many distinct positives the batch has: `k = max(⌈r·len⌉, M)`
//! rows are scored (M the gathered batch's rows, which bounds the positives; capped at the
//! slice), and only the first `max(⌈r·len⌉, positives)` by score are *active*: the softmax
//! sees those alone (`distributed_ce`'s mask), the others get exactly zero gradient. That is
//! the rule of ⌈r·len⌉ rows with every positive, or the positives alone when they are more.
//!
//! The scores are a keyed 32-bit hash of the class index (a bijection, so no ties), keyed
//! by (seed, step, rank): the same step draws the same classes on a resume, whatever ran
//! before it, on CPU and GPU alike.

use tch::{Device, Kind, Tensor};
use trainer_data::rng::Rng;

/// Above every hashed score (they are below 2³²).
const POSITIVE: i64 = 1 << 32;

/// The rows a step scores.
pub struct Sample {
    /// Rows of the slice, ascending, `[k]` i64.
    pub rows: Tensor,
    /// Each gathered label as a column of `rows`, or -1, `[M]` i64.
    pub columns: Tensor,
    /// Which of `rows` the softmax counts, `[k]` bool.
    pub active: Tensor,
}

/// The sample of a slice of `len` classes for labels `local` (columns of the slice, or -1);
/// None when every row is scored (`rate ≥ 1`, or ⌈r·len⌉ ≥ len).
pub fn sample(len: usize, local: &Tensor, rate: f64, key: (u64, u64, usize)) -> Option<Sample> {
    let want = ((rate * len as f64).ceil() as usize).min(len);
    if rate >= 1.0 || want >= len {
        return None;
    }
    let device = local.device();
    let k = want.max(local.size()[0] as usize).min(len) as i64;
    let at = local.where_self(&local.ge(0), &local.full_like(len as i64));
    let scores = Tensor::cat(&[scores(len, key, device), Tensor::zeros([1], (Kind::Int64, device))], 0);
    let scores = scores.scatter_value(0, &at, POSITIVE).narrow(0, 0, len as i64);
    let (top, order) = scores.topk(k, 0, true, true);
    let count = top.ge(POSITIVE).sum(Kind::Int64).clamp_min(want as i64);
    let by_score = Tensor::arange(k, (Kind::Int64, device)).lt_tensor(&count);
    let (rows, perm) = order.sort(0, false);
    let active = by_score.index_select(0, &perm);
    let column_of = Tensor::full([len as i64 + 1], -1, (Kind::Int64, device));
    let column_of = column_of.scatter(0, &rows, &Tensor::arange(k, (Kind::Int64, device)));
    Some(Sample { rows, columns: column_of.index_select(0, &at), active })
}

/// A keyed hash `[len]` of 0..len, each in [0, 2³²): two rounds of a 32-bit integer hash
/// (xor-shift, multiply by an odd constant), each a bijection, on i64 without overflow.
fn scores(len: usize, (seed, step, rank): (u64, u64, usize), device: Device) -> Tensor {
    let mut rng = Rng::derive(seed, step, rank as u64);
    let (k1, k2) = ((rng.next_u64() & 0xFFFF_FFFF) as i64, (rng.next_u64() & 0xFFFF_FFFF) as i64);
    let round = |x: Tensor| {
        let x =
            (x.bitwise_right_shift_tensor_scalar(16).bitwise_xor_tensor(&x) * 0x045d_9f3b).bitwise_and(0xFFFF_FFFFi64);
        let x =
            (x.bitwise_right_shift_tensor_scalar(16).bitwise_xor_tensor(&x) * 0x045d_9f3b).bitwise_and(0xFFFF_FFFFi64);
        x.bitwise_right_shift_tensor_scalar(16).bitwise_xor_tensor(&x)
    };
    let classes = Tensor::arange(len as i64, (Kind::Int64, device));
    round(round(classes.bitwise_xor(k1)).bitwise_xor(k2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t.to_kind(Kind::Int64)).unwrap()
    }

    fn draw(len: usize, labels: &[i64], rate: f64, key: (u64, u64, usize)) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        let s = sample(len, &Tensor::from_slice(labels), rate, key).unwrap();
        (ints(&s.rows), ints(&s.columns), ints(&s.active))
    }

    /// Every positive scored and active; ⌈r·len⌉ active rows, or the positives when more;
    /// each label's column points at its row; a new draw per step and rank, the same for
    /// the same (seed, step, rank).
    #[test]
    fn positives_kept_counts_and_columns() {
        let labels = [3i64, 17, 3, 90, -1];
        let (rows, columns, active) = draw(100, &labels, 0.1, (7, 5, 1));
        assert_eq!((rows.len(), active.iter().sum::<i64>()), (10, 10), "k = max(10, 5), all active");
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
        for (l, c) in labels.iter().zip(&columns) {
            match *l {
                -1 => assert_eq!(*c, -1),
                l => assert_eq!((rows[*c as usize], active[*c as usize]), (l, 1)),
            }
        }
        assert_eq!(draw(100, &labels, 0.1, (7, 5, 1)).0, rows);
        assert_ne!(draw(100, &labels, 0.1, (7, 6, 1)).0, rows);
        assert_ne!(draw(100, &labels, 0.1, (7, 5, 0)).0, rows);
        assert_eq!(draw(101, &[-1], 0.1, (0, 0, 0)).2.iter().sum::<i64>(), 11, "ceil(10.1)");
        // 30 rows, 20 distinct positives, ⌈0.1·100⌉ = 10: 30 scored, the 20 positives active.
        let many: Vec<i64> = (0..30).map(|i| (i % 20) * 5).collect();
        let (rows, _, active) = draw(100, &many, 0.1, (0, 0, 0));
        let on: Vec<i64> = rows.iter().zip(&active).filter(|(_, a)| **a == 1).map(|(r, _)| *r).collect();
        assert_eq!((rows.len(), on), (30, (0..20).map(|i| i * 5).collect::<Vec<_>>()));
        assert!(sample(5, &Tensor::from_slice(&[1i64]), 1.0, (0, 0, 0)).is_none());
    }

    /// The negatives are spread over the slice: over many steps each class of 50 is drawn
    /// about as often as the others (10 of 50 a step, 400 steps: 80 expected each).
    #[test]
    fn negatives_are_drawn_evenly() {
        let mut counts = [0i64; 50];
        for step in 0..400 {
            let (rows, _, _) = draw(50, &[-1], 0.2, (3, step, 0));
            rows.iter().for_each(|&r| counts[r as usize] += 1);
        }
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*lo >= 50 && *hi <= 115, "{counts:?}");
    }
}
