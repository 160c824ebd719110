//! `trainer unpack`: records back to byte-identical files at their original paths.

use crate::format::idx::is_contained_path;
use crate::reader::Dataset;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Write every record back to its original relative path under --out.
#[derive(clap::Args, Debug)]
pub struct UnpackArgs {
    /// `<dir>/<name>` (all shards) or a legacy `<dir>/<name>` .bin/.idx pair.
    pub dataset: PathBuf,
    /// Directory to recreate the files in (created if missing; existing files are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes the files; returns the summary line.
pub fn unpack(args: &UnpackArgs) -> Result<String> {
    let ds = Dataset::open(&args.dataset)?;
    check_paths(&ds)?;
    let mut seen = HashSet::new();
    let mut made_dirs = HashSet::new();
    let (mut written, mut duplicates, mut bytes) = (0usize, 0usize, 0u64);
    for shard in &ds.shards {
        for i in 0..shard.len() {
            let rel = shard.path_of(i);
            if !seen.insert(rel) {
                duplicates += 1;
                tracing::warn!("{}: record {i} repeats path {rel:?}; the first copy was kept", shard.bin_path().display());
                continue;
            }
            let payload = shard.payload(i)?;
            if let Some(want) = shard.checksum(i) {
                if crc32c::crc32c(payload) != want {
                    bail!("{}: record {i} ({rel}): crc32c mismatch; the shard is corrupt (run `trainer verify`)", shard.bin_path().display());
                }
            }
            write_file(&args.out.join(rel), payload, &mut made_dirs)?;
            written += 1;
            bytes += payload.len() as u64;
        }
    }
    let dups = if duplicates > 0 { format!("; {duplicates} duplicate paths skipped") } else { String::new() };
    Ok(format!("unpacked {written} files ({:.1} MB) into {}{dups}\n", bytes as f64 / 1e6, args.out.display()))
}

/// Refuses the whole unpack before writing anything if any path would land outside --out.
fn check_paths(ds: &Dataset) -> Result<()> {
    for shard in &ds.shards {
        for i in 0..shard.len() {
            let rel = shard.path_of(i);
            if !is_contained_path(rel) {
                bail!("{}: record {i} has path {rel:?}, which is absolute or escapes the output directory; refusing to unpack", shard.idx_path().display());
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], made_dirs: &mut HashSet<PathBuf>) -> Result<()> {
    if let Some(parent) = path.parent() {
        if made_dirs.insert(parent.to_path_buf()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_stay_inside() {
        for ok in ["a/b.jpg", "x (1)/é.png", "./a"] {
            assert!(is_contained_path(ok), "{ok}");
        }
        for bad in ["../x", "a/../../x", "/etc/passwd", "", "a/\0b"] {
            assert!(!is_contained_path(bad), "{bad}");
        }
    }
}
