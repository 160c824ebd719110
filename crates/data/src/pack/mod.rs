//! `trainer pack`: images (class folders or a list table) into bin/idx shards.
//!
//! Stages: list inputs (`walk` or `listing`) → assign records to shards → read and
//! validate/transcode in parallel (bounded chunks) → one writer thread appending to
//! `.partial` files → commit by rename (`staging`).

pub mod align;
pub mod assign;
pub mod extras;
pub mod listing;
pub mod recordio;
pub mod staging;
pub mod transcode;
pub mod walk;
pub mod writer;

use crate::format::{idx as format, manifest::ShardEntry, LabelTable, Manifest};
use align::Aligner;
use anyhow::{bail, Context, Result};
use crossbeam_channel::{bounded, Receiver};
use listing::{Item, Listing};
use rayon::prelude::*;
use staging::Staging;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use transcode::{Encoding, Transcode};
use writer::ShardWriter;

/// Records read and transcoded in parallel per chunk; bounds memory to a few chunks.
const CHUNK: usize = 64;
/// The largest `--size`.
pub const MAX_SIZE: u32 = 4096;
/// The most `--workers`.
pub const MAX_WORKERS: usize = 1024;
/// Larger input files are skipped rather than read into memory (no face image needs it).
pub const MAX_INPUT_BYTES: u64 = 256 << 20;

/// Pack a folder of class subfolders (or a list table) into bin/idx shards.
#[derive(clap::Args, Debug, Clone)]
pub struct PackArgs {
    /// Folder of class subfolders (label i = i-th folder in sorted name order), the root
    /// that the --list table's paths are relative to, or an MXNet RecordIO `.rec` file
    /// (insightface's train.rec; its .idx and property beside it are used when present).
    pub src: PathBuf,
    /// Dataset name: writes <out>/<name>-KKKKK-of-NNNNN.{bin,idx}, <name>.labels.tsv,
    /// <name>.manifest.json and <name>.skipped.tsv.
    #[arg(long)]
    pub name: String,
    /// Number of shards, at most the number of inputs (rank r of N reads shards k ≡ r mod N,
    /// so use a multiple of the ranks).
    #[arg(long, default_value_t = 1, value_parser = crate::bounds::count::<usize>(u64::MAX))]
    pub shards: usize,
    /// Output directory.
    #[arg(long, default_value = "shards")]
    pub out: PathBuf,
    /// TAB-separated table with a header naming `path` (relative to SRC) and `label`, and
    /// optionally `gender` and `age` (-1 or empty = unknown), instead of class folders.
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// Resize (shorter side) and centre-crop to S×S (S ≤ 4096), then re-encode (JPEG q95 by default).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_SIZE as i64))]
    pub size: Option<u32>,
    /// Payload encoding: keep the original bytes (default without --size), or re-encode.
    #[arg(long, value_enum)]
    pub encoding: Option<Encoding>,
    /// JPEG quality when re-encoding.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Reader/transcoder threads (default: all cores; at most 1024).
    #[arg(long, value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// Seed for the record-to-shard assignment and the order within shards.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep each label (identity) in a single shard instead of spreading it over all.
    #[arg(long)]
    pub group_by_label: bool,
    /// Fail (writing nothing) on the first bad input instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Replace an existing dataset of this name in --out (its old files are removed only
    /// after the new ones are in place).
    #[arg(long)]
    pub force: bool,
    /// Enter symlinks to folders (loops and second routes to a folder are skipped); links
    /// to files are always read.
    #[arg(long)]
    pub follow_links: bool,
    /// Align each face with the --list table's five landmarks (columns x1 y1 … x5 y5: eyes,
    /// nose tip, mouth corners) onto insightface's ArcFace template at --size (default 112).
    #[arg(long)]
    pub align: bool,
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!("expected a thread count in 1..={MAX_WORKERS}")),
    }
}

