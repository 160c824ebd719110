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
    let mut reps = Vec::with_capacity(args.reps);
    for rep in 0..args.reps {
        let r = time_once(&view, &args, workers, args.seed + rep as u64)?;
        let skipped = if r.skipped > 0 { format!(" ({} corrupt skipped)", r.skipped) } else { String::new() };
        println!("  rep {}: {:8.1} img/s {:7.1} MB/s {:6.3} CPU ms/img{skipped}", rep + 1, r.img_s, r.mb_s, r.cpu_ms);
        reps.push(r);
    }
    let img_s = median(reps.iter().map(|r| r.img_s).collect());
    let mb_s = median(reps.iter().map(|r| r.mb_s).collect());
    let cpu_ms = median(reps.iter().map(|r| r.cpu_ms).collect());
    println!("median: {img_s:.1} img/s, {mb_s:.1} MB/s, {cpu_ms:.3} CPU ms/img ({workers} worker(s))");
    let anon_mb = reps.iter().map(|r| r.anon_mb).fold(f64::NAN, f64::max);
    let file_mb = reps.iter().map(|r| r.file_mb).fold(f64::NAN, f64::max);
    println!("memory with the loader running: {anon_mb:.1} MB anonymous, {file_mb:.1} MB file-backed (mapped shards: page cache the kernel can drop)");
    if args.json {
        let line = serde_json::json!({"bench": "data", "workers": workers, "size": args.size, "batch_size": args.batch_size,
            "images_per_s": img_s, "mb_per_s": mb_s, "cpu_ms_per_image": cpu_ms, "reps": args.reps,
            "rss_anon_mb": anon_mb, "rss_file_mb": file_mb});
        println!("{line}");
    }
    Ok(())
}

struct Rep {
    img_s: f64,
    mb_s: f64,
    /// Process CPU time per image: robust to other load on a shared machine.
    cpu_ms: f64,
    skipped: u64,
    /// Resident memory (MB) at the end of the repetition, with the loader and its queue live.
    anon_mb: f64,
    file_mb: f64,
}

/// One repetition: a fresh loader (so start-up and queue fill are paid) for `batches` batches.
fn time_once(view: &Arc<RankView>, args: &DataArgs, workers: usize, seed: u64) -> Result<Rep> {
    let cfg = LoaderConfig { size: args.size, batch_size: args.batch_size, workers, prefetch: 2 * workers, seed,
        sampler: SamplerKind::Uniform, augment: true, steps_per_epoch: None };
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    let mut loader = Loader::train(view.clone(), cfg, SamplerPosition::START)?;
    let (mut images, mut bytes) = (0usize, 0usize);
    for _ in 0..args.batches {
        let b = loader.next_batch()?.expect("a training loader never ends");
        images += b.n;
        bytes += b.bytes;
        loader.recycle(b.images);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let (anon_mb, file_mb) = (status_mb(&status, "RssAnon"), status_mb(&status, "RssFile"));
    Ok(Rep {
        img_s: images as f64 / secs,
        mb_s: bytes as f64 / secs / 1e6,
        cpu_ms: cpu * 1e3 / images as f64,
        skipped: loader.skipped_total(),
        anon_mb,
        file_mb,
    })
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`, USER_HZ = 100);
/// NaN elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    match (f.get(11).and_then(|v| v.parse::<f64>().ok()), f.get(12).and_then(|v| v.parse::<f64>().ok())) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

/// A size field of `/proc/self/status` text in MB (NaN where there is none).
fn status_mb(status: &str, field: &str) -> f64 {
    let kb = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<f64>().ok());
    kb.map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}
