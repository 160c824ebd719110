//! `trainer bench allreduce --check`: every collective against values each rank can
//! predict (rank r contributes r + 1, so the mean is (N + 1) / 2), plus injected faults
//! (a rank that dies, a rank that hangs) for the failure tests.

use crate::dist::{Comm, CommOptions, ReduceOp};
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// This rank exits with status 3 after the first collective (a crashed process).
    pub die_rank: Option<usize>,
    /// This rank stops taking part (sleeps forever) after the first collective.
    pub hang_rank: Option<usize>,
}

/// Runs every check on communicators from `init`; returns the line to print.
pub fn run(
    device: Device,
    opts: &CommOptions,
    faults: Faults,
    init: impl Fn(CommOptions) -> Result<Box<dyn Comm>>,
) -> Result<String> {
    // 1001 floats per bucket: bucket boundaries fall inside odd-sized tensors.
    let small = CommOptions { bucket_bytes: 1001 * 4, ..opts.clone() };
    let comm = init(CommOptions { fp16: false, ..small.clone() })?;
    check_mean(&*comm, device)?;
    inject(&faults, comm.rank());
    for root in [0, comm.world() - 1] {
        check_broadcast(&*comm, device, root)?;
        check_bytes(&*comm, root)?;
    }
    check_f64(&*comm)?;
    check_gather_and_reduce(&*comm, device)?;
    check_partial_ce(&*comm, device)?;
    comm.barrier()?;
    let line = format!(
        "rank {}/{}: all collective checks passed (backend {}, local rank {})",
        comm.rank(),
        comm.world(),
        comm.backend(),
        comm.local_rank()
    );
    // One communicator at a time: each holds GPU buffers, and the first is done.
    drop(comm);
    let half = init(CommOptions { fp16: true, ..small })?;
    check_mean_fp16(&*half, device)?;
    check_fp16_mean_of_large_values(&*half, device)?;
    Ok(line)
}

fn inject(faults: &Faults, rank: usize) {
    if faults.die_rank == Some(rank) {
        eprintln!("rank {rank}: --die-rank: exiting with status 3 (simulated crash)");
        std::process::exit(3);
    }
    if faults.hang_rank == Some(rank) {
        eprintln!("rank {rank} (pid {}): --hang-rank: no longer taking part in collectives", std::process::id());
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Odd sizes, one larger than a bucket, and a non-contiguous (transposed) view.
fn gradients(device: Device, value: impl Fn(i64) -> f64) -> (Vec<Tensor>, Tensor) {
    let fill = |n: i64| Tensor::from_slice(&(0..n).map(|i| value(i) as f32).collect::<Vec<_>>()).to_device(device);
    let base = fill(15).view([3, 5]);
    let grads = vec![fill(1), fill(7), fill(1000), base.tr(), fill(123_457)];
    (grads, base)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).reshape([-1])).unwrap_or_default()
}

fn check_mean(comm: &dyn Comm, device: Device) -> Result<()> {
    let (r, n) = (comm.rank() as f64, comm.world() as f64);
    let (grads, base) = gradients(device, |i| (r + 1.0) * (i % 13) as f64);
    comm.all_reduce_mean(&grads)?;
    let (expected, _) = gradients(device, |i| (n + 1.0) / 2.0 * (i % 13) as f64);
    for (k, (got, want)) in grads.iter().zip(&expected).enumerate() {
        ensure!(values(got) == values(want), "rank {r}: all_reduce_mean tensor {k} differs from the exact mean");
    }
    ensure!(values(&base) == values(&expected[3].tr()), "rank {r}: the transposed view did not write through");
    Ok(())
}

fn check_mean_fp16(comm: &dyn Comm, device: Device) -> Result<()> {
    let (r, n) = (comm.rank() as f64, comm.world() as f64);
    let value = |i: i64| 1.0 + (i % 101) as f64 * 1.001e-3;
    let (grads, _) = gradients(device, |i| (r + 1.0) * value(i));
    comm.all_reduce_mean(&grads)?;
    let (expected, _) = gradients(device, |i| (n + 1.0) / 2.0 * value(i));
    let (mut worst, mut inexact) = (0f64, 0usize);
    for (g, e) in grads.iter().zip(&expected) {
        for (got, want) in values(g).into_iter().zip(values(e)) {
            let rel = ((got - want) / want).abs() as f64;
            worst = worst.max(rel);
            inexact += (rel > 1e-6) as usize;
        }
    }
    ensure!(worst < 2e-3, "rank {r}: fp16 all-reduce error {worst:.2e} exceeds 2e-3");
    // Values off the f16 grid must come back rounded, or the compression never ran.
    ensure!(
        comm.world() == 1 || inexact > 0,
        "rank {r}: fp16 all-reduce returned exact f32 results: compression was not applied"
    );
    Ok(())
}

/// Loss-scaled gradients are large: values whose sum over ranks passes f16's 65504 while
/// their mean does not must come back as the mean (each rank divides before it sums).
fn check_fp16_mean_of_large_values(comm: &dyn Comm, device: Device) -> Result<()> {
    let (r, n) = (comm.rank() as f64, comm.world() as f64);
    let big = 60000.0;
    let grads = [Tensor::full([7], big * (r + 1.0) / ((n + 1.0) / 2.0), (Kind::Float, device))];
    comm.all_reduce_mean(&grads)?;
    let got = values(&grads[0]);
    ensure!(
        got.iter().all(|&v| ((v as f64 - big) / big).abs() < 2e-3),
        "rank {r}: fp16 all-reduce of a mean of {big} gave {got:?} (summed before dividing?)"
    );
    Ok(())
}

