//! `trainer verify`: checksums, offsets, layout and completeness of every record (with
//! `--decode`, a full decode), and the labels table and manifest against the shards.

use super::consistency;
use crate::codec::{check_complete, check_decodes};
use crate::format::Version;
use crate::reader::{Dataset, Layout, Shard};
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::path::PathBuf;
use turbojpeg::Decompressor;

/// Check checksums, offsets, that every image is complete, and the labels table and
/// manifest against the shards (with --decode, decode every image). Exits non-zero naming
/// the file, record and path of each problem.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// `<dir>/<name>` (all shards) or a legacy `<dir>/<name>` .bin/.idx pair.
    pub dataset: PathBuf,
    /// Fully decode every image too. Always on for the seed format, which has no checksums.
    #[arg(long)]
    pub decode: bool,
    /// Problems printed in full; the rest are only counted.
    #[arg(long, default_value_t = 50)]
    pub max_errors: usize,
}

/// Every problem found, in shard and record order, and what was checked.
pub struct VerifyReport {
    pub problems: Vec<String>,
    pub records: usize,
    pub shards: usize,
    pub decoded: bool,
    pub legacy: bool,
}

impl VerifyReport {
    fn checked(&self) -> &'static str {
        if self.decoded {
            "checksums, offsets, decoding, labels, manifest"
        } else {
            "checksums, offsets, completeness, labels, manifest"
        }
    }

    /// The one-line verdict: `OK: ...`, or the error for a dataset with problems.
    pub fn verdict(&self, dataset: &std::path::Path) -> Result<String> {
        if !self.problems.is_empty() {
            bail!(
                "{} problems in {} ({} records, {} shards checked: {})",
                self.problems.len(),
                dataset.display(),
                self.records,
                self.shards,
                self.checked()
            );
        }
        let note = if self.legacy { "; seed format has no checksums, so every image was decoded" } else { "" };
        Ok(format!("OK: {} records in {} shards ({}{note})\n", self.records, self.shards, self.checked()))
    }
}

pub fn verify(args: &VerifyArgs) -> Result<VerifyReport> {
    let ds = Dataset::open_with(&args.dataset, |_, _| true, false)?;
    let layout = Layout::resolve(&args.dataset)?;
    let progress = crate::term::progress_bar(ds.len() as u64, "verifying [{bar:30}] {pos}/{len} {per_sec} ETA {eta}");
    let mut problems = Vec::new();
    for shard in &ds.shards {
        let decode = args.decode || shard.version() == Version::Legacy;
        problems.extend(check_layout(shard));
        let mut bad: Vec<(usize, String)> = (0..shard.len())
            .into_par_iter()
            .map_init(
                || (Decompressor::new().ok(), Vec::new()),
                |(tj, scratch), i| {
                    progress.inc(1);
                    check_record(shard, i, decode.then_some((tj, scratch))).err().map(|e| (i, e))
                },
            )
            .flatten()
            .collect();
        bad.sort_by_key(|(i, _)| *i);
        problems.extend(
            bad.into_iter()
                .map(|(i, e)| format!("{}: record {i} ({}): {e}", shard.bin_path().display(), shard.path_of(i))),
        );
    }
    progress.finish_and_clear();
    let counts = consistency::label_counts(&ds);
    problems.extend(consistency::check_labels(&ds, &layout, &counts));
    problems.extend(consistency::check_manifest(&ds, &layout, &counts));
    let legacy = ds.shards.iter().any(|s| s.version() == Version::Legacy);
    Ok(VerifyReport { problems, records: ds.len(), shards: ds.shards.len(), decoded: args.decode, legacy })
}

/// Offsets, checksum, and the damaged-image rule (`codec::check`): completeness always,
/// a full decode with `decoder`.
fn check_record(
    shard: &Shard,
    i: usize,
    decoder: Option<(&mut Option<Decompressor>, &mut Vec<u8>)>,
) -> Result<(), String> {
    let bytes = shard.payload(i).map_err(|e| format!("{e:#}"))?;
    if let Some(want) = shard.checksum(i) {
        let got = crc32c::crc32c(bytes);
        if got != want {
            return Err(format!("crc32c mismatch: idx says {want:08x}, payload has {got:08x}"));
        }
    }
    match decoder {
        Some((tj, scratch)) => {
            check_decodes(tj.as_mut(), bytes, scratch).map_err(|e| format!("does not decode: {e:#}"))
        }
        None => check_complete(bytes).map(|_| ()).map_err(|e| format!("damaged image: {e}")),
    }
}

/// v1 stores payloads back to back in idx order and nothing else; the seed made no promise,
/// so there only the bin's size is checked per record.
fn check_layout(shard: &Shard) -> Vec<String> {
    if shard.version() == Version::Legacy {
        return Vec::new();
    }
    let mut expected = 0u64;
    let mut out = Vec::new();
    for i in 0..shard.len() {
        let (start, end) = shard.index().range(i);
        if start != expected {
            out.push(format!(
                "{}: record {i} ({}) starts at {start}, expected {expected} (payloads must be contiguous)",
                shard.idx_path().display(),
                shard.path_of(i)
            ));
        }
        expected = end;
    }
    if expected != shard.bin_len() && out.is_empty() {
        out.push(format!(
            "{}: records end at byte {expected} but the bin has {} bytes",
            shard.bin_path().display(),
            shard.bin_len()
        ));
    }
    out
}
