//! `trainer bench data`: the whole input pipeline's throughput (read, decode, resize,
//! flip, normalise, batch), as images/s and encoded MB/s, median of several repetitions.

use crate::pipeline::{Loader, LoaderConfig, RankView, SamplerKind, SamplerPosition};
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Runs the training loader (uniform sampling, flips) on one rank's view and times it.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// Dataset(s) as `<dir>/<name>` (all shards) or a legacy `<name>.bin/.idx` pair.
    #[arg(long, num_args = 1.., required = true)]
    pub train_sets: Vec<PathBuf>,
    /// Decode worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Training image side.
    #[arg(long, default_value_t = 112)]
    pub size: usize,
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// Batches timed per repetition.
    #[arg(long, default_value_t = 40)]
    pub batches: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Time rank R's view of a WORLD-rank job (its shards, or its record stripe).
    #[arg(long, default_value_t = 0)]
    pub rank: usize,
    #[arg(long, default_value_t = 1)]
    pub world: usize,
    /// Split records instead of shards across ranks (for fewer shards than ranks).
    #[arg(long)]
    pub stripe_records: bool,
    /// Also print the median as one JSON line (for scripts).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DataArgs) -> Result<()> {
    anyhow::ensure!(args.batches > 0 && args.reps > 0 && args.batch_size > 0, "--batches, --reps and --batch-size must be > 0");
    let view = Arc::new(RankView::open(&args.train_sets, args.rank, args.world, args.stripe_records)?);
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    println!(
        "bench data: {} (rank {}/{}: {} records in {} shard file(s)), size {}, batch {}, {} worker(s), {} batches × {} reps",
        view.dataset.name, args.rank, args.world, view.len(), view.dataset.shards.len(), args.size, args.batch_size, workers, args.batches, args.reps
    );
    let mut rates = Vec::with_capacity(args.reps);
    for rep in 0..args.reps {
        let (img_s, mb_s, skipped) = time_once(&view, &args, workers, args.seed + rep as u64)?;
        println!("  rep {}: {img_s:8.1} img/s {mb_s:7.1} MB/s{}", rep + 1, if skipped > 0 { format!(" ({skipped} corrupt skipped)") } else { String::new() });
        rates.push((img_s, mb_s));
    }
    let img_s = median(rates.iter().map(|r| r.0).collect());
    let mb_s = median(rates.iter().map(|r| r.1).collect());
    println!("median: {img_s:.1} img/s, {mb_s:.1} MB/s ({workers} worker(s))");
    if args.json {
        let line = serde_json::json!({"bench": "data", "workers": workers, "size": args.size, "batch_size": args.batch_size,
            "images_per_s": img_s, "mb_per_s": mb_s, "reps": args.reps});
        println!("{line}");
    }
    Ok(())
}

/// One repetition: a fresh loader (so start-up and queue fill are paid) for `batches` batches.
fn time_once(view: &Arc<RankView>, args: &DataArgs, workers: usize, seed: u64) -> Result<(f64, f64, u64)> {
    let cfg = LoaderConfig { size: args.size, batch_size: args.batch_size, workers, prefetch: 2 * workers, seed,
        sampler: SamplerKind::Uniform, augment: true, steps_per_epoch: None };
    let start = Instant::now();
    let mut loader = Loader::train(view.clone(), cfg, SamplerPosition::START)?;
    let (mut images, mut bytes) = (0usize, 0usize);
    for _ in 0..args.batches {
        let b = loader.next_batch()?.expect("a training loader never ends");
        images += b.n;
        bytes += b.bytes;
        loader.recycle(b.images);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((images as f64 / secs, bytes as f64 / secs / 1e6, loader.skipped_total()))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}