fn check_broadcast(comm: &dyn Comm, device: Device, root: usize) -> Result<()> {
    let content = |rank: usize| {
        let f = Tensor::arange(6, (Kind::Float, device)).view([2, 3]) + 10.0 * rank as f64;
        let counter = Tensor::from_slice(&[100 + rank as i64]).to_device(device);
        let square = Tensor::arange(16, (Kind::Float, device)).view([4, 4]) * (rank + 1) as f64;
        (f, counter, square)
    };
    let (f, counter, square) = content(comm.rank());
    let view = square.tr(); // non-contiguous
    comm.broadcast(&[f.shallow_clone(), counter.shallow_clone(), view], root)?;
    let (wf, wc, ws) = content(root);
    let same = values(&f) == values(&wf)
        && Vec::<i64>::try_from(counter.to_device(Device::Cpu))? == Vec::<i64>::try_from(wc.to_device(Device::Cpu))?
        && values(&square) == values(&ws);
    ensure!(same, "rank {}: broadcast from root {root} left values that differ from the root's", comm.rank());
    Ok(())
}

fn check_bytes(comm: &dyn Comm, root: usize) -> Result<()> {
    let payload = |rank: usize| {
        let mut b = format!("payload of rank {rank}").into_bytes();
        b.extend((0..1000u32).map(|i| (i * 7 + rank as u32) as u8));
        b
    };
    let mut mine = if comm.rank() == root { payload(root) } else { vec![0xff; comm.rank() * 3] };
    comm.broadcast_bytes(&mut mine, root)?;
    ensure!(mine == payload(root), "rank {}: broadcast_bytes from root {root} delivered other bytes", comm.rank());
    Ok(())
}

fn check_f64(comm: &dyn Comm) -> Result<()> {
    let (r, n) = (comm.rank() as f64, comm.world() as f64);
    let mine = [r, -r, 0.5 * (r + 1.0)];
    let cases = [
        (ReduceOp::Sum, [n * (n - 1.0) / 2.0, -n * (n - 1.0) / 2.0, n * (n + 1.0) / 4.0]),
        (ReduceOp::Min, [0.0, -(n - 1.0), 0.5]),
        (ReduceOp::Max, [n - 1.0, 0.0, 0.5 * n]),
    ];
    for (op, want) in cases {
        let mut got = mine;
        comm.all_reduce_f64(&mut got, op)?;
        ensure!(got == want, "rank {r}: all_reduce_f64 {op:?} gave {got:?}, expected {want:?}");
    }
    Ok(())
}

fn check_gather_and_reduce(comm: &dyn Comm, device: Device) -> Result<()> {
    let (r, n) = (comm.rank() as i64, comm.world() as i64);
    let mine = (Tensor::arange(6, (Kind::Int64, device)) + 100 * r).view([2, 3]);
    let all = comm.all_gather(&mine)?;
    let want = (Tensor::arange(6 * n, (Kind::Int64, device)).view([n, 6])
        + Tensor::arange(n, (Kind::Int64, device)).view([n, 1]) * 94)
        .view([2 * n, 3]);
    ensure!(all.device() == device && all.equal(&want), "rank {r}: all_gather gave {all}, expected {want}");
    let t = Tensor::from_slice(&[r as f32 + 1.0, -(r as f32)]).to_device(device);
    comm.all_reduce(&t, ReduceOp::Max)?;
    ensure!(values(&t) == [n as f32, 0.0], "rank {r}: all_reduce Max gave {:?}", values(&t));
    comm.all_reduce(&t, ReduceOp::Sum)?;
    ensure!(values(&t) == [(n * n) as f32, 0.0], "rank {r}: all_reduce Sum gave {:?}", values(&t));
    // A transposed view: reduced through a contiguous copy, written back in place.
    let m = Tensor::from_slice(&[r as f32, 1.0, -(r as f32), 2.0]).to_device(device).view([2, 2]);
    let view = m.tr();
    comm.all_reduce(&view, ReduceOp::Min)?;
    ensure!(
        values(&m.view([-1])) == [0.0, 1.0, -(n as f32 - 1.0), 2.0],
        "rank {r}: all_reduce Min of a view gave {:?}",
        values(&m.view([-1]))
    );
    Ok(())
}

/// Partial FC's cross-entropy on the same random logits everywhere, each rank holding an
/// uneven slice of the 13 classes: its value and its gradient in this rank's columns equal
/// plain cross-entropy's on the whole matrix.
fn check_partial_ce(comm: &dyn Comm, device: Device) -> Result<()> {
    use crate::model::loss::cross_entropy;
    use crate::model::partial_fc::{distributed_ce, ClassSlice};
    let r = comm.rank();
    tch::manual_seed(42);
    let full = (Tensor::randn([8, 13], (Kind::Float, Device::Cpu)) * 4.0).to_device(device).set_requires_grad(true);
    let labels = Tensor::from_slice(&[0i64, 12, 5, -1, 7, 7, 3, 11]).to_device(device);
    let slice = ClassSlice::of(r, comm.world(), 13);
    let mine = full.detach().narrow(1, slice.start as i64, slice.len as i64).set_requires_grad(true);
    let (loss, surrogate) = distributed_ce(comm, &mine, &slice.local_labels(&labels), &labels.ge(0), None)?;
    surrogate.backward();
    let want = cross_entropy(&full, &labels);
    want.backward();
    let (got, expected) = (loss.double_value(&[]), want.double_value(&[]));
    ensure!((got - expected).abs() <= 1e-5 * expected.abs(), "rank {r}: distributed cross-entropy {got} vs {expected}");
    let want_grad = full.grad().narrow(1, slice.start as i64, slice.len as i64);
    let worst = (mine.grad() - &want_grad).abs().max().double_value(&[]);
    ensure!(worst <= 1e-6, "rank {r}: distributed cross-entropy gradient off by {worst:e}");
    Ok(())
}
