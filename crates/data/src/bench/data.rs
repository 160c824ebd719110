//! `trainer bench data`: the whole input pipeline's throughput (read, decode, resize, flip
//! flags, batch into u8), as images/s and encoded MB/s, median of several repetitions, and
//! the bytes of one batch as the loader hands it over.

use crate::pipeline::{Loader, LoaderConfig, RankView, SamplerKind, SamplerPosition};
use crate::stats::{cpu_seconds, median, memory, Memory};
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
    #[arg(long, value_parser = crate::bounds::count::<usize>(crate::bounds::MAX_THREADS))]
    pub workers: Option<usize>,
    /// Training image side.
    #[arg(long, default_value_t = 112, value_parser = crate::bounds::int::<usize>(16, crate::bounds::MAX_SIDE))]
    pub size: usize,
    #[arg(long, default_value_t = 50, value_parser = crate::bounds::count::<usize>(crate::bounds::MAX_BATCH))]
    pub batch_size: usize,
    /// Batches timed per repetition.
    #[arg(long, default_value_t = 40, value_parser = crate::bounds::count::<usize>(1 << 24))]
    pub batches: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = crate::bounds::count::<usize>(10_000))]
    pub reps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Time rank R's view of a WORLD-rank job (its shards, or its record stripe).
    #[arg(long, default_value_t = 0)]
    pub rank: usize,
    #[arg(long, default_value_t = 1, value_parser = crate::bounds::count::<usize>(1 << 20))]
    pub world: usize,
    /// Split records instead of shards across ranks (for fewer shards than ranks).
    #[arg(long)]
    pub stripe_records: bool,
    /// Also print the median as one JSON line (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// What `trainer bench data` found: the medians over repetitions, and the peak memory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataReport {
    pub workers: usize,
    pub size: usize,
    pub batch_size: usize,
    pub reps: usize,
    pub images_per_s: f64,
    pub mb_per_s: f64,
    pub cpu_ms_per_image: f64,
    pub rss_anon_mb: f64,
    pub rss_file_mb: f64,
    /// Image bytes of one full batch as handed to the consumer (N×3×S×S u8).
    pub batch_bytes: usize,
    /// Image buffers the loader allocated in the last repetition (batches are recycled).
    pub buffers_allocated: u64,
}

impl std::fmt::Display for DataReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "median: {:.1} img/s, {:.1} MB/s, {:.3} CPU ms/img ({} worker(s))",
            self.images_per_s, self.mb_per_s, self.cpu_ms_per_image, self.workers
        )?;
        writeln!(
            f,
            "{} bytes of images per batch; {} buffer(s) allocated per repetition",
            self.batch_bytes, self.buffers_allocated
        )?;
        writeln!(f, "memory with the loader running: {:.1} MB anonymous, {:.1} MB file-backed (mapped shards: page cache the kernel can drop)", self.rss_anon_mb, self.rss_file_mb)
    }
}

/// Opens the rank's view and describes the run about to be timed.
pub fn describe(args: &DataArgs) -> Result<(Arc<RankView>, String)> {
    anyhow::ensure!(
        args.batches > 0 && args.reps > 0 && args.batch_size > 0,
        "--batches, --reps and --batch-size must be > 0"
    );
    let view = Arc::new(RankView::open_paths(&args.train_sets, args.rank, args.world, args.stripe_records)?);
    let line = format!(
        "bench data: {} (rank {}/{}: {} records in {} shard file(s)), size {}, batch {}, {} worker(s), {} batches × {} reps",
        view.dataset.name, args.rank, args.world, view.len(), view.dataset.shards.len(), args.size, args.batch_size, workers(args), args.batches, args.reps
    );
    Ok((view, line))
}

/// Times `reps` repetitions, handing each to `on_rep` as it finishes.
pub fn run(view: &Arc<RankView>, args: &DataArgs, mut on_rep: impl FnMut(usize, &Rep)) -> Result<DataReport> {
    let mut reps = Vec::with_capacity(args.reps);
    for rep in 0..args.reps {
        let r = time_once(view, args, workers(args), args.seed + rep as u64)?;
        on_rep(rep, &r);
        reps.push(r);
    }
    let med = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    Ok(DataReport {
        workers: workers(args),
        size: args.size,
        batch_size: args.batch_size,
        reps: args.reps,
        images_per_s: med(|r| r.img_s),
        mb_per_s: med(|r| r.mb_s),
        cpu_ms_per_image: med(|r| r.cpu_ms),
        rss_anon_mb: reps.iter().map(|r| r.anon_mb).fold(f64::NAN, f64::max),
        rss_file_mb: reps.iter().map(|r| r.file_mb).fold(f64::NAN, f64::max),
        batch_bytes: reps.iter().map(|r| r.batch_bytes).max().unwrap_or(0),
        buffers_allocated: reps.last().map_or(0, |r| r.buffers_allocated),
    })
}

fn workers(args: &DataArgs) -> usize {
    args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

/// One repetition's figures.
pub struct Rep {
    pub img_s: f64,
    pub mb_s: f64,
    /// Process CPU time per image: robust to other load on a shared machine.
    pub cpu_ms: f64,
    pub skipped: u64,
    /// Resident memory (MB) at the end of the repetition, with the loader and its queue live.
    pub anon_mb: f64,
    pub file_mb: f64,
    pub batch_bytes: usize,
    pub buffers_allocated: u64,
}

/// One repetition: a fresh loader (so start-up and queue fill are paid) for `batches` batches.
fn time_once(view: &Arc<RankView>, args: &DataArgs, workers: usize, seed: u64) -> Result<Rep> {
    let cfg = LoaderConfig {
        size: args.size,
        batch_size: args.batch_size,
        workers,
        prefetch: 2 * workers,
        seed,
        sampler: SamplerKind::Uniform,
        augment: true,
        steps_per_epoch: None,
    };
    let (start, cpu_start) = (Instant::now(), cpu_seconds().unwrap_or(f64::NAN));
    let mut loader = Loader::train(view.clone(), cfg, SamplerPosition::START)?;
    let (mut images, mut bytes, mut batch_bytes) = (0usize, 0usize, 0usize);
    for _ in 0..args.batches {
        let Some(b) = loader.next_batch()? else { anyhow::bail!("the training loader ended early") };
        images += b.n;
        bytes += b.bytes;
        batch_bytes = batch_bytes.max(b.images.len());
        loader.recycle(b.images);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds().unwrap_or(f64::NAN) - cpu_start;
    let Memory { anon_mb, file_mb } = memory();
    Ok(Rep {
        img_s: images as f64 / secs,
        mb_s: bytes as f64 / secs / 1e6,
        cpu_ms: cpu * 1e3 / images as f64,
        skipped: loader.skipped_total(),
        anon_mb,
        file_mb,
        batch_bytes,
        buffers_allocated: loader.buffers_allocated(),
    })
}
