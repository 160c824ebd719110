//! Partial FC (An et al. 2022; insightface's arcface_torch): the ArcFace class centres are
//! split into contiguous slices, one per rank. Every rank scores all ranks' embeddings
//! against its own slice, and the softmax cross-entropy is assembled across ranks (the
//! row maxima, then the sums of exponentials), so its value and gradients are those of
//! the full softmax. With `--sample-rate r < 1` each rank scores only the positive classes
//! of the global batch plus uniformly drawn negatives, up to r × its slice.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use super::adaptive_margin::Spread;
use super::{pfc_sampling, ArcFace};
use crate::dist::{Comm, ReduceOp};
use crate::host_sync;

/// What a training step under Partial FC needs besides the net.
pub struct PfcStep<'a> {
    pub comm: &'a dyn Comm,
    pub slice: ClassSlice,
    pub sample_rate: f64,
    pub seed: u64,
    /// The step's 0-based index (with seed and rank, it fixes the negatives drawn).
    pub step: u64,
    /// What the step's backward multiplies the FR loss by (loss weight / accumulation,
    /// times `loss_scale`): the centres' gradients are computed here, so they get it here.
    pub grad_factor: f64,
    /// `--amp fp16`'s loss scale, on the device.
    pub loss_scale: Option<&'a Tensor>,
}

impl PfcStep<'_> {
    /// The FR loss of this rank's embeddings `emb [B, D]` with global labels `y [B]`.
    /// The centres' gradients are final when it returns. Also returns a term whose gradient
    /// with respect to `emb` is the loss's, summed over every rank's share (the all-gather's
    /// backward) and multiplied by the world size, since the backbone's gradients are then
    /// averaged over ranks.
    pub fn loss(&self, arc: &ArcFace, emb: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let comm = self.comm;
        // Always a gradient leaf, so every rank takes part in its all-reduce below.
        let gathered = comm.all_gather(&emb.detach().to_kind(Kind::Float))?.set_requires_grad(true);
        let y_all = comm.all_gather(y)?;
        let local = self.slice.local_labels(&y_all);
        let drawn = pfc_sampling::sample(self.slice.len, &local, self.sample_rate, (self.seed, self.step, comm.rank()));
        let (rows, local, active) = match drawn {
            Some(s) => (Some(s.rows), s.columns, Some(s.active)),
            None => (None, local, None),
        };
        let valid = y_all.ge(0);
        let logits = arc.train_logits(&gathered, &local, &valid, rows.as_ref(), Spread::Gathered(comm))?;
        let (loss, surrogate) = distributed_ce(comm, &logits, &local, &valid, active.as_ref())?;
        let (loss, own) = self.regulariser(arc, emb, y, &valid, loss)?;
        if !surrogate.requires_grad() {
            return Ok((loss, own.unwrap_or_else(|| emb.zeros_like().sum(Kind::Float))));
        }
        let scaled = self.loss_scale.map(|s| s * self.grad_factor);
        match &scaled {
            Some(factor) => (surrogate * factor).backward(),
            None => (surrogate * self.grad_factor).backward(),
        }
        let grad = gathered.grad();
        comm.all_reduce(&grad, ReduceOp::Sum)?;
        let b = emb.size()[0];
        let mine = grad.narrow(0, comm.rank() as i64 * b, b);
        let mine = match &scaled {
            Some(factor) => mine * (factor.reciprocal() * comm.world() as f64),
            None => mine * (comm.world() as f64 / self.grad_factor),
        };
        let term = (emb * mine.to_kind(emb.kind())).sum(Kind::Float);
        Ok((loss, own.map_or(term.shallow_clone(), |own| term + own)))
    }

    /// MagFace's regulariser under Partial FC: each rank's own rows, its mean over the global
    /// batch's labelled rows added to the loss, and a term with its gradient for this rank's
    /// embeddings (× world size, as the backbone's gradients are then averaged).
    fn regulariser(
        &self,
        arc: &ArcFace,
        emb: &Tensor,
        y: &Tensor,
        valid: &Tensor,
        loss: Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Some(sum) = arc.regulariser(emb, &y.ge(0)) else { return Ok((loss, None)) };
        let n = host_sync::f64_of(&valid.to_kind(Kind::Float).sum(Kind::Float)).max(1.0);
        let mut total = [host_sync::f64_of(&sum)];
        self.comm.all_reduce_f64(&mut total, ReduceOp::Sum)?;
        Ok((loss + total[0] / n, Some(sum * (self.comm.world() as f64 / n))))
    }
}