/// Packs; returns what was written (the command line prints it).
pub fn pack(args: &PackArgs) -> Result<PackSummary> {
    if recordio::is_source(&args.src) {
        return recordio::pack(args);
    }
    let started = Instant::now();
    let t = transcode_settings(args)?;
    staging::check_free(&args.out, &args.name, args.force)?;
    let aligner = Aligner::for_args(args, &t)?;
    let listing = list_inputs(args)?;
    if args.shards > listing.items.len() {
        bail!(
            "--shards {} is more than the {} inputs found: every shard needs records (use --shards {} or fewer)",
            args.shards,
            listing.items.len(),
            listing.items.len()
        );
    }
    let staging = Staging::new(&args.out, &args.name, args.force)?;
    let labels: Vec<u32> = listing.items.iter().map(|i| i.label).collect();
    let plan = assign::assign(&labels, args.shards, args.seed, args.group_by_label);
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(workers).build().context("starting worker threads")?;
    let progress =
        crate::term::progress_bar(listing.items.len() as u64, "packing [{bar:30}] {pos}/{len} {per_sec} ETA {eta}");
    let (tx, rx) = bounded::<Chunk>(2);
    let summary = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_shards(rx, args, staging, &listing, &progress));
        'shards: for (k, order) in plan.iter().enumerate() {
            for chunk in order.chunks(CHUNK) {
                let payloads = pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|&i| read_payload(&args.src, &listing.items[i], &t, aligner.as_ref()))
                        .collect()
                });
                if tx.send(Chunk { k, items: chunk.to_vec(), payloads }).is_err() {
                    break 'shards;
                }
            }
        }
        drop(tx);
        writer.join().unwrap_or_else(|_| bail!("the shard writer thread panicked"))
    })?;
    progress.finish_and_clear();
    Ok(PackSummary { out: args.out.clone(), name: args.name.clone(), secs: started.elapsed().as_secs_f64(), ..summary })
}

pub(super) fn transcode_settings(args: &PackArgs) -> Result<Transcode> {
    if args.shards == 0 {
        bail!("--shards must be at least 1");
    }
    let odd = |c: char| c.is_control() || c == '/' || c == '\\';
    if args.name.is_empty()
        || args.name.contains(odd)
        || args.name.starts_with('.')
        || args.name.ends_with(".bin")
        || args.name.ends_with(".idx")
    {
        bail!("--name {:?} must be a plain file name (no '/', no leading '.', not ending in .bin or .idx)", args.name);
    }
    let encoding = match (args.encoding, args.size) {
        (Some(Encoding::Keep), Some(_)) => {
            bail!("--encoding keep cannot resize; use --encoding jpeg or png with --size")
        }
        (Some(e), _) => e,
        (None, Some(_)) => Encoding::Jpeg,
        (None, None) => Encoding::Keep,
    };
    Ok(Transcode { encoding, size: args.size, quality: args.quality })
}

fn list_inputs(args: &PackArgs) -> Result<Listing> {
    if !args.src.is_dir() {
        bail!("source {} is not a directory", args.src.display());
    }
    let listing = match &args.list {
        Some(table) => listing::from_table(table)?,
        None => walk::from_folders(&args.src, args.follow_links)?,
    };
    if !listing.excluded.is_empty() {
        let first = &listing.excluded[0];
        tracing::warn!("{} entries of {} not packed (hidden, outside class folders, folder links not followed; e.g. {}: {}); listed in {}", listing.excluded.len(), args.src.display(), first.0, first.1, format::skipped_file(&args.name));
    }
    if listing.items.is_empty() {
        bail!("no input files found in {}", args.list.as_deref().unwrap_or(&args.src).display());
    }
    Ok(listing)
}

/// One chunk of one shard: item indices and, per item, its payload and crc32c or a skip reason.
struct Chunk {
    k: usize,
    items: Vec<usize>,
    payloads: Vec<Result<(Vec<u8>, u32), String>>,
}

fn read_payload(src: &Path, item: &Item, t: &Transcode, aligner: Option<&Aligner>) -> Result<(Vec<u8>, u32), String> {
    let bytes = read_input(&src.join(&item.rel))?;
    let payload = match aligner {
        Some(a) => a.payload(&item.rel, &bytes)?,
        None => transcode::prepare(bytes, t)?,
    };
    let crc = crc32c::crc32c(&payload);
    Ok((payload, crc))
}

