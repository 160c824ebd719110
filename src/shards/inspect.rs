//! `trainer inspect`: a dataset's shape at a glance, and how fast its index loads.

use super::{Dataset, Layout, Manifest, Version};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Instant;

/// Print a dataset's records, labels, per-shard counts and sizes, and format version.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// `<dir>/<name>` (all shards) or a legacy `<dir>/<name>` .bin/.idx pair.
    pub dataset: PathBuf,
    /// Also print the first N records (path, label, bytes, gender, age, crc32c).
    #[arg(long, default_value_t = 0)]
    pub head: usize,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let (started, cpu0) = (Instant::now(), process_cpu_seconds());
    let ds = Dataset::open(&args.dataset)?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let layout = Layout::resolve(&args.dataset)?;
    let version = ds.shards.first().map_or("(no shards)", |s| s.version().name());
    let bytes: u64 = ds.shards.iter().map(|s| s.bin_len()).sum();
    println!("dataset {} — {} shards, format {version}", args.dataset.display(), ds.total_shards);
    println!("records {}  classes {}  payload {:.1} MB", ds.len(), ds.num_classes, bytes as f64 / 1e6);
    let rate = |t: f64| ds.len() as f64 / t.max(1e-9) / 1e6;
    let cpu_note = cpu.map_or(String::new(), |c| format!(", {:.0} ms CPU = {:.2} M records per CPU-second", c * 1e3, rate(c)));
    println!("index load: {} records in {:.1} ms wall ({:.2} M records/s){cpu_note}", ds.len(), secs * 1e3, rate(secs));
    print_shards(&ds);
    print_classes(&ds);
    print_attributes(&ds);
    print_sidecars(&layout, &ds);
    print_head(&ds, args.head);
    Ok(())
}

/// User + system CPU time of this process (Linux `/proc`, 10 ms ticks), so the load rate can
/// be stated independently of how busy the machine is.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn print_shards(ds: &Dataset) {
    println!("{:>6} {:>10} {:>8} {:>14}  file", "shard", "records", "labels", "bytes");
    for s in &ds.shards {
        let mut labels = s.labels().to_vec();
        labels.sort_unstable();
        labels.dedup();
        let file = s.bin_path().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        println!("{:>6} {:>10} {:>8} {:>14}  {file}", s.k(), s.len(), labels.len(), s.bin_len());
    }
}

fn print_classes(ds: &Dataset) {
    let mut counts = vec![0usize; ds.num_classes.max(1)];
    for &l in ds.shards.iter().flat_map(|s| s.labels()) {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    let present: Vec<usize> = counts.iter().copied().filter(|&c| c > 0).collect();
    let mut sorted = present.clone();
    sorted.sort_unstable();
    if let (Some(min), Some(max)) = (sorted.first(), sorted.last()) {
        println!(
            "records per class: min {min} median {} max {max} ({} of {} classes present)",
            sorted[sorted.len() / 2],
            present.len(),
            ds.num_classes
        );
    }
}

fn print_attributes(ds: &Dataset) {
    let histogram = |col: &dyn Fn(&super::Shard) -> &[i8]| {
        let mut h = std::collections::BTreeMap::<i8, usize>::new();
        for s in &ds.shards {
            for &v in col(s) {
                *h.entry(v).or_default() += 1;
            }
        }
        h.iter().map(|(v, n)| if *v < 0 { format!("unknown:{n}") } else { format!("{v}:{n}") }).collect::<Vec<_>>().join(" ")
    };
    println!("gender {}", histogram(&|s| s.genders()));
    println!("age    {}", histogram(&|s| s.ages()));
}

fn print_sidecars(layout: &Layout, ds: &Dataset) {
    let labels = layout.labels_path();
    println!("labels table: {}", if labels.is_file() { labels.display().to_string() } else { "none (classes = max label + 1)".into() });
    match Manifest::load(&layout.manifest_path()) {
        Ok(m) => {
            let agrees = m.num_records == ds.len() && m.num_shards == ds.total_shards;
            println!("manifest: {} records, {} skipped at pack time, settings {}{}", m.num_records, m.skipped, m.settings, if agrees { "" } else { "  (DISAGREES with the shards: run `trainer verify`)" });
        }
        Err(_) if !layout.manifest_path().exists() => println!("manifest: none"),
        Err(e) => println!("manifest: unreadable: {e:#}"),
    }
}

fn print_head(ds: &Dataset, n: usize) {
    let mut left = n;
    for s in &ds.shards {
        for i in 0..s.len().min(left) {
            let (start, end) = s.index().range(i);
            let crc = s.checksum(i).map_or("-".to_string(), |c| format!("{c:08x}"));
            let r = &s.index().cols;
            println!("{}[{i}]\t{}\tlabel {}\t{} bytes\tgender {}\tage {}\tcrc32c {crc}", s.k(), s.path_of(i), r.labels[i], end - start, r.genders[i], r.ages[i]);
        }
        left -= s.len().min(left);
    }
    if n > 0 && ds.shards.first().is_some_and(|s| s.version() == Version::Legacy) {
        println!("(seed format: no gender, age or checksum columns)");
    }
}