/// Bytes one rank puts into all-reduces and gets out of all-gathers in a step (f32 data,
/// i64 labels): the step log's `allreduce_bytes` and `allgather_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommBytes {
    pub allreduce: usize,
    pub allgather: usize,
}

impl CommBytes {
    /// One Partial FC forward and backward over `rows` embeddings per rank: the gathered
    /// embeddings and labels; their gradient and the three softmax terms per row reduced.
    pub fn add_partial_fc(&mut self, rows: usize, world: usize, emb_dim: usize) {
        let m = rows * world;
        self.allgather += m * (emb_dim * 4 + 8);
        self.allreduce += m * emb_dim * 4 + 3 * m * 4;
    }
}

/// Rank r's contiguous share of C classes: the first C mod N ranks hold one more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClassSlice {
    pub start: usize,
    pub len: usize,
}

impl ClassSlice {
    pub fn of(rank: usize, world: usize, classes: usize) -> ClassSlice {
        let (base, extra) = (classes / world, classes % world);
        ClassSlice { start: rank * base + rank.min(extra), len: base + usize::from(rank < extra) }
    }

    /// Every rank must hold at least one class (an empty slice has no softmax terms).
    pub fn check(world: usize, classes: usize) -> Result<()> {
        ensure!(
            classes >= world,
            "--partial-fc splits {classes} identities over {world} ranks: every rank needs at least one"
        );
        Ok(())
    }

    /// Each global label as a column of this slice, or -1 when it lies elsewhere (or is -1).
    pub fn local_labels(&self, labels: &Tensor) -> Tensor {
        let inside = labels.ge(self.start as i64).logical_and(&labels.lt((self.start + self.len) as i64));
        (labels - self.start as i64).where_self(&inside, &labels.full_like(-1))
    }
}