/// A regular file's bytes. Opened without blocking and checked on the open file, so a
/// FIFO (or a file swapped for one after listing) is refused instead of hanging the pack.
fn read_input(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("unreadable: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("unreadable: {e}"))?;
    if !meta.is_file() {
        return Err(walk::not_regular(meta.file_type()));
    }
    if meta.len() > MAX_INPUT_BYTES {
        return Err(format!("{} bytes, more than the {} MiB an input may have", meta.len(), MAX_INPUT_BYTES >> 20));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("unreadable: {e}"))?;
    Ok(bytes)
}

/// What a pack wrote: the manifest, the inputs it skipped and left out (path, reason), and
/// how long it took.
pub struct PackSummary {
    pub manifest: Manifest,
    /// Bad inputs.
    pub skipped: Vec<(String, String)>,
    /// Entries left out on purpose (hidden, outside class folders, links not followed).
    pub excluded: usize,
    pub out: PathBuf,
    pub name: String,
    pub secs: f64,
}

/// Appends chunks to shard writers in order, then stages labels, skips and manifest and
/// commits. Runs on its own thread so writing overlaps reading the next chunk.
fn write_shards(
    rx: Receiver<Chunk>,
    args: &PackArgs,
    mut staging: Staging,
    listing: &Listing,
    progress: &indicatif::ProgressBar,
) -> Result<PackSummary> {
    let n = args.shards;
    let mut skipped = Vec::new();
    for (path, reason) in &listing.rejected {
        skip(args, progress, &mut skipped, path, reason)?;
    }
    let mut entries = Vec::with_capacity(n);
    let mut label_counts: BTreeMap<u32, usize> = BTreeMap::new();
    let mut current: Option<(usize, ShardWriter)> = None;
    for chunk in rx {
        while current.as_ref().is_none_or(|(k, _)| *k < chunk.k) {
            let next = current.as_ref().map_or(0, |(k, _)| k + 1);
            if let Some((k, w)) = current.take() {
                entries.push(finish_shard(args, k, w)?);
            }
            current = Some((next, ShardWriter::create(&mut staging, &args.name, next, n)?));
        }
        let (_, w) = current.as_mut().context("no shard open")?;
        for (&i, payload) in chunk.items.iter().zip(chunk.payloads) {
            let item = &listing.items[i];
            match payload {
                Ok((bytes, crc)) => {
                    w.append(item, &bytes, crc)?;
                    *label_counts.entry(item.label).or_default() += 1;
                }
                Err(reason) => skip(args, progress, &mut skipped, &item.rel, &reason)?,
            }
            progress.inc(1);
        }
    }
    let mut next = current.as_ref().map_or(0, |(k, _)| k + 1);
    if let Some((k, w)) = current.take() {
        entries.push(finish_shard(args, k, w)?);
    }
    while next < n {
        entries.push(finish_shard(args, next, ShardWriter::create(&mut staging, &args.name, next, n)?)?);
        next += 1;
    }
    let empty = entries.iter().filter(|e| e.records == 0).count();
    if empty == n {
        bail!(
            "none of the {} inputs could be packed ({} skipped, reasons above); nothing was written",
            listing.items.len() + listing.rejected.len(),
            skipped.len()
        );
    }
    if empty > 0 {
        progress.suspend(|| tracing::warn!("{empty} of {n} shards are empty: their inputs were skipped"));
    }
    extras::warn_unlisted(&skipped, &args.name, progress);
    skipped.sort();
    let manifest =
        build_manifest(args, &listing.classes, entries, label_counts, (skipped.len(), listing.excluded.len()));
    stage_metadata(&mut staging, args, &listing.classes, &skipped, &listing.excluded, &manifest)?;
    staging.commit()?;
    Ok(PackSummary {
        manifest,
        skipped,
        excluded: listing.excluded.len(),
        out: PathBuf::new(),
        name: String::new(),
        secs: 0.0,
    })
}

pub(super) fn finish_shard(args: &PackArgs, k: usize, w: ShardWriter) -> Result<ShardEntry> {
    let stem = format::shard_stem(&args.name, k, args.shards);
    let (records, labels) = (w.records, w.labels.len());
    let bytes = w.finish()?;
    Ok(ShardEntry { bin: format!("{stem}.bin"), idx: format!("{stem}.idx"), records, bytes, labels })
}

fn skip(
    args: &PackArgs,
    progress: &indicatif::ProgressBar,
    skipped: &mut Vec<(String, String)>,
    path: &str,
    reason: &str,
) -> Result<()> {
    let reason = reason.trim();
    let full = args.src.join(path);
    if args.strict {
        bail!("bad input {}: {reason} (--strict: nothing was written)", full.display());
    }
    if !extras::is_unlisted(reason) {
        progress.suspend(|| tracing::warn!("skipped {}: {reason}", full.display()));
    }
    skipped.push((path.to_string(), reason.to_string()));
    Ok(())
}

pub(super) fn build_manifest(
    args: &PackArgs,
    classes: &LabelTable,
    shards: Vec<ShardEntry>,
    label_counts: BTreeMap<u32, usize>,
    (skipped, excluded): (usize, usize),
) -> Manifest {
    let settings = serde_json::json!({
        "source": args.src, "list": args.list, "size": args.size,
        "encoding": transcode_settings(args).map(|t| t.encoding).unwrap_or(Encoding::Keep),
        "quality": args.quality, "seed": args.seed, "group_by_label": args.group_by_label, "follow_links": args.follow_links,
        "align": args.align,
        "trainer_version": env!("CARGO_PKG_VERSION"),
    });
    Manifest {
        format: format::MAGIC.to_string(),
        version: format::VERSION,
        name: args.name.clone(),
        num_shards: shards.len(),
        num_records: shards.iter().map(|s| s.records).sum(),
        num_classes: classes.num_classes(),
        total_bytes: shards.iter().map(|s| s.bytes).sum(),
        shards,
        label_counts,
        skipped,
        excluded,
        settings,
    }
}

/// Labels, the skipped table (bad and left-out inputs together, sorted by path) and,
/// last, the manifest.
pub(super) fn stage_metadata(
    staging: &mut Staging,
    args: &PackArgs,
    classes: &LabelTable,
    skipped: &[(String, String)],
    excluded: &[(String, String)],
    manifest: &Manifest,
) -> Result<()> {
    staging.write_small(&format::labels_file(&args.name), classes.to_text().as_bytes())?;
    let mut rows: Vec<&(String, String)> = skipped.iter().chain(excluded).collect();
    rows.sort();
    let mut table = String::from("path\treason\n");
    for (path, reason) in rows {
        table.push_str(&format!("{}\t{}\n", format::escape_path(path), format::escape_path(reason)));
    }
    staging.write_small(&format::skipped_file(&args.name), table.as_bytes())?;
    let json = serde_json::to_string_pretty(manifest)? + "\n";
    staging.write_manifest(json.as_bytes())
}

impl std::fmt::Display for PackSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.manifest;
        let (mb, secs) = (m.total_bytes as f64 / 1e6, self.secs.max(1e-9));
        writeln!(
            f,
            "packed {} records of {} classes into {} shards in {} ({mb:.1} MB) in {:.2} s ({:.0} records/s, {:.1} MB/s)",
            m.num_records,
            m.num_classes,
            m.num_shards,
            self.out.display(),
            self.secs,
            m.num_records as f64 / secs,
            mb / secs
        )?;
        if let Some(note) = empty_classes(m) {
            writeln!(f, "{note}")?;
        }
        let sizes: Vec<usize> = m.shards.iter().map(|e| e.records).collect();
        writeln!(
            f,
            "records per shard: min {} max {}",
            sizes.iter().min().unwrap_or(&0),
            sizes.iter().max().unwrap_or(&0)
        )?;
        if !self.skipped.is_empty() || self.excluded > 0 {
            let table = self.out.join(format::skipped_file(&self.name));
            writeln!(
                f,
                "skipped {} bad inputs and left out {} other entries (listed with reasons in {})",
                self.skipped.len(),
                self.excluded,
                table.display()
            )?;
        }
        Ok(())
    }
}

/// A warning when classes hold no record (their inputs were all skipped): they still count
/// in the classes training sizes its head by, but no sample ever trains them.
fn empty_classes(m: &Manifest) -> Option<String> {
    let empty: Vec<usize> = (0..m.num_classes).filter(|&c| !m.label_counts.contains_key(&(c as u32))).collect();
    let first: Vec<String> = empty.iter().take(10).map(|c| c.to_string()).collect();
    let more = if empty.len() > first.len() { ", …" } else { "" };
    (!empty.is_empty()).then(|| {
        format!(
            "WARNING: {} of the {} classes hold no record (all their inputs were skipped): labels {}{more}",
            empty.len(),
            m.num_classes,
            first.join(", ")
        )
    })
}
