//! `trainer verify`: checksums, offsets, layout and (optionally) decodability of every record.

use crate::format::{Manifest, Version};
use crate::reader::{Dataset, Layout, Shard};
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::path::PathBuf;

/// Check checksums and offsets (and with --decode, decode every image). Exits non-zero
/// naming the shard file, record index and path of each problem.
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
        if self.decoded { "checksums, offsets, decoding" } else { "checksums, offsets" }
    }

    /// The one-line verdict: `OK: ...`, or the error for a dataset with problems.
    pub fn verdict(&self, dataset: &std::path::Path) -> Result<String> {
        if !self.problems.is_empty() {
            bail!("{} problems in {} ({} records, {} shards checked: {})", self.problems.len(), dataset.display(), self.records, self.shards, self.checked());
        }
        let note = if self.legacy { "; seed format has no checksums, so every image was decoded" } else { "" };
        Ok(format!("OK: {} records in {} shards ({}{note})\n", self.records, self.shards, self.checked()))
    }
}

pub fn verify(args: &VerifyArgs) -> Result<VerifyReport> {
    let ds = Dataset::open_with(&args.dataset, |_, _| true, false)?;
    let mut problems = Vec::new();
    for shard in &ds.shards {
        let decode = args.decode || shard.version() == Version::Legacy;
        problems.extend(check_layout(shard));
        let mut bad: Vec<(usize, String)> = (0..shard.len()).into_par_iter().filter_map(|i| check_record(shard, i, decode).err().map(|e| (i, e))).collect();
        bad.sort_by_key(|(i, _)| *i);
        problems.extend(bad.into_iter().map(|(i, e)| format!("{}: record {i} ({}): {e}", shard.bin_path().display(), shard.path_of(i))));
    }
    problems.extend(check_manifest(args, &ds));
    let legacy = ds.shards.iter().any(|s| s.version() == Version::Legacy);
    Ok(VerifyReport { problems, records: ds.len(), shards: ds.shards.len(), decoded: args.decode, legacy })
}

fn check_record(shard: &Shard, i: usize, decode: bool) -> Result<(), String> {
    let bytes = shard.payload(i).map_err(|e| format!("{e:#}"))?;
    if let Some(want) = shard.checksum(i) {
        let got = crc32c::crc32c(bytes);
        if got != want {
            return Err(format!("crc32c mismatch: idx says {want:08x}, payload has {got:08x}"));
        }
    }
    if decode {
        if bytes.is_empty() {
            return Err("empty payload".into());
        }
        image::load_from_memory(bytes).map_err(|e| format!("does not decode: {e}"))?;
    }
    Ok(())
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
            out.push(format!("{}: record {i} ({}) starts at {start}, expected {expected} (payloads must be contiguous)", shard.idx_path().display(), shard.path_of(i)));
        }
        expected = end;
    }
    if expected != shard.bin_len() && out.is_empty() {
        out.push(format!("{}: records end at byte {expected} but the bin has {} bytes", shard.bin_path().display(), shard.bin_len()));
    }
    out
}

fn check_manifest(args: &VerifyArgs, ds: &Dataset) -> Vec<String> {
    let Ok(layout) = Layout::resolve(&args.dataset) else { return Vec::new() };
    let path = layout.manifest_path();
    if !path.exists() {
        return Vec::new();
    }
    let m = match Manifest::load(&path) {
        Ok(m) => m,
        Err(e) => return vec![format!("{e:#}")],
    };
    let mut out = Vec::new();
    if m.num_shards != ds.total_shards {
        out.push(format!("{}: says {} shards, found {}", path.display(), m.num_shards, ds.total_shards));
    }
    for s in &ds.shards {
        if let Some(e) = m.shards.get(s.k()) {
            if e.records != s.len() || e.bytes != s.bin_len() {
                out.push(format!("{}: manifest says {} records / {} bytes, found {} / {}", s.bin_path().display(), e.records, e.bytes, s.len(), s.bin_len()));
            }
        }
    }
    out
}