/// Mean softmax cross-entropy over the classes of every rank. `logits [M, c]` are this
/// rank's columns (margin applied) for all M gathered rows, `local_target [M]` the column
/// of each row's label in them or -1, `valid [M]` the rows that have a label. Returns the
/// loss (no graph) and a surrogate whose gradient with respect to `logits` is exactly the
/// loss's: `Σ (softmax − onehot) · logits / n`, with the softmax terms detached. With
/// `active [c]` (sampling), the other columns are left out of the softmax (zero gradient).
pub fn distributed_ce(
    comm: &dyn Comm,
    logits: &Tensor,
    local_target: &Tensor,
    valid: &Tensor,
    active: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let l = logits.to_kind(Kind::Float);
    let counted = match active {
        Some(a) => l.detach().masked_fill(&a.logical_not().unsqueeze(0), f64::NEG_INFINITY),
        None => l.detach(),
    };
    let has = local_target.ge(0);
    let index = local_target.clamp_min(0).unsqueeze(1);
    let (max, sum, target) = tch::no_grad(|| -> Result<_> {
        let max = counted.amax([1i64].as_slice(), false);
        comm.all_reduce(&max, ReduceOp::Max)?;
        let sum = (&counted - max.unsqueeze(1)).exp().sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        comm.all_reduce(&sum, ReduceOp::Sum)?;
        let target = l.gather(1, &index, false).squeeze_dim(1) * has.to_kind(Kind::Float);
        comm.all_reduce(&target, ReduceOp::Sum)?;
        Ok((max, sum, target))
    })?;
    let weight = valid.to_kind(Kind::Float);
    let n = weight.sum(Kind::Float).clamp_min(1.0);
    let per_row = sum.log() + &max - target;
    let loss = (per_row * &weight).sum(Kind::Float) / &n;
    let coef = tch::no_grad(|| {
        let p = (&counted - max.unsqueeze(1)).exp() / sum.unsqueeze(1);
        let onehot = p.zeros_like().scatter_value(1, &index, 1.0) * has.to_kind(Kind::Float).unsqueeze(1);
        (p - onehot) * (weight / &n).unsqueeze(1)
    });
    Ok((loss, (l * coef).sum(Kind::Float)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::single::Single;
    use crate::model::loss::cross_entropy;
    use tch::Device;

    #[test]
    fn slices_are_contiguous_and_differ_by_at_most_one() {
        let s: Vec<ClassSlice> = (0..3).map(|r| ClassSlice::of(r, 3, 61)).collect();
        assert_eq!(
            s,
            vec![
                ClassSlice { start: 0, len: 21 },
                ClassSlice { start: 21, len: 20 },
                ClassSlice { start: 41, len: 20 }
            ]
        );
        assert!(ClassSlice::check(4, 3).is_err());
        let local = s[1].local_labels(&Tensor::from_slice(&[0i64, 21, 40, 41, -1]));
        assert_eq!(Vec::<i64>::try_from(local).unwrap(), vec![-1, 0, 19, -1, -1]);
    }

    /// Centres not drawn, and drawn but inactive (more positives than r × len), get exactly
    /// zero gradient; the active ones (every positive among them) get one; the loss equals
    /// plain cross-entropy over the active centres.
    #[test]
    fn unsampled_centres_get_zero_gradient() {
        let labels = [1i64, 33, 1, 20, -1, 7];
        for (rate, active_rows) in [(0.25, 10), (0.05, 4)] {
            tch::manual_seed(5);
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let slice = ClassSlice { start: 0, len: 40 };
            let arc = ArcFace::new_slice(&vs.root(), 40, slice, 8, 16.0, crate::model::Margin::arcface(0.3));
            let emb = Tensor::randn([6, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let y = Tensor::from_slice(&labels);
            let step = PfcStep {
                comm: &Single,
                slice,
                sample_rate: rate,
                seed: 9,
                step: 3,
                grad_factor: 1.0,
                loss_scale: None,
            };
            let (loss, term) = step.loss(&arc, &emb, &y).unwrap();
            term.backward();
            let grad = vs.variables()["weight"].grad();
            let s = crate::model::pfc_sampling::sample(40, &y, rate, (9, 3, 0)).unwrap();
            let (rows, on) = (Vec::<i64>::try_from(&s.rows).unwrap(), Vec::<bool>::try_from(&s.active).unwrap());
            let drawn: Vec<i64> = rows.iter().zip(&on).filter(|(_, a)| **a).map(|(r, _)| *r).collect();
            assert_eq!(drawn.len(), active_rows, "rate {rate}: {rows:?} {on:?}");
            for c in 0..40i64 {
                let norm = grad.get(c).abs().sum(Kind::Float).double_value(&[]);
                assert_eq!(norm == 0.0, !drawn.contains(&c), "rate {rate}, centre {c}: gradient norm {norm}");
            }
            assert!(emb.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
            let column = |l: i64| drawn.iter().position(|&r| r == l).map_or(-1, |i| i as i64);
            let local = Tensor::from_slice(&labels.map(column));
            let want = cross_entropy(&arc.logits_on(&emb, &local, Some(&Tensor::from_slice(&drawn))).unwrap(), &local);
            assert!((loss.double_value(&[]) - want.double_value(&[])).abs() < 1e-5, "rate {rate}");
        }
    }

    /// Equal up to f32 rounding at the tensor's scale: the two heads sum in different orders.
    fn near(a: &Tensor, b: &Tensor) -> bool {
        let scale = b.abs().max().double_value(&[]).max(1e-3);
        (a - b).abs().max().double_value(&[]) <= 1e-4 * scale
    }

    /// For each adaptive margin, Partial FC's loss (one rank holding the whole matrix, its
    /// rows gathered) equals the replicated head's over three steps: loss, gradients of the
    /// embeddings and centres, and the running statistics; a row labelled -1 included.
    #[test]
    fn adaptive_margins_give_the_replicated_loss() {
        use crate::model::adaptive_margin::{AdaFace, CurricularFace, FrMargin, MagFace};
        let rules = [
            FrMargin::AdaFace(AdaFace::new(0.4, 0.333, 0.5).unwrap()),
            FrMargin::MagFace(MagFace::new([1.0, 4.0], [0.45, 0.8], 35.0).unwrap()),
            FrMargin::Curricular(CurricularFace::new(0.5).unwrap()),
        ];
        let y = Tensor::from_slice(&[1i64, 7, 1, -1, 4, 9]);
        for rule in rules {
            let make = || {
                let vs = tch::nn::VarStore::new(Device::Cpu);
                let slice = ClassSlice { start: 0, len: 10 };
                let arc = ArcFace::new_slice(&vs.root(), 10, slice, 8, 16.0, rule).with_state(&(vs.root() / "m"));
                (vs, arc)
            };
            // Fixed values, not seeded draws: other tests share libtorch's global generator.
            let wave = |n: i64, shift: f64| (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7 + shift).sin();
            let ((vs_a, rep), (vs_b, pfc)) = (make(), make());
            for vs in [&vs_a, &vs_b] {
                let mut w = vs.variables()["weight"].shallow_clone();
                tch::no_grad(|| w.copy_(&(wave(80, 0.0).view([10, 8]) * 0.01)));
            }
            for step in 0..3 {
                let e = wave(48, step as f64).view([6, 8]) * (1.0 + step as f64);
                let (ea, eb) = (e.copy().set_requires_grad(true), e.set_requires_grad(true));
                let want = rep.loss(&ea, &y, &Single).unwrap();
                want.backward();
                let slice = ClassSlice { start: 0, len: 10 };
                let run = PfcStep {
                    comm: &Single,
                    slice,
                    sample_rate: 1.0,
                    seed: 1,
                    step: step as u64,
                    grad_factor: 1.0,
                    loss_scale: None,
                };
                let (got, term) = run.loss(&pfc, &eb, &y).unwrap();
                term.backward();
                let what = format!("{rule:?}, step {step}");
                assert!((got.double_value(&[]) - want.double_value(&[])).abs() < 1e-5, "{what}: loss");
                assert!(near(&ea.grad(), &eb.grad()), "{what}: embedding gradients");
                let (mut ga, mut gb) = (vs_a.variables()["weight"].grad(), vs_b.variables()["weight"].grad());
                assert!(near(&ga, &gb), "{what}: centre gradients");
                assert_eq!(rep.margin_state(), pfc.margin_state(), "{what}: running statistics");
                let _ = (ga.zero_(), gb.zero_());
            }
            let fresh = make().1.margin_state();
            assert!(fresh.is_empty() || rep.margin_state() != fresh, "{rule:?}: the statistics never moved");
        }
    }

    /// In a world of one the distributed loss and its gradient are plain cross-entropy's
    /// (the 2- and 3-rank cases run in `trainer bench allreduce --check` under mpirun).
    #[test]
    fn single_rank_equals_cross_entropy() {
        tch::manual_seed(3);
        let logits = (Tensor::randn([6, 9], (Kind::Float, Device::Cpu)) * 5.0).set_requires_grad(true);
        let labels = Tensor::from_slice(&[0i64, 8, 3, -1, 3, 5]);
        let (loss, surrogate) = distributed_ce(&Single, &logits, &labels, &labels.ge(0), None).unwrap();
        surrogate.backward();
        let ours = logits.grad().copy();
        let _ = logits.grad().zero_();
        let want = cross_entropy(&logits, &labels);
        want.backward();
        assert!((loss.double_value(&[]) - want.double_value(&[])).abs() < 1e-5);
        assert!(ours.allclose(&logits.grad(), 1e-6, 1e-7, false), "{ours} vs {}", logits.grad());
    }
}
